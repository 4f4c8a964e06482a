"""Mixed precision does not change the zoo's numbers: every built-in postprocessor gives the fp32 AUROCs on
digits (the main job's trained network) when the shared passes run under bf16 autocast, and no score is
non-finite under fp16 autocast (CPU autocast with dtype float16 simulates the GPU's fp16 semantics).

The reductions that must stay in float32 (layer taps, Gram row sums, Mahalanobis statistics, energy) run
in ``full_precision`` regions; without them Gram's row sums overflow in fp16 and move AUROC in bf16.
What remains under bf16 is the network's own rounding of its outputs (8-bit mantissa): methods that
threshold or rank feature contributions (DICE, ASH, the residual subspace, MDSEns whose fit rides the
bf16 taps while its input-gradient scoring runs in fp32) and GMM's many-component mixture fit move by up
to about 1 point on digits; every other method stays within 0.1 point."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from openood_ext.datasets.cli import load_benchmark
from openood_ext.evaluators.metrics import auroc
from openood_ext.networks import NETWORKS
from openood_ext.networks.checkpoint import load_checkpoint
from openood_ext.postprocessors import POSTPROCESSORS
from openood_ext.postprocessors.gram_rowsums import gram_row_sums
from openood_ext.postprocessors.schedule import LoaderSource, Scheduler
from openood_ext.utils.runtime import full_precision

OOD_SETS = ("digits6to9", "textures", "photos")
# the network's bf16 rounding alone moves these by up to ~0.8 point on digits (measured: DICE 0.77,
# MDSEns 0.26, Residual 0.11, ASH 0.09; GMM 0.52: its precision-weighted distances over 50 principal
# directions of a 4096-d layer follow the bf16 network's systematic rounding, while a random relative
# perturbation of the fp32 features of the same size, 0.7 %, moved it by 0.01); every other method must
# stay within TOLERANCE
FORWARD_SENSITIVE = {"dice": 1.0, "mds_ensemble": 0.5, "residual": 0.25, "ash": 0.2, "gmm": 0.75}
TOLERANCE = 0.1
# cheaper settings where the default would only cost time on 1 000 digits (same on both precisions)
SETTINGS = {"odin": {"grad_batch_size": 64}, "mds_ensemble": {"grad_batch_size": 64}}


def builtin_zoo() -> list[str]:
    names = [n for n in POSTPROCESSORS.names() if POSTPROCESSORS.get(n).__module__.startswith("openood_ext.postprocessors.")]
    # vmdls scores only its own network (test_vmdls.py); MC dropout needs dropout layers and the ensemble member
    # checkpoints (both run plain network passes, covered by test_dropout.py / test_ensemble.py)
    return [n for n in names if n not in ("vmdls", "dropout", "ensemble")]


TINY = {"knn": {"k": 5}, "npos": {"k": 5}, "nnguide": {"K": 5}, "vim": {"dim": 4}, "residual": {"dim": 4},
        "openmax": {"tailsize": 5, "backend": "scipy"}, "odin": {"grad_batch_size": 16},
        "mds_ensemble": {"grad_batch_size": 16}, "iodin": {"grad_batch_size": 16},
        "adascale": {"k1": 25, "k2": 12.5, "grad_batch_size": 16}}  # 5% / 1% of 8 units round to none


@pytest.fixture(scope="module")
def tiny_zoo():
    """A tiny random DigitsCNN whose activations are scaled up (x 8 per layer) so that Gram's 5th-order row
    sums exceed fp16's range, and loaders of random 8x8 images."""
    from conftest import image_loader
    torch.manual_seed(0)
    net = NETWORKS.build({"name": "digits_cnn", "num_classes": 4, "in_channels": 1, "width": 2}).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.mul_(8)
    gen = torch.Generator().manual_seed(1)
    data = {}
    for name, n in (("id_train", 40), ("id_val", 16), ("id_test", 12), ("ood", 12)):
        x = torch.randn(n, 1, 8, 8, generator=gen) + (2.0 if name == "ood" else 0.0)
        data[name] = (x, torch.arange(n) % 4 if name != "ood" else torch.full((n,), -1))
    return net, {k: image_loader(*v) for k, v in data.items()}


@pytest.fixture(scope="module")
def digits_zoo_aurocs(digits_run, digits_checkpoint):
    """precision -> postprocessor -> [AUROC (%) per OOD set], every built-in postprocessor on digits."""
    work, _ = digits_run
    net = NETWORKS.build({"name": "digits_cnn"})
    load_checkpoint(digits_checkpoint, net)
    net.eval()
    bench = load_benchmark("digits", work / "data")
    splits = ["id_train", "id_val", "id_test", *OOD_SETS]
    loaders = {s: bench.loader(bench.split(s), batch_size=256, num_workers=0) for s in splits}
    result = {}
    for precision in ("fp32", "bf16"):
        pps = {n: POSTPROCESSORS.build({"name": n, **SETTINGS.get(n, {})}) for n in builtin_zoo()}
        source = LoaderSource(net, loaders, "cpu", precision=precision)
        torch.manual_seed(0)
        scores = Scheduler(pps, source, net, torch.device("cpu")).run(["id_test", *OOD_SETS]).scores
        result[precision] = {}
        for name, per_split in scores.items():
            id_conf = per_split["id_test"].conf
            assert np.isfinite(id_conf).all(), (precision, name)
            row = []
            for s in OOD_SETS:
                conf = np.r_[id_conf, per_split[s].conf]
                row.append(100 * auroc(conf, np.r_[np.ones(len(id_conf)), np.zeros(len(per_split[s].conf))]))
            result[precision][name] = row
    return result


@pytest.mark.slow  # the whole zoo twice on digits: about 4 min on a shared 2-core machine
def test_bf16_gives_the_fp32_aurocs_for_every_postprocessor(digits_zoo_aurocs):
    fp32, bf16 = digits_zoo_aurocs["fp32"], digits_zoo_aurocs["bf16"]
    assert set(fp32) == set(bf16) and {"gram", "mds", "knn", "odin"} <= set(fp32)
    off = {n: np.round(np.abs(np.subtract(bf16[n], fp32[n])), 3).tolist() for n in fp32
           if np.abs(np.subtract(bf16[n], fp32[n])).max() > FORWARD_SENSITIVE.get(n, TOLERANCE)}
    assert not off, f"AUROC (points) moved beyond the tolerance under bf16: {off}"


def test_every_postprocessor_scores_finite_under_fp16_autocast(tiny_zoo, monkeypatch):
    from openood_ext.postprocessors import gram_rowsums
    monkeypatch.setattr(gram_rowsums, "_numba_kernel", lambda: None)  # Gram's tensor backend, as on a GPU
    net, loaders = tiny_zoo
    pps = {n: POSTPROCESSORS.build({"name": n, **TINY.get(n, {})}) for n in builtin_zoo()}
    source = LoaderSource(net, loaders, "cpu")
    with torch.autocast("cpu", dtype=torch.float16):  # LoaderSource allows fp16 on CUDA only
        scores = Scheduler(pps, source, net, torch.device("cpu")).run(["id_test", "ood"]).scores
    bad = [n for n, per in scores.items() for s in per.values() if not np.isfinite(s.conf).all()]
    assert not bad, f"non-finite scores under fp16: {sorted(set(bad))}"
    assert {"gram", "mds_ensemble", "knn"} <= set(scores)


def test_gram_row_sums_of_half_precision_maps_stay_finite_under_fp16_semantics():
    # a ReLU map of size 1 to 6: its 5th-order row sums exceed fp16's 65504 by orders of magnitude
    t = torch.rand(2, 8, 4, 4, generator=torch.Generator().manual_seed(0)) * 5 + 1
    want = gram_row_sums(t.double(), [1, 5], backend="torch").double()
    with torch.autocast("cpu", dtype=torch.float16):
        got = gram_row_sums(t.half(), [1, 5], backend="torch")
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=2e-3, atol=0)  # only the fp16 rounding of the input


def test_full_precision_keeps_matmuls_in_float32_under_autocast():
    a = torch.randn(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
        with full_precision():
            assert (a @ a).dtype == torch.float32
        assert full_precision(torch.mm)(a, a).dtype == torch.float32
        assert (a @ a).dtype == torch.bfloat16  # the region ends with its block
