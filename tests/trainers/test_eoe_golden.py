"""Golden values from the authors' EOE code (liznerski/eoe @ 11054e4, written by
``python scripts/parity/eoe.py --published CHECKOUT --write-golden tests/golden/eoe_published.pt``): ours must
give the published outputs for the same fixed inputs and deterministic weights, without the checkout."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from openood_ext.networks import NETWORKS
from openood_ext.networks.clip import pil_resize_crop
from openood_ext.synthesizers.fourier_filter import ms_filter
from openood_ext.synthesizers.oe_images import OEImages
from openood_ext.trainers import TRAINERS, Batch, TrainContext
from openood_ext.trainers.eoe_bce import bce_loss
from openood_ext.trainers.eoe_clip import clip_anomaly_score, clip_oe_loss
from openood_ext.trainers.eoe_dsad import dsad_loss
from openood_ext.trainers.eoe_focal import focal_loss
from openood_ext.trainers.eoe_hsc import hsc_loss, hsc_score
from parity_helpers import parity_script

REPO = Path(__file__).resolve().parents[2]
GOLDEN = torch.load(REPO / "tests" / "golden" / "eoe_published.pt", weights_only=False)


def test_golden_file_names_the_published_commit():
    assert GOLDEN["commit"] == "11054e448223b988c26c636bedb33b4f83b94aca"


@pytest.mark.parametrize("name, clf", [("eoe_cnn32", False), ("eoe_cnn32", True), ("eoe_cnn28", False)])
def test_networks_give_the_published_outputs(name, clf):
    g = GOLDEN[f"net/{name}/{clf}"]
    net = NETWORKS.build({"name": name, "bias": True, "clf": clf}).eval()
    parity_script("eoe").deterministic_(net)  # the same fixed pattern the published module was filled with
    with torch.no_grad():
        assert torch.allclose(net(g["x"]), g["y"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, loss, score", [
    ("hsc", hsc_loss, hsc_score), ("dsad", dsad_loss, hsc_score),
    ("bce", bce_loss, lambda f: torch.sigmoid(f).squeeze()), ("focal", focal_loss, lambda f: torch.sigmoid(f).squeeze())])
def test_objectives_give_the_published_loss_gradient_and_score(name, loss, score):
    g = GOLDEN[f"objective/{name}"]
    f = g["features"].clone().requires_grad_(True)
    value = loss(f, g["labels"])
    value.backward()
    assert value.item() == pytest.approx(g["loss"].item(), rel=1e-6)
    assert torch.allclose(f.grad, g["grad"], rtol=1e-5, atol=1e-7)
    assert torch.allclose(score(g["features"]), g["score"], atol=1e-6)


def test_dsvdd_centre_with_the_published_switch():
    g = GOLDEN["dsvdd/centre"]
    net = NETWORKS.build({"name": "eoe_cnn32", "bias": True})
    parity_script("eoe").deterministic_(net)
    t = TRAINERS.get("eoe_dsvdd")(centre_inputs="published")
    t.setup(net, TrainContext(device=torch.device("cpu"), num_classes=1, epochs=1, steps_per_epoch=1))
    assert torch.allclose(t.compute_centre(g["batches"]), g["centre"], atol=1e-6)


@pytest.mark.parametrize("mode", ["one_vs_rest", "leave_one_out"])
def test_clip_objective_and_score(mode):
    g = GOLDEN[f"clip/{mode}"]
    assert clip_oe_loss(g["emb"], g["text"], g["labels"], 100.0).item() == pytest.approx(g["loss"].item(), rel=1e-5)
    assert torch.allclose(clip_anomaly_score(g["emb"], g["text"], 100.0), g["score"], atol=1e-6)


def test_clip_pil_preprocessing_is_the_published_transform():
    g = GOLDEN["clip/preprocess"]
    x = g["image"].permute(2, 0, 1).float()[None] / 255
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)
    out = (pil_resize_crop(x, 224)[0] - mean) / std
    assert torch.allclose(out[:, ::8, ::8], g["out"], atol=1e-5)


def test_oe_pairing_per_step_is_the_published_one():
    g = GOLDEN["pairing"]
    n, b = g["n_normal"], g["batch"]
    steps = -(-n // b)
    src = OEImages()
    src.ctx = SimpleNamespace(seed=0, steps_per_epoch=steps, num_workers=0, device=torch.device("cpu"))
    src.out_batch, src.pool, src.dataset = b, np.arange(7), [(torch.zeros(1), -1)] * 7
    src.on_epoch_start(0)
    sizes = []
    for i in range(steps):
        m = min(b, n - i * b)
        sizes.append((m, len(src.draw(Batch(torch.zeros(m, 1), torch.zeros(m, dtype=torch.long), None, 0, i, i)))))
    assert sizes == [tuple(s) for s in g["sizes"]]


@pytest.mark.parametrize("key", [k for k in GOLDEN if k.startswith("filter/") and k.count("/") == 2])
def test_multiscale_filters_give_the_published_images(key):
    _, mode, m = key.split("/")
    x = GOLDEN["filter/input_8bit" if mode == "sharpen" else "filter/input"]
    assert torch.allclose(ms_filter(x, mode, int(m)), GOLDEN[key], atol=1e-5)
