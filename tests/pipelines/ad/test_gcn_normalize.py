"""EOE's MVTec normalisation (``normalize: gcn_min_max``): per-image global contrast normalisation (L1),
then Normalize with the smallest value and the range of the GCN'd normal training images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ad_helpers import PRE, bench_spec, labelled  # noqa: F401  (labelled: fixture)

from openood_ext.datasets import BENCHMARKS
from openood_ext.datasets.transforms import GlobalContrastNorm, build_transform
from openood_ext.errors import ConfigError
from openood_ext.pipelines.ad.data import adapt_benchmark, check_preprocessor


def test_gcn_by_hand_on_an_image_and_on_a_batch():
    x = torch.tensor([[[0.0, 1.0], [2.0, 5.0]]])  # [1, 2, 2]: mean 2, |x - 2| = 2, 1, 0, 3 -> mean 1.5
    torch.testing.assert_close(GlobalContrastNorm()(x), (x - 2.0) / 1.5)
    batch = torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    each = torch.stack([GlobalContrastNorm()(b) for b in batch])
    torch.testing.assert_close(GlobalContrastNorm()(batch), each)  # per image, over C, H and W


def test_gcn_min_max_normalises_with_the_normal_class_range(labelled):  # noqa: F811
    spec = bench_spec(labelled)
    spec["preprocessor"] = {**PRE, "normalize": "gcn_min_max"}
    bench = BENCHMARKS.build(spec)
    bench.prepare()
    raw = bench.dataset(bench.split("id_train"))
    x = torch.stack([raw[i][0] for i in range(len(raw))]).double() * 0.5 + 0.5  # PRE: mean 0.5, std 0.5
    g = x - x.mean(dim=(1, 2, 3), keepdim=True)
    g = (g / g.abs().mean(dim=(1, 2, 3), keepdim=True)).numpy()
    adapt_benchmark(bench)
    pre = bench.preprocessor
    assert pre["gcn"] == "l1"
    assert pre["mean"][0] == pytest.approx(g.min()) and pre["std"][0] == pytest.approx(np.ptp(g))
    adapted = bench.dataset(bench.split("id_train"))
    got = adapted[0][0].double()
    want = (torch.from_numpy(g[0]) - g.min()) / np.ptp(g)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert 0.0 <= float(got.min()) and float(got.max()) <= 1.0 + 1e-6  # training images land in [0, 1]


def test_gcn_does_not_combine_with_the_pixel_filters():
    with pytest.raises(ConfigError, match="gcn_min_max"):
        check_preprocessor({"normalize": "gcn_min_max", "image_size": 32, "ms_mode": {"mode": "lpf", "magnitude": 2}})
    with pytest.raises(ConfigError, match="gcn: expected null or l1"):
        build_transform({"gcn": "l2"})
