"""The shared forward pass's layer taps (features.TapSet / extract_outputs consumers)."""

from __future__ import annotations

import pytest
import torch
from conftest import image_loader

from openood_ext.features import Tap, extract_outputs
from openood_ext.networks.resnet import ResNet18_32x32
from openood_ext.networks.small_cnn import DigitsCNN


class Collect:
    """A consumer that keeps every reduced batch."""

    def __init__(self, taps):
        self.taps, self.seen = list(taps), []

    def update(self, reduced, logits, labels):
        self.seen.append((reduced, logits, labels))

    def finish(self):
        return len(self.seen)


def test_each_layer_is_computed_once_per_batch_however_many_consumers_ask():
    torch.manual_seed(0)
    net = DigitsCNN(num_classes=3, in_channels=1, width=2).eval()
    x, y = torch.randn(20, 1, 8, 8), torch.arange(20) % 3
    reductions = {"mean": 0}

    def mean(t):
        reductions["mean"] += 1
        return t.mean((2, 3))

    a = Collect([Tap("body.2", "mean", mean), Tap("body.5", "mean", mean)])
    b = Collect([Tap("body.2", "mean", mean), Tap("body.2", "max", lambda t: t.amax((2, 3)))])
    c = Collect([Tap("body.5", "mean", mean)])
    out = extract_outputs(net, image_loader(x, y, batch_size=8), consumers=[a, b, c])
    assert out.tap_calls == {"body.2": 3, "body.5": 3}  # 3 batches, one hook call per layer and batch
    assert reductions["mean"] == 2 * 3  # (body.2, mean) and (body.5, mean), once per batch each
    assert out.tap_results == [3, 3, 3]
    with torch.no_grad():
        ref = net.body[:3](x).mean((2, 3))  # body.2 is the in-place ReLU: the hook sees its output
    got = torch.cat([r[("body.2", "mean")] for r, *_ in a.seen])
    assert torch.allclose(got, ref, atol=1e-6)
    assert torch.equal(torch.cat([r[("body.2", "mean")] for r, *_ in b.seen]), got)
    assert torch.equal(torch.cat([lab for *_, lab in a.seen]), y)
    plain = extract_outputs(net, image_loader(x, y, batch_size=8))
    assert torch.equal(plain.logits, out.logits) and torch.equal(plain.features, out.features)


def test_input_tap_reads_resnet_stem_output():
    torch.manual_seed(0)
    net = ResNet18_32x32(num_classes=3, width=2).eval()
    x = torch.randn(6, 3, 32, 32)
    a = Collect([Tap("layer1:input", "id", lambda t: t.clone())])
    extract_outputs(net, image_loader(x, torch.zeros(6, dtype=torch.long), batch_size=6), consumers=[a])
    with torch.no_grad():
        stem = torch.relu(net.bn1(net.conv1(x)))
    assert torch.allclose(a.seen[0][0][("layer1:input", "id")], stem, atol=1e-6)


class Graph:
    """A graph consumer that keeps each micro-batch's input gradient of the summed logits."""

    taps = ()

    def __init__(self, chunk):
        self.graph_chunk, self.grads, self.sizes = chunk, [], []

    def update_graph(self, x, logits, features):
        assert x.requires_grad and logits.grad_fn is not None and features.grad_fn is not None
        self.sizes.append(len(x))
        (grad,) = torch.autograd.grad(logits.sum(), x)
        self.grads.append(grad)

    def finish(self):
        return torch.cat(self.grads)


def test_graph_consumers_get_micro_batches_with_their_graph_and_the_outputs_are_the_plain_ones():
    torch.manual_seed(0)
    net = DigitsCNN(num_classes=3, in_channels=1, width=2).eval()
    x, y = torch.randn(20, 1, 8, 8), torch.arange(20) % 3
    taps = Collect([Tap("body.2", "mean", lambda t: t.mean((2, 3)))])
    graph = Graph(chunk=3)
    out = extract_outputs(net, image_loader(x, y, batch_size=8), consumers=[taps, graph])
    assert graph.sizes == [3, 3, 2] * 2 + [3, 1]  # batches of 8, 8, 4 in micro-batches of 3
    assert out.tap_calls == {"body.2": 8} and out.tap_results[0] == 8
    plain = extract_outputs(net, image_loader(x, y, batch_size=8))
    torch.testing.assert_close(out.logits, plain.logits)
    torch.testing.assert_close(out.features, plain.features)
    assert torch.equal(out.labels, y) and not out.logits.requires_grad
    xr = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(net(xr).sum(), xr)
    torch.testing.assert_close(out.tap_results[1], expected)
    with pytest.raises(ValueError, match="micro-batch sizes differ"):
        extract_outputs(net, image_loader(x, y), consumers=[Graph(3), Graph(4)])
