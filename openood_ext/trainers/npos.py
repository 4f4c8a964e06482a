"""NPOS training (Tao, Du, Zhu & Li, ICLR 2023, "Non-Parametric Outlier Synthesis"; code
``deeplearning-wisc/npos`` ``training_from_scratch/train_CIFAR10.py``; OpenOOD v1.5 ``npos_trainer.py``).

Per step, on two augmented views of every image (``train_transform``; [B, V, C, H, W] -> V*B rows, view
after view as published):

* f = raw penultimate feature (``net.features``), z = ``net.project(f)`` (unit, 128-d);
* f (detached) is pushed to the class queues of the ``npos`` outlier source (``ctx.outliers``);
* prototypes mu_c (unit; registered state ``npos_prototypes``): for every sample in order,
  mu_y <- normalize(m mu_y + (1 - m) z_i) (m = ``proto_m``), with the autograd graph through this batch's
  updates; the stored copy is detached. Vectorised over classes (one update round per position within a
  class), which equals the per-sample loop since classes do not interact;
* L_comp = -(tau / base_tau) mean_i log softmax_c(z_i . mu_c.detach() / tau)[y_i]   (tau 0.1, base 0.07);
* L_disp = (tau / 0.1) mean_c log[ 1/(C-1) sum_{j != c} exp(mu_c . mu_j / tau) ] on the graph-carrying mu;
* R_open (from ``ctx.outliers.start_epoch`` on, once every queue is full) = BCE-with-logits, mean over
  [net.open_logit(f) for every ID row, label 1 (gradient reaches the encoder)] and [net.open_logit(o) for
  the synthesised raw outliers o, label 0 (constants: only the mlp learns from them)];
* loss = w_disp L_disp + w_comp L_comp + w_reg R_open (0.5, 1, 0.1). No cross-entropy (``fc`` is untrained).

Prototypes start as the normalised class means of z over the ID validation split with the freshly
initialised network (OpenOOD), ``prototype_init: val``; ``prototype_init: test`` averages over the ID
validation and test splits, i.e. the whole CIFAR test split as the paper's code does (its ``DispLoss`` is
handed the test loader: test images shape training, so this is a switch, not the default);
``prototype_init: batch`` initialises them from the first batch instead (no benchmark needed).

Batches: ``drop_last: true`` drops an epoch's short last batch (the paper's training loader; 50,000
CIFAR images in batches of 256 make 195 steps, not 196), in a seeded reshuffle per epoch; false (default,
OpenOOD's loader) keeps it.

Test time: KNN on normalised penultimate features (postprocessor ``npos`` = ``knn``; K = 300 in the paper).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torchvision import transforms as T

from ..datasets import batch_transforms as bt
from ..errors import ConfigError
from ..schema import NonNegativeFloat, PositiveFloat, PositiveInt, Range
from ..utils.runtime import full_precision, upcast
from .drop_last import DropLastBatchSampler
from .registry import TRAINERS
from .trainer import Trainer


class MultiView:
    """PIL image -> [views, C, H, W]: ``views`` independent draws of ``transform``."""

    def __init__(self, transform, views: int = 2):
        self.transform, self.views = transform, views

    def __call__(self, img):
        return torch.stack([self.transform(img) for _ in range(self.views)])


def npos_augment(pre: dict, crop_scale=(0.2, 1.0)):
    """NPOS/CIDER's augmentation: RandomResizedCrop(size, crop_scale), flip, ColorJitter(0.4, 0.4, 0.4,
    0.1) with p 0.8, grayscale with p 0.2, then the benchmark's normalisation."""
    size, channels = int(pre.get("image_size", 32)), int(pre.get("channels", 3))
    mean, std = list(pre.get("mean", [0.5] * channels)), list(pre.get("std", [0.5] * channels))
    return T.Compose([T.RandomResizedCrop(size, scale=tuple(crop_scale)), T.RandomHorizontalFlip(),
                      T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                      T.RandomGrayscale(p=0.2), T.ToTensor(), T.Normalize(mean, std)])


def npos_batch_augment(pre: dict, crop_scale=(0.2, 1.0)):
    """:func:`npos_augment` on whole batches (:mod:`openood_ext.datasets.batch_transforms`), the same
    parameter distributions. The crop acts on the decoded image at the benchmark's size (the per-image
    path crops the file's image: the same when the files have that size, as CIFAR's and digits' do)."""
    size, channels = int(pre.get("image_size", 32)), int(pre.get("channels", 3))
    mean, std = list(pre.get("mean", [0.5] * channels)), list(pre.get("std", [0.5] * channels))
    ops = [bt.ResizedCrop(size, scale=tuple(crop_scale)), bt.HFlip(),
           bt.RandomApply(bt.ColorJitter(0.4, 0.4, 0.4, 0.1), 0.8)]
    if channels == 3:  # RandomGrayscale keeps the channel count; a grey image stays grey
        ops.append(bt.RandomApply(bt.Grayscale(3), 0.2))
    return bt.BatchPipeline([*ops, bt.Normalize(mean, std)])


class PrototypeBank:
    """Unit class prototypes [C, H] (detached), with ``state_dict`` for resume; restored onto ``device``
    (the training device: a resumed ``prototype_init: batch`` run has no value yet to take it from)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.value: torch.Tensor | None = None
        self.device = torch.device(device)

    def state_dict(self) -> dict:
        return {"value": None if self.value is None else self.value.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("value") is not None:
            self.value = state["value"].to(self.device)


@full_precision
def ema_prototypes(prototypes: torch.Tensor, z: torch.Tensor, labels: torch.Tensor, m: float) -> torch.Tensor:
    """Sequential EMA mu_y <- normalize(m mu_y + (1 - m) z_i) over the rows of ``z`` [N, H] in order,
    starting from ``prototypes`` [C, H]; returns the updated prototypes, at least float32 (graph through ``z`` kept).

    Step t updates every class from its t-th row of the batch at once (classes are independent), with
    masks rather than index lists, so the only host read is the number of steps (the largest class count)."""
    C = prototypes.shape[0]
    z = upcast(z)
    onehot = F.one_hot(labels, C)
    rank = (onehot.cumsum(0) - 1).gather(1, labels[:, None]).squeeze(1)  # position of row i within its class
    onehot = onehot.to(z.dtype)
    mu = upcast(prototypes).to(z.dtype)
    for t in range(int(rank.max()) + 1 if len(rank) else 0):
        pick = onehot * (rank == t).to(z.dtype)[:, None]   # [N, C]: row i feeds class y_i at step t
        has = pick.sum(0)[:, None] > 0                      # [C, 1]: class has a t-th row
        mu = torch.where(has, F.normalize(m * mu + (1 - m) * (pick.T @ z), dim=1), mu)
    return mu


@full_precision  # cosine logits / 0.1 and their log-softmax in float32 under autocast
def compactness_loss(z, prototypes, labels, temperature: float = 0.1, base_temperature: float = 0.07):
    """-(tau / base_tau) mean_i log softmax(z_i . mu / tau)[y_i] (CIDER's CompLoss; mu as given)."""
    logits = upcast(z) @ upcast(prototypes).T / temperature
    return -(temperature / base_temperature) * logits.log_softmax(1).gather(1, labels[:, None]).mean()


@full_precision
def dispersion_loss(prototypes, temperature: float = 0.1, base_temperature: float = 0.1):
    """(tau / base_tau) mean_c log( mean_{j != c} exp(mu_c . mu_j / tau) ) (CIDER's DispLoss)."""
    prototypes = upcast(prototypes)
    C = prototypes.shape[0]
    if C < 2:
        return prototypes.sum() * 0
    logits = prototypes @ prototypes.T / temperature
    off = ~torch.eye(C, dtype=torch.bool, device=prototypes.device)
    lme = torch.logsumexp(logits.masked_fill(~off, float("-inf")), dim=1) - math.log(C - 1.0)
    return (temperature / base_temperature) * lme.mean()


def open_set_loss(id_logits: torch.Tensor, out_logits: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits, mean over the concatenation [ID (label 1); outliers (label 0)]."""
    logits = torch.cat([id_logits, out_logits])
    target = torch.cat([torch.ones_like(id_logits), torch.zeros_like(out_logits)])
    return F.binary_cross_entropy_with_logits(logits, target)


@TRAINERS.register("npos")
class NPOSTrainer(Trainer):
    """NPOS (module docstring). Network: an ``NPOSNet`` (``npos_resnet18_32x32``, ``npos_resnet34_32x32``,
    ``npos_net``). Outliers: the ``npos`` source (default ``{name: npos}``; ``start_epoch`` lives there).

    Args: proto_m (0.95 CIFAR-10, 0.5 CIFAR-100), temperature (0.1), base_temperature (0.07, the L_comp
    scale is temperature / base_temperature), w_disp / w_comp / w_reg (0.5 / 1 / 0.1), views (2),
    crop_min (0.2: RandomResizedCrop scale [crop_min, 1]), prototype_init (val | test | batch), drop_last
    (module docstring).
    """

    needs_outliers = "features"
    default_outliers = {"name": "npos"}

    def __init__(self, proto_m: Annotated[float, Range(0, 1, open_high=True)] = 0.95,
                 temperature: PositiveFloat = 0.1, base_temperature: PositiveFloat = 0.07,
                 w_disp: NonNegativeFloat = 0.5, w_comp: NonNegativeFloat = 1.0, w_reg: NonNegativeFloat = 0.1,
                 views: PositiveInt = 2, crop_min: Annotated[float, Range(0, 1, open_low=True)] = 0.2,
                 prototype_init: Literal["val", "test", "batch"] = "val", drop_last: bool = False):
        crop_scale = (float(crop_min), 1.0)
        self.proto_m, self.temperature, self.base_temperature = float(proto_m), float(temperature), float(base_temperature)
        self.w_disp, self.w_comp, self.w_reg = float(w_disp), float(w_comp), float(w_reg)
        self.views, self.crop_scale, self.prototype_init = views, crop_scale, prototype_init
        self.drop_last = drop_last

    # ------------------------------------------------------------------ setup
    def setup(self, net, ctx):
        super().setup(net, ctx)
        for attr in ("features", "project", "open_logit"):
            if not callable(getattr(net, attr, None)):
                raise ConfigError(f"trainer 'npos': network {type(net).__name__} has no {attr}(); use "
                                  f"npos_resnet18_32x32, npos_resnet34_32x32 or npos_net")
        source = ctx.outliers
        if source is None or not callable(getattr(source, "update", None)):
            raise ConfigError("trainer 'npos': needs the npos feature-space outlier source (trainer.outliers: "
                              "{name: npos, ...})")
        self.source = source
        self.prototypes = ctx.register_state("npos_prototypes", PrototypeBank(ctx.device))
        if self.prototype_init in ("val", "test") and ctx.benchmark is not None:
            self.prototypes.value = self._val_prototypes()

    @torch.no_grad()
    def _val_prototypes(self) -> torch.Tensor:
        bench, C = self.ctx.benchmark, self.ctx.num_classes
        splits = ("id_val",) if self.prototype_init == "val" else ("id_val", "id_test")
        loaders = [bench.loader(bench.split(name), batch_size=256, num_workers=0) for name in splits]
        was_training = self.net.training
        self.net.eval()
        sums, counts = None, torch.zeros(C, device=self.ctx.device)
        for data in (d for loader in loaders for d in loader):
            images, labels = data[0].to(self.ctx.device), data[1].to(self.ctx.device)
            if not len(images):
                continue
            z = self.net.project(self.net.features(images)).float()
            sums = torch.zeros(C, z.shape[1], device=z.device) if sums is None else sums
            sums.index_add_(0, labels, z)
            counts += torch.bincount(labels, minlength=C).float()
        self.net.train(was_training)
        if sums is None:
            raise ConfigError("trainer 'npos': the ID validation split is empty; use prototype_init: batch")
        missing = (counts == 0).nonzero().squeeze(1).tolist()
        if missing:
            self.ctx.log.warning("npos: classes %s have no validation image; their prototypes start at random", missing)
            gen = torch.Generator().manual_seed(self.ctx.seed)
            sums[missing] = torch.randn(len(missing), sums.shape[1], generator=gen).to(sums.device)
        return F.normalize(sums, dim=1)

    def train_transform(self, preprocessor):
        return MultiView(npos_augment(preprocessor, self.crop_scale), self.views)

    def batch_sampler(self, labels, batch_size, seed):
        return DropLastBatchSampler(len(labels), batch_size, seed) if self.drop_last else None

    def train_batch_transform(self, preprocessor):
        return bt.MultiView(npos_batch_augment(preprocessor, self.crop_scale), self.views)

    # ------------------------------------------------------------------ step
    def training_step(self, batch):
        images, labels = batch.images, batch.labels
        if images.ndim == 5:  # [B, V, C, H, W] -> view after view, as the published torch.cat([v0, v1])
            V = images.shape[1]
            images = images.transpose(0, 1).reshape(-1, *images.shape[2:])
            labels = labels.repeat(V)
        feat = self.net.features(images)
        z = self.net.project(feat)
        self.source.update(self.ctx.gather(feat.detach()), self.ctx.gather(labels))

        proto = self.prototypes
        if proto.value is None:  # prototype_init: batch (or no benchmark): class means of this batch's z
            with torch.no_grad():
                C = self.ctx.num_classes
                gen = torch.Generator().manual_seed(self.ctx.seed)
                sums = (torch.randn(C, z.shape[1], generator=gen) * 1e-3).to(z.device)
                sums.index_add_(0, labels, z.detach().float())
                proto.value = F.normalize(sums, dim=1)
        mu = ema_prototypes(proto.value.to(z.dtype), z, labels, self.proto_m)
        proto.value = mu.detach().float()
        disp = dispersion_loss(mu, self.temperature, 0.1)
        comp = compactness_loss(z, mu.detach(), labels, self.temperature, self.base_temperature)

        reg = feat.new_zeros(())
        n_out = 0
        if self.w_reg > 0 and self.source.ready(batch.epoch):
            outliers = self.source.synthesize().to(feat.device, feat.dtype)  # constants (no_grad sampler)
            n_out = len(outliers)
            reg = open_set_loss(self.net.open_logit(feat), self.net.open_logit(outliers))
        loss = self.w_disp * disp + self.w_comp * comp + self.w_reg * reg
        return {"loss": loss, "disp": disp.detach(), "comp": comp.detach(), "reg": reg.detach(),
                "n_outliers": float(n_out)}
