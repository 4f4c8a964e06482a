"""FCDD's training set as published (liznerski/fcdd @ 4fa8502): the enlarged MVTec epochs, anomalies made
before the training transform (online supervisor), the offline supervisor and the ``mixed_blob`` noise.
Golden values are what scripts/parity/fcdd.py measured on the authors' code; the harness's own helpers
(fake stored MVTec images, fixed draws) rebuild our side exactly."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from openood_ext.datasets.imglist import SkipCounter
from openood_ext.datasets.repeated import RepeatedDataset
from openood_ext.datasets.transforms import RelativeNoise
from openood_ext.synthesizers.base import SourceContext
from openood_ext.synthesizers.confetti import Confetti, apply_offline, confetti_noise
from openood_ext.synthesizers.fcdd_noise import FCDDNoise, fcdd_noise
from openood_ext.synthesizers.supervisor import DatasetSupervision, seeded
from openood_ext.trainers.engine import Engine, EngineSettings
from openood_ext.trainers.fcdd import FCDDTrainer
from openood_ext.trainers.trainer import Batch
from data_helpers import random_png_list
from parity_helpers import parity_script

GOLDEN = Path(__file__).parents[1] / "pipelines" / "ad" / "golden" / "fcdd_published.json"


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def harness():
    return parity_script("fcdd")


def normals(n: int = 4) -> torch.Tensor:
    """The harness's fake stored MVTec class-0 images (fake_mvtec_root without writing the file)."""
    g = torch.Generator().manual_seed(11)
    return torch.randint(0, 256, (n + 2, 3, 240, 240), generator=g, dtype=torch.uint8)[:n]


# ------------------------------------------------------------------------------------ 1. enlarged epochs
def test_repeated_dataset_reads_each_image_times_per_epoch():
    base = [(torch.tensor([float(i)]), i) for i in range(5)]

    class DS(torch.utils.data.Dataset):
        transform = None

        def __len__(self):
            return 5

        def __getitem__(self, i):
            return base[i]

        def labels(self):
            return torch.arange(5)

    rep = RepeatedDataset(DS(), 3)
    assert len(rep) == 15 and rep.labels().tolist() == list(range(5)) * 3
    loader = torch.utils.data.DataLoader(rep, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    seen = torch.cat([x.flatten() for x, _ in loader]).long()
    assert torch.bincount(seen).tolist() == [3] * 5
    assert seen[:5].tolist() != [0, 1, 2, 3, 4]  # one shuffle of the repeated set, not ten ordered passes


def test_mvtec_epochs_hold_ten_copies_in_every_supervise_mode_as_published(harness, golden):
    """Items per training image per epoch: online malformed_normal / unsupervised, offline malformed_normal /
    noise / unsupervised (published: 10/10/20/20/10, ADMvTec.enlarge)."""
    ours = []
    for mode, online in (("malformed_normal", True), ("unsupervised", True), ("malformed_normal", False),
                         ("noise", False), ("unsupervised", False)):
        trainer, source, pre = harness.mvtec_trainer(None if online else "offline", mode)
        assert trainer.epoch_repeats == 10
        ours.append(len(trainer.train_dataset(harness.StoredImages(normals()), pre, source, 0)) / 4)
    assert ours == golden["mvtec_epoch_items_per_image"] == [10, 10, 20, 20, 10]


# ------------------------------------------------------------------------------------ 2. confetti position
def test_online_confetti_is_made_before_crop_jitter_and_noise_as_published(harness, golden):
    """Same stored image, the same confetti, the same seeds, the random choices fixed: the tensor entering
    our normalisation equals the one that entered FCDD's LCN (golden: the published tensors)."""
    noise = confetti_noise((1, 3, 240, 240), torch.Generator().manual_seed(5))
    trainer, source, pre = harness.mvtec_trainer()
    assert source.supervisor == "online" and source.dataset_side
    fixed = {}
    source.noise255 = lambda shape, generator: (fixed["draws"].step("confetti"), noise.clone().float())[1]
    data = DatasetSupervision(harness.StoredImages(normals(1)), source, pre, p=1.0)
    for k, what in ((0, "crop"), (1, "resize")):
        for seed in (0, 1):
            with harness.FixedDraws(k) as draws:
                fixed["draws"] = draws
                harness.seed_all(seed)
                stack, label = data[0]
            ref = golden["mvtec_online_fixed_draws"][f"{what}_seed{seed}"]
            assert label == -1 and stack.shape == (2, 3, 224, 224)
            assert draws.trace == ["confetti", "crop/resize", "jitter", "noise", "normalise"]
            assert float(draws.captured.double().sum()) == pytest.approx(ref["sum"], rel=1e-6)
            np.testing.assert_allclose(draws.captured.flatten()[::9973][:16].numpy(), ref["head"], atol=1e-6)


def test_relative_noise_draws_the_field_then_the_numpy_coin():
    x = torch.rand(3, 8, 8)
    torch.manual_seed(4)
    np.random.seed(4)
    out = RelativeNoise(0.1)(x)
    torch.manual_seed(4)
    np.random.seed(4)
    field, on = torch.randn_like(x), np.random.randint(0, 2)
    torch.testing.assert_close(out, (x + field * on * x.std() * 0.1).clamp(0, 1))


# ------------------------------------------------------------------------------------ 4. offline supervisor
def test_offline_rule_matches_the_published_offline_supervisor(golden):
    g = torch.Generator().manual_seed(6)
    imgs = torch.randint(0, 256, (4, 3, 40, 40), generator=g, dtype=torch.uint8)
    noise = confetti_noise((4, 3, 40, 40), g, side_range=(4, 12), prob=2e-3, prob_dark=1e-3)
    out, changed = apply_offline(imgs.float(), noise.float())
    assert float(out.double().sum()) == golden["offline_malformed_normal"]["sum"]
    assert float(changed.sum()) == golden["offline_malformed_normal"]["changed"]
    # by hand: the noise is subtracted at bright pixels, added at dark ones
    img = torch.tensor([[[[10.0, 200.0]]]])
    out, _ = apply_offline(img, torch.tensor([[[[30.0, 30.0]]]]))
    assert out.flatten().tolist() == [40.0, 170.0]


def test_offline_set_holds_each_image_and_one_fixed_anomaly_of_it():
    pre = {"image_size": 24, "resize": 24, "raw_size": 32, "train_crop": "choice", "mean": [0.5] * 3,
           "std": [0.5] * 3, "interpolation": "nearest"}
    imgs = torch.randint(0, 256, (3, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    src = Confetti(supervisor="offline", side_range=[4, 8], prob=5e-3, prob_dark=2e-3)
    data = DatasetSupervision(parity_script("fcdd").StoredImages(imgs), src, pre, seed=3)
    assert len(data) == 6 and data.labels().tolist() == [0, 0, 0, -1, -1, -1]
    img = data.dataset[1][0]
    a1, _ = data.anomaly(img, seeded(3, 1))
    a2, _ = data.anomaly(img, seeded(3, 1))
    a3, _ = data.anomaly(img, seeded(3, 2))
    assert np.array_equal(np.asarray(a1), np.asarray(a2))  # the same anomaly every epoch
    assert not np.array_equal(np.asarray(a1), np.asarray(a3))
    for i in range(6):
        stack, label = data[i]
        assert stack.shape == (2, 3, 24, 24) and label == (-1 if i >= 3 else 0)
        assert stack[1].unique().tolist() == ([1.0] if i >= 3 else [0.0])  # FCDD's map: all ones / zeros


def test_dataset_side_anomalies_train_without_engine_draws():
    """A dataset-side source is never drawn by the engine; the trainer reads labels (-1 = anomaly) and maps
    from the stacked items."""
    pre = {"image_size": 28, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}
    imgs = torch.randint(0, 256, (8, 3, 28, 28), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    src = FCDDNoise(noise="mixed_blob", mode="malformed_normal", supervisor="online")
    src.setup(SourceContext(SimpleNamespace(preprocessor=pre), torch.device("cpu"), 0, 8, 2))
    src.draw = lambda batch: pytest.fail("the engine drew from a dataset-side source")
    tr = FCDDTrainer(supervise_mode="malformed_normal", gt_path=True, epoch_repeats=2)
    data = tr.train_dataset(parity_script("fcdd").StoredImages(imgs), pre, src, 0)
    assert len(data) == 16 and tr.train_dataset_change(src) == "trainer.epoch_repeats: 2"
    loader = torch.utils.data.DataLoader(data, batch_size=8, collate_fn=SkipCounter())
    from openood_ext.networks.fcdd import FCDDCNN28
    torch.manual_seed(0)
    net = FCDDCNN28(in_channels=3, image_size=28)
    settings = EngineSettings.from_config({"epochs": 1, "optimizer": {"name": "sgd", "lr": 0.01}, "scheduler": "constant"})
    eng = Engine(tr, net, loader, settings, num_classes=1, source=src)
    record = eng.run_epoch(0)
    assert 0 < record["frac_anomalous"] < 1 and math.isfinite(record["loss"])
    x = torch.stack([data[i][0] for i in range(4)])
    labels = data.labels()[:4].clone()
    images, lab, gt = tr.supervised_batch(Batch(x, labels, None, 0, 0, 0))
    assert images.shape == (4, 3, 28, 28) and gt.shape == (4, 1, 28, 28)


# ------------------------------------------------------------------------------------ 3. mixed_blob
@pytest.mark.slow  # 120 px blob maps: about 10 s on a shared CPU
def test_mixed_blob_matches_the_published_statistics(harness, golden):
    """Covered fraction, mean non-zero value and fraction above 255 of the published mixed_blob noise
    (golden: 200 images of 120 px) against ours (60 images; |z| < 3.5 on the combined standard error)."""
    ref = golden["mixed_blob"]
    ours = harness.mixed_blob_stats(fcdd_noise("mixed_blob", (60, 3, 120, 120), torch.Generator().manual_seed(7)))
    for key in ("covered", "mean_value", "over_255"):
        z = (ours[key][0] - ref[key][0]) / math.hypot(ours[key][1], ref[key][1])
        assert abs(z) < 3.5, (key, ours[key], ref[key])


def test_mixed_blob_is_a_coloured_and_a_white_square_component():
    noise = fcdd_noise("mixed_blob", (4, 3, 64, 64), torch.Generator().manual_seed(0))
    assert noise.min() >= 0 and noise.max() <= 510
    for n in noise:
        on = n.amax(0) > 0
        assert on.any()
        white = (n >= 255).all(0)  # the white squares: 255 in every channel (plus a colour where overlapping)
        coloured = on & ~white
        assert white.any()
        if coloured.sum() > 50:  # independent colours per pixel and channel, not one colour per square
            assert len(torch.unique(n[:, coloured], dim=1).T) > 10


def test_mixed_blob_source_replaces_or_corrupts_the_image():
    raw = torch.full((2, 3, 50, 50), 100.0)
    src = FCDDNoise(noise="mixed_blob", mode="noise")
    out, changed = src.corrupt255(raw, torch.Generator().manual_seed(0))
    assert out.max() <= 255 and changed.all()
    src = FCDDNoise(noise="mixed_blob", mode="malformed_normal")
    out, changed = src.corrupt255(raw, torch.Generator().manual_seed(0))
    assert (out != raw).any() and ((out != raw).any(1, keepdim=True) == changed.bool()).all()


def test_confetti_with_a_supervisor_is_refused_when_unknown():
    from openood_ext.errors import ConfigError
    from openood_ext.synthesizers import OUTLIER_SOURCES
    with pytest.raises(ConfigError, match="supervisor"):
        OUTLIER_SOURCES.build({"name": "confetti", "supervisor": "before"})


def test_stored_image_keeps_a_pil_image_at_the_stored_size():
    from openood_ext.synthesizers.supervisor import StoredImage
    img = Image.fromarray(np.zeros((300, 280, 3), np.uint8))
    assert StoredImage(240)(img).size == (240, 240) and StoredImage(None)(img) is img


def test_a_dataset_side_source_needs_a_trainer_that_reads_it():
    from openood_ext.errors import ConfigError
    from openood_ext.trainers import validate_trainer_config
    spec = {"name": "oe", "epochs": 1, "outliers": {"name": "confetti", "supervisor": "online"}}
    with pytest.raises(ConfigError, match="supervisor: online makes the anomalies in the training set"):
        validate_trainer_config(spec)
    validate_trainer_config({"name": "fcdd", "epochs": 1, "outliers": {"name": "confetti", "supervisor": "offline"}})


# ------------------------------------------------------------------------------------ 4. online on the tensor path
def stored_set(n: int = 6, channels: int = 3, size: int = 32, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def plain_pre(channels: int = 3, size: int = 32, augment=()) -> dict:
    return {"image_size": size, "resize": size, "channels": channels, "mean": [0.4] * channels,
            "std": [0.3] * channels, "train_augment": list(augment), "crop_padding": 4}


def test_tensor_online_equals_the_per_image_online_supervisor_for_fixed_draws():
    """Same stored images, the same anomalies (fixed noise), every image replaced: the tensor path's batch
    (anomaly on the raw uint8 batch, then the batched transform) equals the per-image path's items."""
    from openood_ext.datasets.tensor_recipe import tensor_pipeline
    from openood_ext.synthesizers.supervisor import RawBatchSupervision
    imgs, pre = stored_set(), plain_pre()
    fixed = torch.randint(-300, 300, (1, 3, 32, 32), generator=torch.Generator().manual_seed(4)).float()
    for mode in ("noise", "malformed_normal"):
        src = Confetti(mode=mode, supervisor="online")
        src.noise255 = lambda shape, generator: fixed.expand(shape[0], -1, -1, -1).clone()
        per_image = DatasetSupervision(parity_script("fcdd").StoredImages(imgs), src, pre, p=1.0)
        items = [per_image[i] for i in range(len(imgs))]
        raw, marked = RawBatchSupervision(src, p=1.0)(imgs, torch.Generator().manual_seed(0))
        batch = tensor_pipeline(pre, train=True)(raw, torch.Generator())
        assert marked.all() and all(label == -1 for _, label in items)
        assert torch.equal(batch, torch.stack([x[0] for x, _ in items])), mode


def test_tensor_online_anomalies_replace_with_probability_p_and_are_labelled():
    from openood_ext.synthesizers.supervisor import RawBatchSupervision
    src = FCDDNoise(noise="uniform", mode="noise", supervisor="online")
    imgs = stored_set(n=4000, channels=1, size=4)
    stage = RawBatchSupervision(src, p=0.5)
    raw, marked = stage(imgs, torch.Generator().manual_seed(1))
    rate, n = float(marked.float().mean()), len(imgs)
    assert abs(rate - 0.5) < 4 * math.sqrt(0.25 / n)  # binomial: 4 standard errors
    assert torch.equal(raw[~marked], imgs[~marked])  # the normal images untouched
    assert (raw[marked] != imgs[marked]).flatten(1).any(1).all()  # each anomaly is new noise
    again, marked2 = stage(imgs, torch.Generator().manual_seed(1))
    assert torch.equal(again, raw) and torch.equal(marked, marked2)  # one seeded stream


def test_tensor_online_anomalies_pass_through_the_crop():
    """Made before the augmentation: the zero padding of the random crop shows on the (uniform-noise)
    anomalies, as on FCDD's stored anomalies; anomalies made after the crop would have no zero border."""
    from openood_ext.datasets.decoded_cache import DecodedImages
    from openood_ext.datasets.tensor_recipe import tensor_pipeline
    from openood_ext.datasets.batch_source import TensorBatchSource
    from openood_ext.synthesizers.supervisor import RawBatchSupervision
    pre = plain_pre(channels=3, size=16, augment=["random_crop"])
    imgs = torch.full((64, 3, 16, 16), 200, dtype=torch.uint8)
    source = TensorBatchSource(DecodedImages(imgs, torch.full((64,), 7)), tensor_pipeline(pre, train=True), 64, 0)
    source.raw_stage = RawBatchSupervision(FCDDNoise(noise="uniform", mode="noise", supervisor="online"), p=0.5)
    x, labels, _ = next(iter(source))
    pixels = x * 0.3 + 0.4
    zero_border = (pixels.abs() < 1e-6).all(1).flatten(1).any(1)
    anomalous = labels < 0
    assert set(labels.tolist()) == {-1, 7} and zero_border[anomalous].float().mean() > 0.5
    normal = pixels[~anomalous]
    assert torch.all((normal.abs() < 1e-6) | ((normal - 200 / 255).abs() < 1e-6))  # normals: image or padding


def test_tensor_online_trains_through_the_engine_without_engine_draws():
    from openood_ext.datasets.decoded_cache import DecodedImages
    from openood_ext.datasets.tensor_recipe import tensor_pipeline
    from openood_ext.datasets.batch_source import TensorBatchSource
    from openood_ext.networks.fcdd import FCDDCNN28
    pre = plain_pre(channels=1, size=28, augment=["random_crop", "hflip"])
    src = Confetti(mode="noise", supervisor="online")
    src.setup(SourceContext(SimpleNamespace(preprocessor=pre), torch.device("cpu"), 0, 16, 2))
    src.draw = lambda batch: pytest.fail("the engine drew from a dataset-side source")
    tr = FCDDTrainer(supervise_mode="noise", gt_path=True)
    assert tr.train_dataset_change(src) is None  # the tensor path can run it
    source = TensorBatchSource(DecodedImages(stored_set(32, 1, 28), torch.zeros(32, dtype=torch.long)),
                               tensor_pipeline(pre, train=True), 16, 0)
    source.raw_stage = tr.raw_batch_stage(src)
    torch.manual_seed(0)
    net = FCDDCNN28(in_channels=1, image_size=28)
    settings = EngineSettings.from_config({"epochs": 1, "optimizer": {"name": "sgd", "lr": 0.01}, "scheduler": "constant"})
    record = Engine(tr, net, source, settings, num_classes=1, source=src).run_epoch(0)
    assert 0 < record["frac_anomalous"] < 1 and math.isfinite(record["loss"])
    x = torch.zeros(3, 1, 28, 28)
    images, labels, gt = tr.supervised_batch(Batch(x, torch.tensor([-1, 0, -1]), None, 0, 0, 0))
    assert labels.tolist() == [1, 0, 1] and gt.shape == (3, 1, 28, 28)
    assert gt.flatten(1).amin(1).tolist() == [1, 0, 1] and gt.flatten(1).amax(1).tolist() == [1, 0, 1]


def test_what_keeps_dataset_side_supervision_on_the_per_image_path():
    tr = FCDDTrainer(supervise_mode="malformed_normal")
    assert tr.train_dataset_change(Confetti(supervisor="online")) is None
    assert tr.train_dataset_change(Confetti(supervisor="batch")) is None
    assert "offline" in tr.train_dataset_change(Confetti(supervisor="offline"))
    gt = FCDDTrainer(supervise_mode="malformed_normal_gt")
    assert "changed-pixel maps" in gt.train_dataset_change(Confetti(supervisor="online"))
    assert tr.raw_batch_stage(Confetti(supervisor="batch")) is None


@pytest.mark.parametrize("config", ["ad_cifar10_fcdd", "ad_fmnist_fcdd", "ad_fmnist_hsc"])
def test_cifar10_and_fmnist_recipes_use_the_published_position_on_the_tensor_backend(config):
    from openood_ext.config import load_config, to_plain
    from openood_ext.synthesizers import OUTLIER_SOURCES
    from openood_ext.synthesizers.supervisor import RawBatchSupervision
    from openood_ext.trainers import TRAINERS, split_trainer_config
    from openood_ext.trainers.data import tensor_backend_obstacle
    cfg = load_config([f"configs/experiments/fcdd/{config}.yml"])
    settings, method = split_trainer_config(to_plain(cfg.trainer))
    trainer, source = TRAINERS.build(method), OUTLIER_SOURCES.build(dict(settings.outliers))
    bench = SimpleNamespace(preprocessor=to_plain(cfg.benchmark.preprocessor))
    assert source.supervisor == "online" and tensor_backend_obstacle(bench, trainer, source) is None
    assert isinstance(trainer.raw_batch_stage(source), RawBatchSupervision)


def test_oe_images_online_replace_with_the_outlier_stored_as_the_id_images(tmp_path):
    """FCDD's OnlineSupervisor with an OE set: the outlier image, stored as the ID images are (grey, 28 px,
    uint8), replaces the training image before the transform, on either data path."""
    from openood_ext.synthesizers.oe_images import OEImages
    from openood_ext.synthesizers.supervisor import RawBatchSupervision
    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / f"o{i}.png")
        files.append(arr)
    pre = plain_pre(channels=1, size=28)
    bench = SimpleNamespace(preprocessor=pre, data_root=tmp_path, on_bad_image="error", name="fmnist")
    src = OEImages(folder=str(tmp_path), supervisor="online")
    src.setup(SourceContext(bench, torch.device("cpu"), 0, 4, 2))
    src.check()
    expected = torch.stack([torch.from_numpy(np.array(Image.fromarray(a).convert("L").resize((28, 28), Image.BILINEAR)))
                            for a in files])[:, None]
    assert torch.equal(src.stored_pool(), expected)
    imgs = stored_set(8, 1, 28)
    raw, marked = RawBatchSupervision(src, p=1.0)(imgs, torch.Generator().manual_seed(0))
    assert marked.all() and all(any(torch.equal(r, e) for e in expected) for r in raw)
    class GreyImages(torch.utils.data.Dataset):
        transform = None

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return self.transform(Image.fromarray(imgs[i, 0].numpy(), mode="L")), 0

        def labels(self):
            return torch.zeros(2, dtype=torch.long)
    x, label = DatasetSupervision(GreyImages(), src, pre, p=1.0)[0]
    pixels = torch.round((x[0] * 0.3 + 0.4) * 255).to(torch.uint8)
    assert label == -1 and any(torch.equal(pixels, e) for e in expected)
    from openood_ext.errors import ConfigError
    from openood_ext.synthesizers import OUTLIER_SOURCES
    with pytest.raises(ConfigError, match="supervisor"):  # no offline set of outlier images
        OUTLIER_SOURCES.build({"name": "oe_images", "folder": str(tmp_path), "supervisor": "offline"})


@pytest.mark.parametrize("name,config", [("F-MNIST", "ad_fmnist_fcdd"), ("CIFAR-10", "ad_cifar10_fcdd")])
def test_small_online_anomaly_equals_the_published_supervisors(harness, golden, name, config):
    """The harness's fixed inputs through our recipe's tensor-path stage give the stored anomalies and
    labels FCDD's ADFMNIST/ADCIFAR10 online supervisor handed to its training transform."""
    import shutil
    root, fm, cf = harness.fake_small_roots()
    shutil.rmtree(root)
    normals = fm[:, None] if name == "F-MNIST" else cf
    stage, _, obstacle = harness.small_ours(config)
    stage.p = 1.0
    stored, marked = stage(normals, torch.Generator().manual_seed(0))
    want = golden["small_online_stored"][name]
    assert obstacle is None and float(stored.double().sum()) == want["sum"]
    assert [1 if m else 0 for m in marked.tolist()] == want["targets"]


# ------------------------------------------------------------------------------------ 5. wiring and resume
def tiny_bench(tmp_path, augment):
    from openood_ext.datasets import Benchmark
    random_png_list(tmp_path, 20, classes=1)
    pre = {"image_size": 8, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3, "train_augment": augment,
           "crop_padding": 2}
    return Benchmark(num_classes=1, id={"train": "list.txt", "val": "list.txt", "test": "list.txt"},
                     imglist_dir=str(tmp_path), data_root=str(tmp_path), preprocessor=pre, oe="list.txt")


def tensor_run(bench, tmp_path, epochs, resume=False):
    """A tiny online-supervised run (OE images replacing training images) on the tensor backend."""
    import torch.nn.functional as F
    from torch import nn

    from openood_ext.datasets.batch_source import TensorBatchSource
    from openood_ext.datasets.data_settings import DataSettings
    from openood_ext.synthesizers.oe_images import OEImages
    from openood_ext.trainers import split_trainer_config
    from openood_ext.trainers.data import build_train_loader
    from openood_ext.trainers.fcdd import OnlineSupervision

    class TinySupervised(OnlineSupervision):
        def training_step(self, batch):
            images, labels, _ = self.supervised_batch(batch)
            return {"loss": F.binary_cross_entropy_with_logits(self.net(images).squeeze(1), labels.float())}

    trainer, data = TinySupervised(), DataSettings(backend="tensor", cache_dir=str(tmp_path / "cache"))
    src = OEImages(split="oe", supervisor="online")
    src.setup(SourceContext(bench, torch.device("cpu"), 4, 6, 4))
    src.check()
    loader = build_train_loader(bench, trainer, 6, seed=4, data=data, source=src)
    assert isinstance(loader, TensorBatchSource) and loader.raw_stage is not None
    assert src.use_tensor_path(data, "cpu", None)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 1))
    settings = split_trainer_config({"name": "x", "epochs": epochs, "batch_size": 6, "scheduler": {"name": "constant"},
                                     "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}})[0]
    engine = Engine(trainer, net, loader, settings, num_classes=1, source=src, state_path=tmp_path / "last.pt")
    engine.fit(resume=resume)
    return net, loader, src


def test_tensor_backend_wires_the_online_stage_and_replaces_with_stored_outliers(tmp_path):
    bench = tiny_bench(tmp_path, [])
    _, loader, src = tensor_run(bench, tmp_path, 1)
    x, labels, _ = next(iter(loader))
    assert 0 < int((labels < 0).sum()) < len(labels)
    pool = (src.stored_pool().float() / 255 - 0.5) / 0.25  # the stored outliers, normalised as ID images
    for image in x[labels < 0]:
        assert any(torch.equal(image, p) for p in pool)


def test_tensor_online_training_resumes_bit_identically(tmp_path):
    """The replacement and anomaly draws come from the batch source's generator, which the engine saves:
    two epochs equal one epoch and a resumed second."""
    bench = tiny_bench(tmp_path, ["random_crop", "hflip"])
    straight, _, _ = tensor_run(bench, tmp_path / "a", 2)
    tensor_run(bench, tmp_path / "b", 1)
    resumed, _, _ = tensor_run(bench, tmp_path / "b", 2, resume=True)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


# ------------------------------------------------------------------------------------ 6. large outlier images
def large_oe_folder(tmp_path, sizes=((96, 72), (70, 110), (120, 80))) -> list[Path]:
    """JPEGs larger than data.max_side (64), of different aspect ratios (width, height)."""
    rng = np.random.default_rng(5)
    paths = []
    for i, (w, h) in enumerate(sizes):
        paths.append(tmp_path / f"oe{i}.jpg")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1], quality=90)
    return paths


def large_source(folder, pre, on_bad_image="error", **kw):
    from openood_ext.synthesizers.oe_images import OEImages
    bench = SimpleNamespace(preprocessor=pre, data_root=folder, on_bad_image=on_bad_image, name="imagenet30")
    src = OEImages(folder=str(folder), supervisor="online", **kw)
    src.setup(SourceContext(bench, torch.device("cpu"), 0, 4, 2))
    src.check()
    return src


def shorter_side(path: Path, size: int) -> np.ndarray:
    """The file in RGB, its shorter side resized to ``size`` by PIL bilinear (FCDD's OEImageNet22k Resize)."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        return np.asarray(img.resize(new, Image.BILINEAR))


IN30_PRE = {"image_size": 64, "resize": 72, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3,
            "train_crop": "random", "train_augment": ["hflip"]}


def test_oe_images_online_reads_one_large_image_per_replacement_at_the_published_stored_size(tmp_path):
    """A pool of images larger than data.max_side is not decoded: each replacement reads its drawn file and
    stores it as FCDD's ImageNet-22k outliers (RGB, shorter side to the recipe's resize, aspect kept, uint8)."""
    paths = large_oe_folder(tmp_path)
    src = large_source(tmp_path, IN30_PRE)
    assert src.stored_pool() is None and src.reads_per_image and src._stored is None
    expected = [shorter_side(p, 72) for p in paths]
    drawn = [np.asarray(src.stored_outlier(torch.Generator().manual_seed(s))) for s in range(12)]
    assert all(any(d.shape == e.shape and np.array_equal(d, e) for e in expected) for d in drawn)
    assert len({d.shape for d in drawn}) > 1  # several files drawn, each at its own aspect ratio
    assert "one image read per replacement" in src.describe()

    class Files(torch.utils.data.Dataset):  # ID images at their file sizes (the recipe has no raw_size)
        transform = None

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return self.transform(Image.new("RGB", (90 + i, 75), (10, 20, 30))), 3

        def labels(self):
            return torch.full((2,), 3, dtype=torch.long)
    data = DatasetSupervision(Files(), src, IN30_PRE, p=1.0)
    img, mask = data.anomaly(Image.new("RGB", (90, 75)), torch.Generator().manual_seed(0))
    assert img.mode == "RGB" and mask.size == img.size and np.asarray(mask).min() == 255
    Files.__getitem__ = lambda self, i: pytest.fail("a replaced training image was read")  # FCDD skips it too
    stack, label = data[0]
    assert stack.shape == (2, 3, 64, 64) and label == -1 and stack[1].unique().tolist() == [1.0]


def test_large_outlier_images_on_the_tensor_path_take_the_id_geometry(tmp_path):
    """On a raw decoded batch (stored as Resize + CentreCrop) each read outlier is centre-cropped alike."""
    import torchvision.transforms as T

    from openood_ext.synthesizers.supervisor import RawBatchSupervision
    paths = large_oe_folder(tmp_path)
    src = large_source(tmp_path, IN30_PRE)
    expected = [np.asarray(T.CenterCrop(64)(Image.fromarray(shorter_side(p, 72)))).transpose(2, 0, 1) for p in paths]
    raw, marked = RawBatchSupervision(src, p=1.0)(stored_set(4, 3, 64), torch.Generator().manual_seed(1))
    assert marked.all() and all(any(np.array_equal(r.numpy(), e) for e in expected) for r in raw)


def test_large_pool_unreadable_images_follow_on_bad_image(tmp_path):
    from openood_ext.errors import DataError
    large_oe_folder(tmp_path, sizes=((96, 72),))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    good = shorter_side(tmp_path / "oe0.jpg", 72)
    skip = large_source(tmp_path, IN30_PRE, on_bad_image="skip")
    assert skip.stored_pool() is None  # the pool is not decoded, so the broken file is met only when drawn
    for s in range(8):  # the broken image is drawn again instead
        assert np.array_equal(np.asarray(skip.stored_outlier(torch.Generator().manual_seed(s))), good)
    strict = large_source(tmp_path, IN30_PRE)
    strict.pool = np.array([0])  # sorted: broken.jpg first
    assert strict.stored_pool() is None  # the recipe's stored size (72) exceeds max_side: nothing decoded
    with pytest.raises(DataError, match="broken.jpg"):
        strict.stored_outlier(None)
    skip.pool = np.array([0])
    with pytest.raises(DataError, match="unreadable images drawn in a row"):
        skip.stored_outlier(None)


def test_data_max_side_decides_whether_the_pool_is_held_decoded(tmp_path):
    from openood_ext.datasets.data_settings import DataSettings
    large_oe_folder(tmp_path)
    src = large_source(tmp_path, IN30_PRE)
    src.use_data_settings(DataSettings(max_side=512))
    pool = src.stored_pool()
    assert not src.reads_per_image and pool.shape == (3, 3, 64, 64) and pool.dtype == torch.uint8


def test_resize_in_rgb_takes_the_published_oecifar100_order(tmp_path):
    """``resize_in_rgb``: FCDD's OECifar100 (Resize in RGB, then Grayscale, then x255 to uint8) for a grey
    ID recipe; the default makes the image grey first, as the ID images."""
    rng = np.random.default_rng(2)
    arrs = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    for i, a in enumerate(arrs):
        Image.fromarray(a).save(tmp_path / f"o{i}.png")
    pre = plain_pre(channels=1, size=28)
    published = np.stack([np.asarray(Image.fromarray(a).resize((28, 28), Image.BILINEAR).convert("L"))
                          for a in arrs])[:, None]
    rgb = large_source(tmp_path, pre, resize_in_rgb=True).stored_pool()
    grey = large_source(tmp_path, pre).stored_pool()
    assert np.array_equal(rgb.numpy(), published) and not torch.equal(rgb, grey)


def test_fmnist_outlier_stored_as_the_published_oecifar100(harness, golden, tmp_path):
    """The harness's CIFAR-100 stand-in images through ``ad_fmnist_fcdd.yml``'s source give the stored
    outliers FCDD's OECifar100 gave (resized in RGB, then grey)."""
    _, images = harness.oe_fixed_inputs()
    for i, arr in enumerate(images):
        Image.fromarray(arr.transpose(1, 2, 0)).save(tmp_path / f"{i}.png")
    src = harness.our_oe_source("ad_fmnist_fcdd", tmp_path)
    want = golden["oecifar100_stored"]
    assert src.resize_in_rgb and want["n"] == len(images)
    assert float(src.stored_pool().double().sum()) == want["sum"]


@pytest.mark.parametrize("max_side,reads", [(64, True), (512, False)])
def test_training_loader_hands_data_max_side_to_the_outlier_pool(tmp_path, max_side, reads):
    """Through build_train_loader (per-image path): data.max_side decides whether the pool is decoded."""
    from openood_ext.datasets.data_settings import DataSettings
    from openood_ext.synthesizers.oe_images import OEImages
    from openood_ext.trainers.data import build_train_loader
    bench = tiny_bench(tmp_path, ["hflip"])
    (tmp_path / "oe").mkdir()
    large_oe_folder(tmp_path / "oe")
    src = OEImages(folder=str(tmp_path / "oe"), supervisor="online")
    src.setup(SourceContext(bench, torch.device("cpu"), 0, 10, 2))
    src.check()
    loader = build_train_loader(bench, FCDDTrainer(), 10, seed=0, data=DataSettings(backend="pil", max_side=max_side),
                                source=src)
    import random
    random.seed(0)  # FCDD's replacement coin (Python's RNG, in the loading process)
    x, labels = next(iter(loader))[:2]
    assert src.reads_per_image == reads and x.shape == (10, 2, 3, 8, 8) and 0 < int((labels < 0).sum()) < 10
