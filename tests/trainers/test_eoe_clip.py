"""EOE's CLIP detectors: prompts from the benchmark's class names, softmax(100 * cos) of the anomaly prompt
(temperature, sign), the CLIP+OE loss by hand, a tiny random CLIP through the ad pipeline (zero-shot without a
training step; OE fine-tuning changes only the image tower), and the offline-model error."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import toy_benchmark, write_class_set
from omegaconf import OmegaConf
from PIL import Image
from scipy.special import log_softmax, softmax

from openood_ext.errors import ConfigError
from openood_ext.networks.clip import CLIPNet, load_clip
from openood_ext.trainers.eoe_clip import (
    clip_anomaly_score,
    clip_oe_loss,
    clip_prompts,
    normal_class_names,
)

CIFAR = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def test_prompts_from_the_benchmarks_class_names():
    from openood_ext.datasets import BENCHMARKS
    assert BENCHMARKS.get("cifar10_ad").class_names == CIFAR
    assert BENCHMARKS.get("fmnist").class_names[-1] == "ankle_boot"  # verbatim, underscore kept (EOE)
    ovr = SimpleNamespace(normal=[3], class_names=CIFAR, name="cifar10_ad")
    assert clip_prompts(normal_class_names(ovr)) == ["a photo of a cat", "a photo of something"]
    loo = SimpleNamespace(normal=[c for c in range(10) if c != 3], class_names=CIFAR, name="cifar10_ad")
    prompts = clip_prompts(normal_class_names(loo))
    assert len(prompts) == 10 and prompts[-1] == "a photo of something" and "a photo of a cat" not in prompts
    assert prompts[:2] == ["a photo of a airplane", "a photo of a automobile"]
    assert normal_class_names(SimpleNamespace(normal="bottle")) == ["bottle"]  # folder benchmarks
    assert normal_class_names(ovr, ["x" + c for c in CIFAR]) == ["xcat"]
    with pytest.raises(ConfigError, match="trainer.class_names: benchmark imglist names no classes"):
        normal_class_names(SimpleNamespace(normal=[0], name="imglist"))


def test_score_is_softmax_of_100_cosine_at_the_anomaly_prompt():
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(5, 8)), rng.normal(size=(3, 8))
    cos = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ (txt / np.linalg.norm(txt, axis=1, keepdims=True)).T
    for t in (100.0, 1.0):
        got = clip_anomaly_score(torch.tensor(img), torch.tensor(txt), t).numpy()
        np.testing.assert_allclose(got, softmax(t * cos, axis=1)[:, -1], rtol=1e-6)
    # sign: an image on the anomaly prompt scores ~1, one on a normal prompt ~0 (anomalous = higher)
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s = clip_anomaly_score(torch.tensor([[0.0, 2.0], [3.0, 0.0]]), text)
    assert s[0] > 1 - 1e-6 and s[1] < 1e-6
    # temperature matters: at 1 the same images are far less certain
    s1 = clip_anomaly_score(torch.tensor([[0.0, 2.0]]), text, 1.0)
    assert abs(float(s1) - 1 / (1 + np.exp(-1))) < 1e-6


def test_clip_oe_loss_by_hand():
    rng = np.random.default_rng(1)
    img, txt = rng.normal(size=(4, 6)), rng.normal(size=(3, 6))  # prompts: 2 normal classes + anomaly (loo)
    labels = np.array([0, 0, 1, 1])
    cos = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ (txt / np.linalg.norm(txt, axis=1, keepdims=True)).T
    lp = log_softmax(100 * cos, axis=1)
    want = -np.mean([lp[0, :2].max(), lp[1, :2].max(), lp[2, 2], lp[3, 2]])
    got = clip_oe_loss(torch.tensor(img), torch.tensor(txt), torch.tensor(labels))
    assert abs(float(got) - want) < 1e-6
    # one-vs-rest: 2 prompts, the normal term is prompt 0
    lp2 = log_softmax(100 * cos[:, [0, 2]], axis=1)
    got2 = clip_oe_loss(torch.tensor(img), torch.tensor(txt[[0, 2]]), torch.tensor(labels))
    assert abs(float(got2) - -np.mean([lp2[0, 0], lp2[1, 0], lp2[2, 1], lp2[3, 1]])) < 1e-6


def test_tiny_random_clip_network():
    net = CLIPNet("tiny-random").eval()
    again = CLIPNet("tiny-random")
    for (k, a), b in zip(net.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k  # fixed seed: the same tiny model every time
    x = torch.rand(2, 3, 40, 30)
    assert net.preprocess(x).shape == (2, 3, 32, 32)
    assert net.preprocess(torch.rand(1, 1, 32, 32)).shape == (1, 3, 32, 32)
    with torch.no_grad():
        assert net(x).shape == (2, 16)
        t = net.encode_text(["a photo of a ankle_boot", "a photo of something"])
    assert t.shape == (2, 16) and not torch.allclose(t[0], t[1])
    names = {n for n, _ in net.clip.vision_model.named_parameters()}
    assert len(net.image_parameters()) == len(names) + len(list(net.clip.visual_projection.parameters()))


def test_pil_preprocessing_is_clips_own_pil_transform():
    """``preprocessing: pil`` = CLIP's published transform (bicubic PIL resize of the 8-bit image, centre
    crop, ToTensor, CLIP's mean/std); ``tensor`` resizes the float tensor and differs slightly."""
    import torchvision.transforms as T

    net = CLIPNet("tiny-random", preprocessing="pil")
    img = np.random.default_rng(1).integers(0, 256, (20, 24, 3)).astype(np.uint8)
    x = torch.from_numpy(img.transpose(2, 0, 1)).float()[None] / 255
    clip_transform = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32),
                                T.ToTensor(), T.Normalize(net.mean.flatten().tolist(), net.std.flatten().tolist())])
    want = clip_transform(Image.fromarray(img))
    assert torch.allclose(net.preprocess(x)[0], want, atol=1e-6)
    tensor = CLIPNet("tiny-random").preprocess(x)[0]
    assert 0 < (tensor - want).abs().max() < 0.5


def test_unavailable_model_id_is_one_line():
    with pytest.raises(ConfigError) as err:
        load_clip("openai/clip-vit-no-such-model")
    msg = str(err.value)
    assert "'openai/clip-vit-no-such-model' is not available offline" in msg and "local directory" in msg
    assert "\n" not in msg


# ---------------------------------------------------------------------------------------------- ad pipeline
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A 3-class RGB 32x32 set (class c brightens channel c) and 6 OE images."""
    root = tmp_path_factory.mktemp("clip")
    rng = np.random.default_rng(0)
    write_class_set(root, "channel", (("train", 8), ("val", 2), ("test", 5)), rng)
    (root / "oe").mkdir()
    for k in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)).save(root / "oe" / f"{k}.png")
    return root


def clip_cfg(root: Path, tmp: Path, trainer: dict, protocol: str = "one_vs_rest"):
    pre = {"image_size": 32, "resize": 32, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3, "train_augment": []}
    return OmegaConf.create({
        "pipeline": "ad", "experiment": "clip", "seed": 0, "device": "cpu", "output_dir": str(tmp / "results"),
        "num_workers": 0, "batch_size": 16,
        "benchmark": toy_benchmark(root, "cifar10_ad", pre),
        "network": {"name": "clip", "model": "tiny-random"},
        "trainer": {"epochs": 1, "batch_size": 8, "scheduler": {"name": "constant"}, **trainer},
        "ad": {"classes": [1], "seeds": 1, "heatmaps": 0, "protocol": protocol}})


def test_zero_shot_through_the_ad_pipeline(tiny, tmp_path):
    from openood_ext.runner import run_config
    from openood_ext.trainers.eoe_clip import EOECLIPZeroShot
    for protocol, normal in (("one_vs_rest", [1]), ("leave_one_out", [0, 2])):
        cfg = clip_cfg(tiny, tmp_path, {"name": "eoe_clip_zero_shot"}, protocol)
        cfg.experiment = f"zs_{protocol}"
        out = run_config(cfg)
        cell = Path(out["run_dir"]) / "normal_1" / "seed_0"
        result = json.loads((cell / "result.json").read_text())
        assert result["epochs"] == 0 and json.loads((cell / "history.json").read_text()) == []
        blob = np.load(cell / "scores.npz")
        # the same scores by hand: tiny CLIP (untrained), CIFAR names of the normal classes + "something"
        net = CLIPNet("tiny-random").eval()
        prompts = [f"a photo of a {CIFAR[c]}" for c in normal] + ["a photo of something"]
        trainer = EOECLIPZeroShot()
        trainer.setup(net, SimpleNamespace(benchmark=SimpleNamespace(normal=normal, class_names=CIFAR, name="x",
                                                                     preprocessor=cfg.benchmark.preprocessor),
                                           log=SimpleNamespace(info=lambda *a: None)))
        assert trainer.prompts == prompts
        x = torch.stack([torch.from_numpy(np.asarray(Image.open(tiny / p).convert("RGB"), np.float32) / 255).permute(2, 0, 1)
                         for p in blob["paths"][:4]])
        with torch.no_grad():
            img, txt = net(x), net.encode_text(prompts)
        np.testing.assert_allclose(blob["scores"][:4], clip_anomaly_score(img, txt).numpy(), rtol=1e-4, atol=1e-6)


def test_clip_oe_fine_tunes_only_the_image_tower(tiny, tmp_path):
    from openood_ext.runner import run_config
    cfg = clip_cfg(tiny, tmp_path, {"name": "eoe_clip", "outliers": {"name": "oe_images", "folder": str(tiny / "oe")},
                                    "optimizer": {"name": "sgd", "lr": 1e-2, "momentum": 0.9, "nesterov": True,
                                                  "weight_decay": 1e-3}})
    out = run_config(cfg)
    cell = Path(out["run_dir"]) / "normal_1" / "seed_0"
    hist = json.loads((cell / "history.json").read_text())
    assert len(hist) == 1 and np.isfinite(hist[0]["loss"])
    trained = torch.load(cell / "checkpoint.pt", map_location="cpu", weights_only=False)
    state = trained.get("state_dict", trained.get("model", trained))
    init = CLIPNet("tiny-random").state_dict()
    text_keys = [k for k in init if ".text_model." in k or "text_projection" in k]
    vision_keys = [k for k in init if ".vision_model." in k and k.endswith("weight")]
    assert text_keys and all(torch.equal(state[k], init[k]) for k in text_keys)
    assert any(not torch.equal(state[k], init[k]) for k in vision_keys)
