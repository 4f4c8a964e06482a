"""FCDD against its published behaviour (liznerski/fcdd @ 4fa8502): what scripts/parity/fcdd.py measured
against the authors' code, checked here without the checkout (definitions by hand, golden values)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from openood_ext.config import load_config, to_plain
from openood_ext.datasets.transforms import PairedTransform, build_transform
from openood_ext.networks import NETWORKS
from openood_ext.networks.fcdd import AECNN28, AECNN32, FCDDCNN28, HSCCNN28, HSCCNN32
from openood_ext.networks.receptive import kernel_size_to_std
from openood_ext.synthesizers.confetti import apply_confetti, confetti_noise, fit_noise, rotate_window
from openood_ext.trainers import TRAINERS, split_trainer_config
from openood_ext.trainers.engine import Engine, EngineSettings
from openood_ext.trainers.fcdd import FCDDTrainer, OnlineSupervision
from openood_ext.trainers.trainer import Batch, Trainer
from parity_helpers import parity_script

GOLDEN = Path(__file__).parents[1] / "pipelines" / "ad" / "golden" / "fcdd_published.json"


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


# ------------------------------------------------------------------------------------ 6. kernel std
def test_kernel_size_to_std_is_the_published_formula(golden):
    for k in (3, 15, 16, 21, 31):
        assert kernel_size_to_std(k) == pytest.approx(math.log10(0.45 * k + 1) + 0.25)
    assert kernel_size_to_std(32) == 10.0 and kernel_size_to_std(62) == 10.0
    for k, v in golden["kernel_size_to_std"].items():
        assert kernel_size_to_std(int(k)) == pytest.approx(v, abs=1e-12)


# ------------------------------------------------------------------------------------ 2. baselines
def test_baselines_have_the_published_parameter_counts(golden):
    for name, cls in (("CNN28_W", HSCCNN28), ("CNN32_LW3K", HSCCNN32), ("AE28", AECNN28), ("AE32_LW3K", AECNN32)):
        net = cls()
        assert sum(p.numel() for p in net.parameters()) == golden["params"][name], name
        assert NETWORKS.build({"name": name}).__class__ is cls


def test_baselines_give_the_published_outputs_with_the_published_weights(golden):
    """Golden outputs of the published nets (weights from a fixed seed, saved as their state dicts'
    sums) are reproduced from the same seeded weights loaded into ours by name."""
    for name, cls, shape in (("CNN28_W", HSCCNN28, (2, 1, 28, 28)), ("AE28", AECNN28, (2, 1, 28, 28)),
                             ("CNN32_LW3K", HSCCNN32, (2, 3, 32, 32)), ("AE32_LW3K", AECNN32, (2, 3, 32, 32))):
        net = cls().eval()
        net.load_state_dict(parity_script("fcdd").seeded_state(net))  # the weights the harness gave both sides
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            out = net(x)
        ref = golden["outputs"][name]
        assert list(out.shape) == ref["shape"]
        np.testing.assert_allclose(out.flatten()[:16].numpy(), ref["head"], rtol=1e-4, atol=1e-5)
        assert float(out.double().sum()) == pytest.approx(ref["sum"], rel=1e-4, abs=1e-4)


def test_baseline_pixel_maps_are_raw_and_the_display_is_blurred():
    net = HSCCNN28().eval()
    tr = TRAINERS.build({"name": "hsc"})
    tr.net = net
    x = torch.randn(3, 1, 28, 28)
    _, raw = tr.anomaly_scores(x)
    xg = x.clone().requires_grad_(True)
    d = (net(xg).pow(2).sum(1) + 1).sqrt() - 1
    grad, = torch.autograd.grad(d.sum(), xg)
    torch.testing.assert_close(raw, grad.abs().sum(1))
    shown = tr.display_maps(raw)
    assert shown.shape == raw.shape and not torch.allclose(shown, raw)
    tr.blur_pixel_maps = True
    torch.testing.assert_close(tr.anomaly_scores(x)[1], shown)


# ------------------------------------------------------------------------------------ 1. mvtec_gt
class _Ctx:
    seed, outliers = 0, None


def test_real_anomalies_enter_the_loss_with_their_masks():
    torch.manual_seed(0)
    net = FCDDCNN28(in_channels=1, image_size=28).eval()
    tr = FCDDTrainer(supervise_mode="noise", gt_path=True, p_outlier=1.0)
    tr.net, tr.ctx = net, _Ctx()
    images, outliers = torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)
    masks = torch.zeros(4, 1, 28, 28)
    masks[:, :, 5:15, 5:15] = 1
    batch = Batch(images, torch.zeros(4, dtype=torch.long), outliers, 0, 0, 0, outlier_masks=masks)
    loss = tr.training_step(batch)["loss"]
    a = net.upsample((net(outliers) ** 2 + 1).sqrt() - 1)
    norm = (a * (1 - masks)).flatten(1).mean(1)
    anom = -torch.log(1 - torch.exp(-(a * masks).flatten(1).mean(1)) + 1e-31)
    torch.testing.assert_close(loss, (norm + anom).mean())
    ones = tr.training_step(Batch(images, torch.zeros(4, dtype=torch.long), outliers, 0, 0, 0))["loss"]
    assert not torch.allclose(loss, ones)  # the all-ones map of a synthetic anomaly is another loss


def test_paired_transform_moves_masks_with_images_and_keeps_them_binary():
    from PIL import Image
    pre = {"image_size": 8, "raw_size": 10, "channels": 1, "train_crop": "choice", "mean": [0], "std": [1]}
    arr = np.zeros((13, 13), np.uint8)
    arr[3:9, 4:10] = 255
    torch.manual_seed(3)
    for _ in range(10):
        img, mask = PairedTransform(pre, train=True)(Image.fromarray(arr), Image.fromarray(arr))
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        torch.testing.assert_close(mask, (img > 0.5).float())  # the same geometry, nearest neighbour


# ------------------------------------------------------------------------------------ 3. transforms
def test_fcdd_recipes_use_the_published_augmentations():
    cifar = to_plain(load_config(["configs/experiments/fcdd/ad_cifar10_fcdd.yml"]).benchmark.preprocessor)
    assert cifar["train_augment"] == ["color_jitter", "random_crop", "hflip", "gaussian_noise"]
    assert cifar["normalize"] == "normal_class" and cifar["jitter"] == 0.01 and cifar["noise_std"] == 0.001
    mv = to_plain(load_config(["configs/experiments/fcdd/ad_mvtec_fcdd.yml"]).benchmark.preprocessor)
    assert mv["raw_size"] == 240 and mv["train_crop"] == "choice" and mv["interpolation"] == "nearest"
    names = [type(t).__name__ for t in build_transform(mv, train=True).transforms]
    assert names == ["TorchNearestResize", "RandomChoice", "RandomChoice", "ToTensor", "RelativeNoise", "Normalize"]


def test_torch_nearest_resize_is_torch_interpolate():
    from PIL import Image

    from openood_ext.datasets.transforms import TorchNearestResize
    arr = np.random.default_rng(0).integers(0, 256, (300, 280, 3), dtype=np.uint8)
    out = np.asarray(TorchNearestResize(240)(Image.fromarray(arr)))
    ref = torch.nn.functional.interpolate(torch.from_numpy(arr).permute(2, 0, 1)[None].float(), (240, 240))[0]
    np.testing.assert_array_equal(out, ref.byte().permute(1, 2, 0).numpy())


# ------------------------------------------------------------------------------------ 4. confetti
def test_confetti_darkens_as_published(golden):
    g = torch.Generator().manual_seed(0)
    for level in (40, 100, 160, 220):
        img = torch.full((60, 3, 48, 48), float(level))
        out, _ = apply_confetti(img, confetti_noise((60, 3, 48, 48), g, side_range=(8, 20)))
        brightened = float((out.mean((1, 2, 3)) > level).float().mean())
        assert brightened == golden["confetti"]["brightened"][str(level)] == 0.0


def test_confetti_blob_count_is_conditioned_on_one(golden):
    """Published: mask redrawn until non-empty; mean blob count E[N | N >= 1] at 240 px (z < 4)."""
    from openood_ext.synthesizers.confetti import draw_blobs
    g = torch.Generator().manual_seed(0)
    counts = [len(draw_blobs(240, 240, 3, 1.8e-5, (8, 54), None, g).side) for _ in range(300)]
    lam = 240 * 240 * 1.8e-5
    mean, var = lam / (1 - math.exp(-lam)), lam * (1 + lam) / (1 - math.exp(-lam)) - (lam / (1 - math.exp(-lam))) ** 2
    assert abs(np.mean(counts) - mean) < 4 * math.sqrt(var / 300)
    assert abs(golden["confetti"]["mean_blobs_240"] - mean) < 4 * math.sqrt(var / golden["confetti"]["n_images"])


def test_rotate_window_is_nearest_neighbour_rotation():
    win = torch.zeros(9, 9, 1)
    win[4, 1:8] = 1  # a horizontal bar through the centre
    out = rotate_window(win, 90.0, (4, 4))
    assert torch.equal(out[:, 4, 0], win[4, :, 0]) and out[4, :, 0].sum() == 1


def test_noise_mode_bright_by_default_black_when_published():
    from openood_ext.synthesizers.confetti import Confetti
    for published, bright in ((False, True), (True, False)):
        src = Confetti(mode="noise", side_range=[4, 6], published_noise_clamp=published)
        src.pixels = type("P", (), {"to_unit": staticmethod(lambda x: x), "from_unit": staticmethod(lambda x: x)})()
        src.generator = torch.Generator().manual_seed(0)
        out = src.corrupt(torch.rand(2, 3, 32, 32))
        assert bool(out.max() > 0) == bright


def test_noise_drawn_at_240_is_cropped_or_resized_to_224():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(6, 3, 240, 240)
    out = fit_noise(noise, (224, 224), g)
    assert out.shape == (6, 3, 224, 224)


# ------------------------------------------------------------------------------------ 5. acc_batches
class _BNTrainer(Trainer):
    def training_step(self, batch):
        return {"loss": self.net(batch.images).pow(2).mean()}


def _grads(mode: str) -> torch.Tensor:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 1, 1))
    data = torch.randn(12, 1, 8, 8)
    loader = [(data[i:i + 3], torch.zeros(3, dtype=torch.long)) for i in range(0, 12, 3)]
    settings = EngineSettings.from_config({"epochs": 1, "accumulate": 4, "accumulate_mode": mode,
                                           "optimizer": {"name": "sgd", "lr": 0.1}, "scheduler": "constant"})
    eng = Engine(_BNTrainer(), net, loader, settings, num_classes=1)
    grads = {}
    step = eng._optimizer_step

    def record_then_step():
        grads.setdefault("g", net[0].weight.grad.clone())
        step()

    eng._optimizer_step = record_then_step
    eng.run_epoch(0)
    whole = net[0].weight.detach().clone().requires_grad_(True)
    return grads["g"], net, data, whole


def test_concat_accumulation_forwards_the_whole_group_at_once():
    g_concat, net, data, _ = _grads("concat")
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 1, 1))
    ref(data).pow(2).mean().backward()  # one forward of all 12 samples: FCDD's acc_batches
    torch.testing.assert_close(g_concat, ref[0].weight.grad)
    g_grad = _grads("gradients")[0]
    assert not torch.allclose(g_grad, g_concat)  # BatchNorm saw 3 samples at a time


# ------------------------------------------------------------------------------------ recipes
@pytest.mark.parametrize("name,net,trainer", [("ad_cifar10_hsc", "hsc_cnn32", "hsc"), ("ad_fmnist_ae", "ae_cnn28", "ae"),
                                              ("ad_cifar10_ae", "ae_cnn32", "ae"),
                                              ("ad_mvtec_fcdd_semi", "fcdd_vgg11_224", "fcdd")])
def test_baseline_and_semi_supervised_configs_build(name, net, trainer):
    cfg = load_config([f"configs/experiments/fcdd/{name}.yml"])
    tr = to_plain(cfg.trainer)
    assert tr["name"] == trainer and to_plain(cfg.network)["name"] == net
    settings, kwargs = split_trainer_config(tr)
    TRAINERS.get(tr["name"])(**{k: v for k, v in kwargs.items() if k != "name"})
    if "cifar10" in name:
        assert settings.accumulate == 10 and settings.accumulate_mode == "concat"
    if name == "ad_mvtec_fcdd_semi":
        assert tr["outliers"] == {"name": "oe_images", "split": "oe", "masks": True}
        assert tr["supervise_mode"] == "noise" and tr["gt_path"] and cfg.benchmark.oe_defects == 1
        assert settings.accumulate == 8 and settings.accumulate_mode == "concat"


def test_online_supervision_cycles_short_masks():
    x = torch.arange(3).view(3, 1)
    assert OnlineSupervision._aligned(x, 5).flatten().tolist() == [0, 1, 2, 0, 1]


def test_imagenet30_recipe_needs_data(tmp_path):
    from openood_ext.datasets import BENCHMARKS
    from openood_ext.errors import DataError
    cfg = load_config(["configs/experiments/fcdd/ad_imagenet30_fcdd.yml"])
    tr = to_plain(cfg.trainer)
    settings, kwargs = split_trainer_config(tr)
    assert settings.accumulate_mode == "concat" and to_plain(cfg.network)["pretrained"] is False
    spec = {**to_plain(cfg.benchmark), "root": str(tmp_path / "imagenet30")}
    with pytest.raises(DataError, match="imagenet30"):
        BENCHMARKS.build(spec)


def test_fcdd_noise_modes_follow_their_definitions():
    from openood_ext.synthesizers.fcdd_noise import fcdd_noise
    g = torch.Generator().manual_seed(0)
    gauss = fcdd_noise("gaussian", (64, 3, 32, 32), g)
    assert gauss.std() == pytest.approx(64, rel=0.02) and gauss.mean().abs() < 1
    uni = fcdd_noise("uniform", (64, 3, 32, 32), g)
    assert 0 <= uni.min() and uni.max() <= 255 and uni.mean() == pytest.approx(127.5, rel=0.02)
    solid = fcdd_noise("solid", (8, 3, 16, 16), g)
    assert torch.equal(solid, solid[:, :, :1, :1].expand_as(solid))
    blob = fcdd_noise("blob", (20, 1, 64, 64), g)
    assert set(blob.unique().tolist()) <= {0.0, 255.0} and bool((blob.flatten(1).amax(1) == 255).all())


def test_heatmap_grids_show_the_blurred_baseline_maps(tmp_path):
    from openood_ext.pipelines.ad.cell import DisplayedMaps
    from openood_ext.pipelines.ad.heatmaps import save_heatmap_grids
    tr = TRAINERS.build({"name": "ae"})
    tr.net = AECNN28()
    heat = np.random.default_rng(0).random((6, 28, 28)).astype(np.float32)
    shown = DisplayedMaps(heat, tr.display_maps)
    rows = np.array([1, 4])
    np.testing.assert_allclose(shown[rows], tr.display_maps(torch.from_numpy(heat[rows])).numpy())
    assert np.asarray(shown).shape == heat.shape
    labels = np.array([0, 0, 0, 1, 1, 1])
    written = save_heatmap_grids(tmp_path, shown, heat.mean((1, 2)), labels,
                                 lambda r: np.zeros((len(r), 1, 28, 28), np.float32), 2, 0.85)
    assert written and all(p.is_file() for p in written)
