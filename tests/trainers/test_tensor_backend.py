"""The tensor data backend inside training: the engine resumes a tensor-backed run bit-identically (the
batch source's generator is in the training state), and outlier-exposure images drawn from the decoded
cache equal the per-image path's (no augmentation) and repeat with the seed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from openood_ext.datasets import Benchmark
from openood_ext.datasets.batch_source import TensorBatchSource
from openood_ext.datasets.data_settings import DataSettings
from openood_ext.synthesizers import SourceContext
from openood_ext.synthesizers.oe_images import OEImages
from openood_ext.trainers import Engine, Trainer, split_trainer_config
from openood_ext.trainers.data import build_train_loader
from data_helpers import random_png_list

PRE = {"image_size": 8, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3,
       "train_augment": ["random_crop", "hflip", "color_jitter", "gaussian_noise"], "crop_padding": 2, "jitter": 0.2}


@pytest.fixture
def bench(tmp_path):
    random_png_list(tmp_path, 20)
    return Benchmark(num_classes=3, id={"train": "list.txt", "val": "list.txt", "test": "list.txt"},
                     imglist_dir=str(tmp_path), data_root=str(tmp_path), preprocessor=PRE, oe="list.txt")


class PlainCE(Trainer):
    def training_step(self, batch):
        return {"loss": F.cross_entropy(self.net(batch.images), batch.labels)}


def settings(epochs):
    return split_trainer_config({"name": "x", "epochs": epochs, "batch_size": 6, "scheduler": {"name": "constant"},
                                 "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}})[0]


def train(bench, tmp_path, epochs, resume=False):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    data = DataSettings(backend="tensor", cache_dir=str(tmp_path / "cache"))
    source = build_train_loader(bench, PlainCE(), 6, seed=4, data=data)
    assert isinstance(source, TensorBatchSource)
    engine = Engine(PlainCE(), net, source, settings(epochs), num_classes=3, state_path=tmp_path / "last.pt")
    engine.fit(resume=resume)
    return net


def test_resumed_tensor_backed_training_is_bit_identical(bench, tmp_path):
    straight = train(bench, tmp_path / "a", 3)
    train(bench, tmp_path / "b", 1)
    resumed = train(bench, tmp_path / "b", 3, resume=True)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def oe_source(bench, augment, tensor, tmp_path):
    source = OEImages(augment=augment, batch_size=5)
    source.setup(SourceContext(bench, torch.device("cpu"), seed=2, batch_size=5, steps_per_epoch=3))
    source.check()
    if tensor:
        assert source.use_tensor_path(DataSettings(cache_dir=str(tmp_path / "cache")), "cpu", None)
    return source


def draws(source, epoch=0):
    source.on_epoch_start(epoch)
    return [source.draw(None) for _ in range(3)]


def test_oe_images_from_the_cache_equal_the_per_image_path_without_augmentation(bench, tmp_path):
    pil = draws(oe_source(bench, False, False, tmp_path))
    tensor = draws(oe_source(bench, False, True, tmp_path))
    for a, b in zip(pil, tensor, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_augmented_oe_images_repeat_per_seed_and_epoch(bench, tmp_path):
    a, b = oe_source(bench, True, True, tmp_path), oe_source(bench, True, True, tmp_path)
    first = draws(a, 1)
    assert all(torch.equal(x, y) for x, y in zip(first, draws(b, 1)))
    assert not torch.equal(first[0], draws(a, 2)[0])


def test_eoe_fourier_filter_on_training_batches_equals_the_per_image_filter(bench, tmp_path):
    from openood_ext.pipelines.ad.data import adapt_benchmark
    bench.preprocessor = {**PRE, "train_augment": [], "ms_mode": {"mode": "lpf", "magnitude": 2, "parts": ["train_nominal"]}}
    adapt_benchmark(bench)
    pil = build_train_loader(bench, PlainCE(), 6, seed=1)
    tensor = build_train_loader(bench, PlainCE(), 6, seed=1,
                                data=DataSettings(backend="tensor", cache_dir=str(tmp_path / "cache")))
    assert isinstance(tensor, TensorBatchSource) and "FourierTransform" in repr(tensor.pipeline)
    for (x, y, _), (xt, yt, _) in zip(pil, tensor, strict=True):
        assert torch.equal(y, yt) and torch.allclose(x, xt, atol=1e-5)


def test_a_wrapped_dataset_without_batched_counterpart_keeps_the_pil_path(bench, tmp_path):
    plain = bench.dataset
    bench.dataset = lambda split, train=False: plain(split, train)  # some per-image wrapper
    assert not isinstance(build_train_loader(bench, PlainCE(), 6, seed=1, data=DataSettings(cache_dir=str(tmp_path))),
                          TensorBatchSource)


def test_a_trainers_batch_sampler_gives_the_same_batches_on_both_paths(bench, tmp_path):
    from openood_ext.trainers.vmdls_sampler import ClassBalancedBatchSampler

    class Balanced(PlainCE):
        def batch_sampler(self, labels, batch_size, seed):
            return ClassBalancedBatchSampler(labels, batch_classes=3, sample_count=2, seed=seed)

    no_aug = {**PRE, "train_augment": []}
    bench.preprocessor = no_aug
    pil = build_train_loader(bench, Balanced(), 6, seed=5)
    tensor = build_train_loader(bench, Balanced(), 6, seed=5,
                                data=DataSettings(backend="tensor", cache_dir=str(tmp_path / "cache")))
    assert isinstance(tensor, TensorBatchSource) and len(tensor) == len(pil)
    for (x, y, _), (xt, yt, _) in zip(pil, tensor, strict=True):
        assert torch.equal(y, yt) and torch.allclose(x, xt, atol=1e-6)


def test_npos_two_views_take_the_tensor_path_with_its_augmentation_rates(bench, tmp_path):
    from openood_ext.datasets import batch_transforms as bt
    from openood_ext.trainers import TRAINERS
    npos = TRAINERS.build({"name": "npos"})
    source = build_train_loader(bench, npos, 6, seed=2, data=DataSettings(cache_dir=str(tmp_path / "cache")))
    assert isinstance(source, TensorBatchSource) and isinstance(source.pipeline, bt.MultiView)
    x, y, _ = next(iter(source))
    assert x.shape == (6, 2, 3, 8, 8) and not torch.equal(x[:, 0], x[:, 1])  # two independent views
    # RandomApply's rate, as torchvision's RandomApply(p=0.8) / RandomGrayscale(p=0.2)
    apply = bt.RandomApply(bt.Grayscale(3), 0.2)
    img = torch.rand(4000, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    grey = (apply(img, torch.Generator().manual_seed(1)) != img).flatten(1).any(1)
    from scipy import stats
    assert stats.binomtest(int(grey.sum()), 4000, 0.2).pvalue > 1e-3


def test_short_last_id_batch_gets_as_many_outliers_on_the_tensor_path(bench, tmp_path):
    from types import SimpleNamespace
    source = oe_source(bench, True, True, tmp_path)
    source.batch_size = None  # default: pair the ID batch's size
    source.on_epoch_start(0)
    assert len(source.draw(SimpleNamespace(images=torch.zeros(3, 3, 8, 8), epoch=0))) == 3
