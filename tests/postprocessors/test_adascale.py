"""AdaSCALE against its definition: the perturbation, the shift statistic, the percentile from the ID
empirical CDF, the adaptive scale and the two variants, on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import image_loader

from openood_ext.errors import ConfigError
from openood_ext.postprocessors import POSTPROCESSORS
from openood_ext.postprocessors.adascale import adaptive_scale, perturb_least_sensitive, shift_statistic
from openood_ext.postprocessors.input_gradients import GradientBatch


class LinearFeatures(nn.Module):
    """z = A x (flattened, no activation), logits = fc(z): input gradients are computable by hand."""

    def __init__(self, a: torch.Tensor, w: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a, requires_grad=False)
        self.fc = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(w)
            self.fc.bias.copy_(b)

    def forward(self, x, return_feature=False):
        z = x.flatten(1) @ self.a.T
        logits = self.fc(z)
        return (logits, z) if return_feature else logits

    def get_fc_layer(self):
        return self.fc


A = torch.tensor([[1.0, 0.0, 2.0, -1.0], [0.5, 1.0, 0.0, 0.0], [0.0, -1.0, 1.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
W = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 1.0]])
B = torch.tensor([0.1, -0.2])


def test_perturbation_steps_the_least_sensitive_elements_up_the_top_logit():
    x = torch.tensor([0.3, -0.2, 0.5, 0.1]).view(1, 1, 1, 4)
    net = LinearFeatures(A, W, B)
    logits = net(x)[0]
    c = int(logits.argmax())
    grad = A.T @ W[c]  # d(top logit)/dx for z = A x, logits = W z + b
    # o = 0.5 of 4 elements: the two of smallest |grad| move by +-noise along sign(grad), the rest stay
    order = grad.abs().argsort()[:2]
    expected = x.flatten().clone()
    expected[order] += 0.5 * grad[order].sign()
    got = perturb_least_sensitive(x, grad.view(1, 1, 1, 4), 0.5, 0.5).flatten()
    np.testing.assert_allclose(got, expected)
    pp = POSTPROCESSORS.build({"name": "adascale", "o": 0.5, "k1": 50, "k2": 25})
    pp.attach_network(net, "cpu", None)
    z, z_perturbed = pp._pair(GradientBatch(net, x, features=True))
    np.testing.assert_allclose(z.flatten(), A @ x.flatten(), rtol=1e-6)
    np.testing.assert_allclose(z_perturbed.flatten(), A @ expected, rtol=1e-6)
    assert net(expected.view(1, 1, 1, 4))[0, c] > logits[c]  # the step raises the top logit


def test_shift_statistic_hand_case():
    z = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    zp = torch.tensor([[2.5, -1.0, 2.0, 1.0]])
    # k1 = 50% of 4 = the units 0 and 2 of z: relu(z~) sums 4.5; k2 = 25%: unit 0, |3 - 2.5| = 0.5
    np.testing.assert_allclose(shift_statistic(z, zp, 50, 25, 10.0), [4.5 + 10 * 0.5])
    with pytest.raises(ValueError, match="k1=10% of the 4 feature units rounds down to none; give k1 >= 25"):
        shift_statistic(z, zp, 10, 25, 10.0)


def test_adaptive_scale_hand_case_with_rounding():
    z = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0]] * 2)
    # D = 10, p = 70: k = 10 - round(7) = 3: sum relu = 10 over the top 3 (9); p = 85: round(8.5) = 8 (half to
    # even), k = 2: 10 / 7
    np.testing.assert_allclose(adaptive_scale(z, torch.tensor([70.0, 85.0])), [10 / 9, 10 / 7], rtol=1e-6)


def test_percentile_from_the_id_cdf_and_both_variants():
    pp = POSTPROCESSORS.build({"name": "adascale", "percentile": [75, 85], "k1": 50, "k2": 25})
    pp._fit_q = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    # F(2.5) = 0.5 -> p = 75 + 0.5 * 10; F(4) = 1 -> 75; F(0) = 0 -> 85
    np.testing.assert_allclose(pp.percentiles(torch.tensor([2.5, 4.0, 0.0]), [75, 85]), [80.0, 75.0, 85.0])
    net = LinearFeatures(A, W, B)
    pp.attach_network(net, "cpu", None)
    z = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    q = torch.tensor([2.5])  # p = 80: k = 4 - round(3.2) = 1: s = 10 / 4
    s = 10 / 4
    lse = lambda v: float(np.log(np.exp(v).sum()))  # noqa: E731
    np.testing.assert_allclose(pp.confidences(z, q, [75, 85]), [lse((W @ (z[0] * np.exp(s))) + B)], rtol=1e-6)
    pp.variant = "l"
    np.testing.assert_allclose(pp.confidences(z, q, [75, 85]), [lse(((W @ z[0]) + B) * s ** 2)], rtol=1e-6)


def test_fit_on_id_val_and_joint_grid_equals_separate_runs():
    torch.manual_seed(0)
    net = LinearFeatures(torch.randn(8, 4), torch.randn(3, 8), torch.zeros(3))
    val, test = torch.randn(30, 1, 1, 4), torch.randn(10, 1, 1, 4)
    loaders = {"id_val": lambda: image_loader(val, torch.zeros(30, dtype=torch.long), batch_size=7),
               "ood_val": lambda: image_loader(test, torch.zeros(10, dtype=torch.long))}
    grid = [[60, 70], [80, 95]]
    joint = POSTPROCESSORS.build({"name": "adascale", "k1": 25, "k2": 12.5, "grad_batch_size": 4})
    joint.attach_network(net, "cpu", lambda s: loaders[s]())
    joint.fit()
    assert len(joint._fit_q) == 30
    together = joint.aps_scores([{"percentile": p} for p in grid], {k: v() for k, v in loaders.items()})
    for p, (id_conf, ood_conf) in zip(grid, together):
        alone = POSTPROCESSORS.build({"name": "adascale", "k1": 25, "k2": 12.5, "percentile": p})
        alone.attach_network(net, "cpu", lambda s: loaders[s]())
        alone.fit()
        np.testing.assert_allclose(alone.score_loader(loaders["id_val"]()), id_conf, rtol=1e-6)
        np.testing.assert_allclose(alone.score_loader(loaders["ood_val"]()), ood_conf, rtol=1e-6)
    few = POSTPROCESSORS.build({"name": "adascale", "k1": 25, "k2": 12.5, "num_samples": 12})
    few.attach_network(net, "cpu", lambda s: loaders[s]())
    assert len(few.fit()._fit_q) == 12


@pytest.mark.parametrize("args, match", [
    ({"percentile": [90, 80]}, "p_min <= p_max"),
    ({"percentile": [0, 80]}, "percentile"),
    ({"percentile": [50, 100]}, "percentile"),
    ({"percentile": [50]}, "percentile"),
    ({"k1": 0}, "k1"), ({"k2": 101}, "k2"), ({"o": 0}, "'o'"), ({"o": 1.5}, "'o'")])
def test_bad_arguments_are_one_line_config_errors(args, match):
    with pytest.raises(ConfigError, match=match) as info:
        POSTPROCESSORS.check({"name": "adascale", **args})
    assert "\n" not in str(info.value)


def test_bad_percentile_in_a_run_or_its_grid_is_refused_before_the_run(tmp_path, monkeypatch):
    from pp_helpers import refused_before_run
    refused_before_run(tmp_path, monkeypatch, [{"name": "adascale", "percentile": [85, 75]}], "p_min <= p_max")
    refused_before_run(tmp_path, monkeypatch, [{"name": "adascale", "aps": True,
                                                "aps_grid": {"percentile": [[60, 70], [70, 100]]}}], "percentile")
