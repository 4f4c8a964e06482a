"""Layer taps on a torch.compile-d network: the hooks sit on the modules it wraps, so a tapped pass runs
compiled (``compile: true``) and gives the plain network's tap results (here with dynamo's eager backend,
which needs no compiler on the CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import image_loader
from openood_ext.features import extract_outputs
from openood_ext.networks import NETWORKS
from openood_ext.postprocessors import POSTPROCESSORS


@pytest.mark.slow  # dynamo tracing: about a minute on a busy 2-core machine
def test_gram_taps_of_a_compiled_network_equal_the_plain_ones():
    torch.manual_seed(0)
    net = NETWORKS.build({"name": "digits_cnn", "num_classes": 4, "in_channels": 1, "width": 2}).eval()
    x, y = torch.randn(16, 1, 8, 8), torch.arange(16) % 4
    results = []
    for model in (net, torch.compile(net, backend="eager")):
        pp = POSTPROCESSORS.build({"name": "gram", "holdout": 0})
        out = extract_outputs(model, image_loader(x, y), "cpu", consumers=[pp.fit_taps(net, x[:2])])
        assert set(out.tap_calls.values()) == {1}  # every tapped layer fired once for the one batch
        fitted = out.tap_results[0]
        results.append(np.concatenate([m.flatten().numpy() for layer in fitted._mins for m in layer]))
    np.testing.assert_allclose(results[1], results[0], rtol=1e-6)
