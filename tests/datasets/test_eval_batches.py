"""Evaluation batches from the decoded-image cache: the same tensors as the per-image DataLoader (resize,
centre crop, normalise; no augmentation), the same metrics for a test run on either backend, shards that
cover a split in order, the AD test set scored the same, and the splits that keep the per-image path."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_class_set
from omegaconf import OmegaConf

from openood_ext import distributed
from openood_ext.datasets import Benchmark
from openood_ext.datasets.data_settings import DataSettings
from openood_ext.datasets.eval_batches import DecodedSplitLoader, eval_loader

PRE = {"image_size": 28, "resize": 30, "channels": 3, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_batches")
    write_class_set(root, "channel", (("train", 4), ("val", 2), ("test", 5), ("far", 3)), np.random.default_rng(3))
    return root


def bench(root, pre=PRE, **kw):
    kw.setdefault("ood", {"val": "far.txt", "far": {"junk": "far.txt"}})
    return Benchmark(num_classes=3, id={"train": "train.txt", "val": "val.txt", "test": "test.txt"},
                     imglist_dir=str(root / "lists"), data_root=str(root), preprocessor=pre, **kw)


def concat(loader):
    images, labels, skipped = [], [], 0
    for batch in loader:
        images.append(batch[0])
        labels.append(torch.as_tensor(batch[1]))
        skipped += int(batch[2])
    return torch.cat(images), torch.cat(labels), skipped


def test_eval_batches_equal_the_per_image_loader(toy, tmp_path):
    b = bench(toy)
    data = DataSettings(backend="auto", cache_dir=str(tmp_path / "cache"))
    for pre in (PRE, {**PRE, "channels": 1, "mean": [0.5], "std": [0.3], "resize": 28}):  # grey, no resize
        b.preprocessor = pre
        for split in b.splits():
            tensor = eval_loader(b, split, data, batch_size=4)
            assert isinstance(tensor, DecodedSplitLoader)
            got, want = concat(tensor), concat(b.loader(split, batch_size=4))
            assert got[0].shape == want[0].shape and len(tensor) == len(b.loader(split, batch_size=4))
            assert torch.allclose(got[0], want[0], atol=1e-6, rtol=0) and torch.equal(got[0], want[0])
            assert torch.equal(got[1], want[1]) and got[2] == want[2] == 0
    assert any((tmp_path / "cache").glob("*.npy"))  # decoded once, read back by the next run


def test_skipped_images_are_counted_as_the_per_image_path_counts_them(toy, tmp_path):
    root = tmp_path / "data"
    write_class_set(root, "channel", (("train", 2), ("val", 1), ("test", 3)), np.random.default_rng(1))
    (root / "img/test/1_0.png").write_bytes(b"not an image")
    b = bench(root, on_bad_image="skip", ood={})
    split = b.split("id_test")
    tensor = eval_loader(b, split, DataSettings(cache_dir=str(tmp_path / "cache")), batch_size=2)
    got, want = concat(tensor), concat(b.loader(split, batch_size=2))
    assert got[2] == want[2] == 1 and torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_splits_that_keep_the_per_image_path(toy, tmp_path, caplog):
    b = bench(toy)
    split = b.split("id_test")
    assert eval_loader(b, split, None, 4) is None
    assert eval_loader(b, split, DataSettings(backend="pil"), 4) is None
    with caplog.at_level(logging.INFO, logger="openood_ext"):
        # 32 px images above max_side, even with backend: tensor (each split takes the path it can)
        assert eval_loader(b, split, DataSettings(backend="tensor", max_side=16), 4) is None
        assert eval_loader(bench(toy, {**PRE, "raw_size": 40}), split, DataSettings(), 4) is None
        wrapped = bench(toy)
        wrapped.dataset = lambda s, train=False: Benchmark.dataset(wrapped, s, train)
        assert eval_loader(wrapped, split, DataSettings(), 4) is None
    lines = [r.getMessage() for r in caplog.records if "per-image PIL path" in r.getMessage()]
    assert len(lines) == 3 and "larger than data.max_side 16" in lines[0] and "raw_size" in lines[1]
    assert "no batched counterpart" in lines[2]


def test_torchrun_shards_cover_the_split_in_rank_order(toy, monkeypatch):
    b = bench(toy)
    split = b.split("id_test")
    full = eval_loader(b, split, DataSettings(), batch_size=2)
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    parts = []
    for r in range(2):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shard = distributed.shard_loader(full, what="id_test")
        assert isinstance(shard, DecodedSplitLoader)
        parts.append(concat(shard))
    assert [len(p[1]) for p in parts] == [7, 8]
    assert torch.equal(torch.cat([p[0] for p in parts]), concat(full)[0])
    assert torch.equal(torch.cat([p[1] for p in parts]), concat(full)[1])


def run_cfg(toy, tmp_path, backend, experiment):
    return OmegaConf.create({
        "pipeline": "test_ood", "experiment": experiment, "seed": 0, "device": "cpu", "num_workers": 0,
        "output_dir": str(tmp_path / "results"), "cache_dir": str(tmp_path / f"cache_{backend}"), "batch_size": 4,
        "train_if_missing": True, "data": {"backend": backend},
        "benchmark": {"name": "imglist", "num_classes": 3, "data_root": str(toy), "imglist_dir": str(toy / "lists"),
                      "preprocessor": {"image_size": 12, "resize": 14, "channels": 1, "mean": [0.5], "std": [0.5]},
                      "id": {"train": "train.txt", "val": "val.txt", "test": "test.txt"},
                      "ood": {"val": "far.txt", "far": {"junk": "far.txt"}}},
        "evaluator": "ood", "postprocessors": ["msp", {"name": "knn", "k": 2}, "odin"], "report": False,
        "network": {"name": "digits_cnn", "num_classes": 3, "in_channels": 1, "width": 8,
                    "checkpoint": str(tmp_path / "net.pt")},
        "trainer": {"name": "base", "epochs": 1, "batch_size": 4, "optimizer": {"name": "sgd", "lr": 0.05},
                    "scheduler": {"name": "constant"}}})


def test_the_scheduler_scores_the_same_on_both_backends(toy, tmp_path):
    """Every route's confidences (shared outputs, layer taps, a network method's own gradient pass)
    from per-image loaders and from decoded batches: identical."""
    from openood_ext.networks import NETWORKS
    from openood_ext.postprocessors import POSTPROCESSORS
    from openood_ext.postprocessors.schedule import LoaderSource, Scheduler
    b = bench(toy, {"image_size": 12, "resize": 14, "channels": 1, "mean": [0.5], "std": [0.5]})
    torch.manual_seed(0)
    net = NETWORKS.build({"name": "digits_cnn", "num_classes": 3, "in_channels": 1, "width": 4}).eval()
    names = ["id_train", "id_val", "id_test", "junk"]
    data = DataSettings(backend="tensor", cache_dir=str(tmp_path / "cache"))
    confs = []
    for loaders in ({n: b.loader(b.split(n), batch_size=4) for n in names},
                    {n: eval_loader(b, b.split(n), data, 4) for n in names}):
        pps = {n: POSTPROCESSORS.build(spec) for n, spec in (("msp", "msp"), ("odin", "odin"),
                                                              ("gram", {"name": "gram", "powers": [1]}))}
        result = Scheduler(pps, LoaderSource(net, loaders), net, "cpu").run(["id_test", "junk"])
        confs.append({(label, split): s.conf for label, per in result.scores.items() for split, s in per.items()})
    assert isinstance(eval_loader(b, b.split("junk"), data, 4), DecodedSplitLoader) and len(confs[0]) == 6
    for key, conf in confs[0].items():
        np.testing.assert_array_equal(conf, confs[1][key], err_msg=str(key))


@pytest.mark.slow  # two test_ood runs (5.5 to 22 s on the shared 2-core machine, with its load)
def test_a_test_run_gives_the_same_metrics_on_both_backends(toy, tmp_path, monkeypatch):
    """The shared pass and a network-route method (odin, its own input-gradient pass) on either backend."""
    from openood_ext.pipelines import outputs
    from openood_ext.runner import run_config
    used = []
    real = outputs.eval_loader
    monkeypatch.setattr(outputs, "eval_loader", lambda *a, **kw: used.append(real(*a, **kw)) or used[-1])
    pil = run_config(run_cfg(toy, tmp_path, "pil", "pil"))
    assert used and all(u is None for u in used)
    used.clear()
    tensor = run_config(run_cfg(toy, tmp_path, "tensor", "tensor"))
    assert used and all(isinstance(u, DecodedSplitLoader) for u in used)
    a = pd.read_csv(f"{pil['run_dir']}/metrics.csv")
    b = pd.read_csv(f"{tensor['run_dir']}/metrics.csv")
    assert set(a["postprocessor"]) == {"msp", "knn", "odin"}
    pd.testing.assert_frame_equal(a, b)
    for name in ("msp", "knn", "odin"):
        sa, sb = np.load(f"{pil['run_dir']}/scores/{name}.npz"), np.load(f"{tensor['run_dir']}/scores/{name}.npz")
        for key in sa.files:
            np.testing.assert_allclose(sa[key], sb[key], rtol=0, atol=1e-6)


def test_ad_test_set_scores_equal_on_both_backends(tmp_path):
    """The AD cell's test pass (with a path-hashed test_limit subset, and EOE's Fourier filter on one test
    part) scores the same images to the same values from the decoded-image cache."""
    from ad_helpers import PRE as AD_PRE
    from ad_helpers import bench_spec, make_cfg

    from openood_ext.pipelines.ad.cell import score_test_set
    from openood_ext.pipelines.ad.settings import ADSettings, cell_benchmark
    root = tmp_path / "ovr"
    write_class_set(root, "band", (("train", 3), ("val", 1), ("test", 6)), np.random.default_rng(0))
    spec = bench_spec(root)
    spec["preprocessor"] = {**AD_PRE, "ms_mode": {"mode": "lpf", "magnitude": 4, "parts": ["test_anomalous"]}}
    cfg = make_cfg(tmp_path, spec, {"test_limit": 12})
    settings = ADSettings.from_config(cfg)
    b = cell_benchmark(cfg, settings, 0)

    def scorer(images):
        return images.flatten(1).pow(2).mean(1), None

    out = {}
    for name, data in (("pil", None), ("tensor", DataSettings(backend="tensor", cache_dir=str(tmp_path / "c")))):
        cell = tmp_path / name
        cell.mkdir()
        out[name] = score_test_set(b, scorer, settings, cell, "cpu", 5, data=data)
    assert 0 < len(out["pil"][0]) < 18 and out["pil"][2] == out["tensor"][2]
    np.testing.assert_array_equal(out["pil"][1], out["tensor"][1])
    np.testing.assert_allclose(out["pil"][0], out["tensor"][0], rtol=0, atol=1e-6)
    assert any((tmp_path / "c").glob("*.npy"))


def test_decoded_split_loader_on_a_hand_made_set():
    """Rows in the given order, labels on the CPU, the skipped count on the first batch of row 0 only."""
    from openood_ext.datasets.decoded_cache import DecodedImages
    from openood_ext.datasets.tensor_recipe import tensor_pipeline
    images = torch.arange(5 * 1 * 2 * 2, dtype=torch.uint8).reshape(5, 1, 2, 2)
    decoded = DecodedImages(images, torch.tensor([0, 1, 2, 0, 1]), skipped=2)
    loader = DecodedSplitLoader(decoded, tensor_pipeline({"channels": 1, "mean": [0.0], "std": [1.0]}), 2,
                                rows=torch.tensor([4, 0, 2]))
    batches = list(loader)
    assert len(loader) == len(batches) == 2 and [b[2] for b in batches] == [2, 0]
    assert torch.equal(torch.cat([b[0] for b in batches]), images[[4, 0, 2]].float() / 255)
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.tensor([1, 0, 2]))
    assert [b[2] for b in loader.subset([1, 2])] == [0] and list(loader.subset([0]))[0][2] == 2


def test_a_corrupt_image_is_reported_as_the_per_image_path_reports_it(tmp_path):
    from openood_ext.errors import DataError
    root = tmp_path / "data"
    write_class_set(root, "channel", (("train", 1), ("val", 1), ("test", 2)), np.random.default_rng(2))
    (root / "img/test/2_1.png").write_bytes(b"broken")
    b = bench(root, ood={})
    with pytest.raises(DataError, match=r"2_1.png.*test.txt:6"):
        eval_loader(b, b.split("id_test"), DataSettings(), 2)
    with pytest.raises(DataError, match=r"2_1.png.*test.txt:6"):
        concat(b.loader(b.split("id_test"), batch_size=2))
