"""Large JPEG training images decoded a batch at a time (``decode_jpeg`` on a list; the CUDA path's calls,
run here with device='cpu'): the per-image path's shuffle order and, within JPEG/resize rounding, its
tensors; bad files reported as the per-image path reports them; the training loader picks the path
only for JPEG files on CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from openood_ext.datasets import Benchmark
from openood_ext.datasets.batch_source import TensorBatchSource
from openood_ext.datasets.data_settings import DataSettings
from openood_ext.datasets.jpeg_batches import JpegBatchSource, jpeg_obstacle
from openood_ext.datasets.tensor_recipe import geometry, tensor_pipeline
from openood_ext.errors import DataError
from openood_ext.trainers import Trainer
from openood_ext.trainers.data import build_train_loader

PRE = {"image_size": 36, "resize": 40, "channels": 3, "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3]}


def smooth_image(rng, w=56, h=48):
    """A photo-like image (smooth gradients plus mild noise): what JPEG is made for."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def jpegs(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    lines = []
    for i in range(10):
        size = (56, 48) if i % 2 else (48, 60)
        Image.fromarray(smooth_image(rng, *size)).save(tmp_path / "img" / f"{i}.jpg", quality=95)
        lines.append(f"img/{i}.jpg {i % 3}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def bench(root, **kw):
    return Benchmark(num_classes=3, id={"train": "list.txt", "val": "list.txt", "test": "list.txt"},
                     imglist_dir=str(root), data_root=str(root), preprocessor=PRE, **kw)


def pil_epoch(b, seed):
    loader = b.loader(b.split("id_train"), batch_size=4, train=True, seed=seed)  # no train_augment: eval geometry
    return [(x, y) for x, y, _ in loader]


def test_batched_decoding_follows_the_per_image_order_and_pixels(jpegs):
    b = bench(jpegs)
    ds = b.dataset(b.split("id_train"))
    source = JpegBatchSource(ds, geometry(PRE), tensor_pipeline(PRE, train=False), 4, seed=3, device="cpu")
    assert len(source) == 3
    got, want = [(x, y) for x, y, _ in source], pil_epoch(b, 3)
    assert [y.tolist() for _, y in got] == [y.tolist() for _, y in want]  # the same shuffle
    x, ref = torch.cat([x for x, _ in got]), torch.cat([x for x, _ in want])
    std = torch.tensor(PRE["std"]).view(1, 3, 1, 1)
    diff = ((x - ref) * std * 255).abs()  # in 1/255 pixel steps
    assert x.shape == ref.shape == (10, 3, 36, 36)
    # libjpeg on both sides; torch's antialiased resize vs PIL's (measured: mean 0.002, max 1.0)
    assert diff.mean() < 0.25 and diff.max() <= 2
    again = [(x, y) for x, y, _ in JpegBatchSource(ds, geometry(PRE), tensor_pipeline(PRE), 4, 3, "cpu")]
    assert all(torch.equal(a[0], c[0]) for a, c in zip(got, again))


def test_a_bad_file_is_reported_or_skipped_as_the_per_image_path_does(jpegs):
    (jpegs / "img" / "4.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (jpegs / "img" / "7.jpg").unlink()
    ds = bench(jpegs).dataset(bench(jpegs).split("id_train"))
    with pytest.raises(DataError, match=r"img/(4|7)\.jpg: (unreadable|missing) image.*list\.txt:(5|8)"):
        list(JpegBatchSource(ds, geometry(PRE), tensor_pipeline(PRE), 4, seed=0, device="cpu"))
    skip = bench(jpegs, on_bad_image="skip")
    ds = skip.dataset(skip.split("id_train"))
    batches = list(JpegBatchSource(ds, geometry(PRE), tensor_pipeline(PRE), 4, seed=0, device="cpu"))
    assert sum(s for _, _, s in batches) == 2 and sum(len(y) for _, y, _ in batches) == 8


def test_a_file_that_the_batched_decoder_rejects_is_read_by_pil(jpegs):
    Image.fromarray(smooth_image(np.random.default_rng(1))).save(jpegs / "img" / "2.jpg", format="PNG")
    b = bench(jpegs)
    ds = b.dataset(b.split("id_train"))
    got = torch.cat([x for x, _, _ in JpegBatchSource(ds, geometry(PRE), tensor_pipeline(PRE), 10, 3, "cpu")])
    ref = torch.cat([x for x, _ in pil_epoch(b, 3)])
    diff = ((got - ref) * torch.tensor(PRE["std"]).view(1, 3, 1, 1) * 255).abs()
    assert got.shape == ref.shape and diff.mean() < 0.25 and diff.max() <= 2


def test_the_training_loader_decodes_jpegs_in_batches_only_on_cuda(jpegs, tmp_path, caplog):
    b = bench(jpegs)
    ds = b.dataset(b.split("id_train"))
    assert "not training on CUDA" in jpeg_obstacle(ds, "cpu")
    assert jpeg_obstacle(ds, "cuda") is None and jpeg_obstacle(ds, torch.device("cuda", 1)) is None
    data = DataSettings(backend="auto", cache_dir=str(tmp_path / "cache"), max_side=32)  # 40 px resize: too large
    # built, not iterated: no CUDA here (the decode itself is the device='cpu' path tested above)
    source = build_train_loader(b, Trainer(), 4, seed=0, data=data, device="cuda")
    assert isinstance(source, JpegBatchSource) and source.device.type == "cuda" and len(source) == 3
    plain = build_train_loader(b, Trainer(), 4, seed=0, data=data, device="cpu")
    assert not isinstance(plain, (JpegBatchSource, TensorBatchSource))
    with pytest.raises(DataError, match="larger than data.max_side 32; not training on CUDA"):
        build_train_loader(b, Trainer(), 4, seed=0, data=DataSettings(backend="tensor", max_side=32), device="cpu")
    (jpegs / "list.txt").write_text((jpegs / "list.txt").read_text() + "img/x.png 0\n")
    assert "img/x.png (listed at" in jpeg_obstacle(b.dataset(b.split("id_train")), "cuda")


def test_the_engine_trains_from_it_and_a_resumed_run_repeats_its_batches(jpegs, tmp_path):
    """Shuffle and augmentation draw from the source's generator, saved with the training state."""
    import torch.nn.functional as F
    from torch import nn

    from openood_ext.trainers import Engine, split_trainer_config

    class PlainCE(Trainer):
        def training_step(self, batch):
            return {"loss": F.cross_entropy(self.net(batch.images), batch.labels)}

    pre = {**PRE, "train_augment": ["random_crop", "hflip", "color_jitter"], "crop_padding": 2, "jitter": 0.1}
    b = Benchmark(num_classes=3, id={"train": "list.txt", "val": "list.txt", "test": "list.txt"},
                  imglist_dir=str(jpegs), data_root=str(jpegs), preprocessor=pre)

    def train(run, epochs, resume=False):
        torch.manual_seed(0)
        net = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(3 * 16, 3))
        source = JpegBatchSource(b.dataset(b.split("id_train")), geometry(pre), tensor_pipeline(pre, train=True), 4,
                                 seed=1, device="cpu")
        settings = split_trainer_config({"name": "x", "epochs": epochs, "batch_size": 4, "scheduler": {"name": "constant"},
                                         "optimizer": {"name": "sgd", "lr": 0.1}})[0]
        Engine(PlainCE(), net, source, settings, num_classes=3, state_path=tmp_path / run / "last.pt").fit(resume=resume)
        return net

    straight = train("a", 3)
    train("b", 1)
    resumed = train("b", 3, resume=True)
    assert all(torch.equal(p, q) for p, q in zip(straight.parameters(), resumed.parameters()))
    assert not torch.equal(train("c", 1)[2].weight, straight[2].weight)  # the epochs did train
