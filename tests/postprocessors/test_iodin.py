"""iODIN against its definition: ODIN's gradient, a step on the single most sensitive input element."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from conftest import image_loader

from openood_ext.postprocessors import POSTPROCESSORS
from openood_ext.postprocessors.iodin import most_sensitive_element

W = torch.tensor([[1.0, 2.0, -3.0], [0.0, 1.0, 1.0]])
X = torch.tensor([0.5, -1.0, 0.2])


def linear_net() -> nn.Module:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(W)
    return net.eval()


def test_step_moves_only_the_largest_gradient_element_by_eps_over_std():
    # logits W x = [-2.1, -0.8]: predicted class 1. With T = 1, grad_x CE = W^T (p - e_1) = p_0 (W_0 - W_1)
    # = p_0 [1, 1, -4]: the largest |grad| is element 2, negative, so x~_2 = x_2 + eps / std, the rest stay.
    eps, std, t = 0.01, 0.5, 1.0
    p0 = 1 / (1 + np.exp(1.3))
    grad = torch.tensor(p0 * np.array([1.0, 1.0, -4.0]), dtype=torch.float32)
    expected = X.clone()
    expected[2] += eps / std
    x = X.view(1, 1, 1, 3)
    pp = POSTPROCESSORS.build({"name": "iodin", "temperature": t, "noise": eps, "input_std": std})
    pp.attach_network(linear_net(), "cpu")
    np.testing.assert_allclose(pp.perturb(x, grad.view(1, 1, 1, 3), torch.tensor([std]), eps).flatten(), expected,
                               atol=1e-7)
    conf = pp.score_loader(image_loader(x, torch.tensor([1])))
    hand = torch.softmax(W @ expected / t, dim=0).max().item()
    np.testing.assert_allclose(conf, [hand], rtol=1e-6)
    # ODIN on the same sample moves every element: a different score
    odin = POSTPROCESSORS.build({"name": "odin", "temperature": t, "noise": eps, "input_std": std})
    odin.attach_network(linear_net(), "cpu")
    assert abs(odin.score_loader(image_loader(x, torch.tensor([1])))[0] - hand) > 1e-6


def test_mask_is_one_element_per_sample_over_channels():
    grad = torch.tensor([[[[0.1, -0.2]], [[0.3, -0.9]]], [[[2.0, 0.0]], [[-1.0, 0.5]]]])  # [2, 2, 1, 2]
    mask = most_sensitive_element(grad)
    assert mask.sum().item() == 2
    assert mask[0, 1, 0, 1] == 1 and mask[1, 0, 0, 0] == 1


def test_zero_noise_is_temperature_scaled_msp():
    torch.manual_seed(0)
    x = torch.randn(6, 1, 1, 3)
    pp = POSTPROCESSORS.build({"name": "iodin", "temperature": 10, "noise": 0.0})
    pp.attach_network(linear_net(), "cpu")
    expected = torch.softmax(x.flatten(1) @ W.T / 10, dim=1).max(dim=1).values
    np.testing.assert_allclose(pp.score_loader(image_loader(x, torch.zeros(6, dtype=torch.long))), expected, rtol=1e-6)
