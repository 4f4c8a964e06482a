"""MC dropout against its definition: p = 0 is MSP (BatchNorm stays in eval), the two averages on a
one-unit network whose expectation is computed by hand, and its bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import image_loader

from openood_ext.errors import ConfigError
from openood_ext.features import extract_outputs
from openood_ext.networks.small_cnn import DigitsCNN
from openood_ext.postprocessors import POSTPROCESSORS
from openood_ext.postprocessors.dropout import average_prediction


def test_zero_dropout_rate_is_msp_and_batchnorm_stays_in_eval():
    torch.manual_seed(0)
    net = DigitsCNN(num_classes=4, in_channels=1, width=2, dropout=0.5).eval()
    net.body[-1].p = 0.0
    x = torch.randn(20, 1, 8, 8)
    loader = lambda: image_loader(x, torch.arange(20) % 4)  # noqa: E731
    msp = POSTPROCESSORS.build("msp").score(extract_outputs(net, loader(), "cpu"))
    stats = [b.clone() for b in net.buffers()]
    for average in ("probs", "logits"):
        pp = POSTPROCESSORS.build({"name": "dropout", "T": 3, "average": average, "batch_size": 9})
        pp.attach_network(net, "cpu")
        conf, preds = pp.score_loader(loader())
        np.testing.assert_allclose(conf, msp, rtol=1e-6)
        np.testing.assert_array_equal(preds, net(x).argmax(dim=1).numpy())
    assert all(torch.equal(a, b) for a, b in zip(stats, net.buffers()))  # BatchNorm statistics untouched
    assert not any(m.training for m in net.modules())


class OneUnit(nn.Module):
    """z = 1 -> Dropout(0.5) -> logits [2 z, 0]: a kept unit (scaled to 2) gives [4, 0], a dropped one [0, 0]."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[2.0], [0.0]]))

    def forward(self, x):
        return self.fc(self.drop(torch.ones(len(x), 1)))


@pytest.mark.parametrize("average, expected", [
    ("probs", 0.5 * (1 / (1 + np.exp(-4.0))) + 0.5 * 0.5),  # mean of softmax: sigmoid(4) or 1/2 with prob 1/2
    ("logits", 1 / (1 + np.exp(-2.0)))])  # softmax of the mean logits [2, 0] (in the limit of many passes)
def test_many_passes_reach_the_hand_computed_expectation(average, expected):
    pp = POSTPROCESSORS.build({"name": "dropout", "T": 4000, "average": average, "batch_size": 8000})
    pp.attach_network(OneUnit().eval(), "cpu")
    conf, _ = pp.score_loader(image_loader(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)))
    np.testing.assert_allclose(conf, expected, atol=0.02)  # MC error ~ 0.24 / sqrt(4000) = 0.004
    again, _ = pp.score_loader(image_loader(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)))
    np.testing.assert_array_equal(conf, again)  # seeded masks: reproducible
    assert conf[0] != conf[1]  # yet every sample gets its own masks


def test_average_prediction_hand_case():
    logits = torch.tensor([[[0.0, 0.0]], [[2.0, 0.0]]])  # T = 2 passes of one sample
    probs = average_prediction(logits, "probs")[0]
    np.testing.assert_allclose(probs[0], 0.5 * (0.5 + 1 / (1 + np.exp(-2.0))))
    np.testing.assert_allclose(average_prediction(logits, "logits")[0, 0], 1 / (1 + np.exp(-1.0)))


def test_network_without_dropout_and_bad_T_are_refused(tmp_path, monkeypatch):
    from pp_helpers import refused_before_run
    with pytest.raises(ConfigError, match=r"no dropout layer \(looked for nn.Dropout, nn.Dropout1d"):
        POSTPROCESSORS.build("dropout").attach_network(DigitsCNN(width=2), "cpu")
    msg = refused_before_run(tmp_path, monkeypatch, ["msp", "dropout"], r"postprocessors\[1\] \(dropout\): network "
                             r"DigitsCNN has no dropout layer \(looked for nn.Dropout, nn.Dropout1d, nn.Dropout2d")
    assert "+network.dropout=0.5" in msg
    refused_before_run(tmp_path, monkeypatch, [{"name": "dropout", "T": 0}], "argument 'T': expected int >= 1, got 0")
    refused_before_run(tmp_path, monkeypatch, [{"name": "dropout", "T": -2}], "argument 'T'",
                       network={"dropout": 0.5})
