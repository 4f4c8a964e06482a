"""NPOS against golden values from the published code (written by ``scripts/parity/npos.py --published
<deeplearning-wisc/npos @ 583c06d> --openood <OpenOOD @ 3c35632> --golden``): the sampler with the
published draws (``ranking: published``), the CIDER losses and their gradients, the paper's and OpenOOD's
learning-rate schedules, and every gradient of one OpenOOD training step with synthesis."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from openood_ext.config import load_config
from openood_ext.synthesizers.npos import NPOSParams, faiss_available, npos_sample
from openood_ext.trainers.optim import check_schedule_spec, schedule_factor
from parity_helpers import parity_script

REPO = Path(__file__).resolve().parents[2]
GOLDEN = torch.load(Path(__file__).parent / "golden" / "npos_published.pt", weights_only=True)


@pytest.fixture(scope="module")
def harness():
    return parity_script("npos")


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_sampler_with_the_published_draws_equals_the_published_outliers(backend):
    if backend == "faiss" and not faiss_available():
        pytest.skip("faiss not installed")
    g = GOLDEN["sampler"]
    p = g["params"]
    params = NPOSParams(K=p["K"], select=p["select"], pick=p["pick"], candidates=p["sample_from"], keep=p["keep"],
                        sigma=p["sigma"])
    out = npos_sample(g["queues"], params, noise=g["noise"], picks=g["picks"], ranking="published",
                      backend=backend).flat()[0]
    torch.testing.assert_close(out, g["published"], atol=1e-5, rtol=0)
    intended = npos_sample(g["queues"], params, noise=g["noise"], picks=g["picks"], backend=backend).flat()[0]
    assert not torch.allclose(intended, g["published"])   # the default ranking is the intended one


def test_losses_gradients_and_prototypes_equal_the_published(harness):
    g = GOLDEN["losses"]
    ours = harness.ours_losses(g["z"], g["labels"], g["proto"])
    for key in ("disp", "comp", "g_disp", "g_comp", "proto_after"):
        torch.testing.assert_close(ours[key], g[key], atol=1e-6, rtol=1e-5, msg=key)


def test_paper_schedule_equals_adjust_learning_rate():
    cfg = load_config([str(REPO / "configs/experiments/npos/train_npos_cifar10.yml")]).trainer
    spec = check_schedule_spec(dict(cfg.scheduler), 500)
    ours = torch.tensor([cfg.optimizer.lr * schedule_factor(spec, e, 500, 1) for e in range(500)], dtype=torch.float64)
    torch.testing.assert_close(ours, GOLDEN["schedule_paper"], atol=1e-12, rtol=0)


def test_openood_schedule_with_its_negative_warmup_switch():
    g = GOLDEN["schedule_openood"]
    E, n, lr = g["epochs"], g["steps"], 0.1
    spec = check_schedule_spec({"name": "supcon", "min_lr_ratio": 1e-3, "warmup_epochs": 10,
                                "warmup_from_ratio": 0.001 / lr, "warmup_epoch_base": 0}, E)
    ours = torch.tensor([lr * schedule_factor(spec, t, E, n) for t in range(E * n)], dtype=torch.float64)
    torch.testing.assert_close(ours, g["lr"], atol=1e-12, rtol=0)
    assert g["lr"][0] < 0   # the published first epoch runs backwards


def test_one_openood_training_step_every_gradient(harness):
    g = GOLDEN["step"]
    terms, grads = harness.ours_step(**g["inputs"])
    assert terms["n_outliers"] == 18 and terms["reg"] > 0
    assert set(g["grads"]) <= set(grads)
    for name, ref in g["grads"].items():
        torch.testing.assert_close(grads[name], ref, atol=1e-5, rtol=1e-4, msg=name)
