"""FCDD: Fully Convolutional Data Description (Liznerski et al., ICLR 2021, "Explainable Deep One-Class
Classification"), and the online supervision that FCDD's HSC and AE baselines share.

One-class training: ``batch.images`` are normal samples (``batch.labels`` are all the normal class),
``batch.outliers`` come from the outlier source. Online supervision (FCDD's ``OnlineSupervisor``):
each sample is replaced with probability ``p_outlier`` (0.5) by the aligned outlier, labelled
anomalous (1). ``supervise_mode``:

* ``noise``: outliers are OE images or confetti noise (``trainer.outliers``; default confetti on black).
  With the map path, real anomalies whose source gives masks (``oe_images`` on a split with ground
  truth, e.g. MVTec's ``oe_defects``: FCDD's ``mvtec_gt`` semi-supervised recipe) enter the loss with
  their masks; synthetic ones with Y = all ones;
* ``malformed_normal``: the normal image plus confetti (default source ``confetti``);
* ``malformed_normal_gt``: the same, with a ground-truth map Y of the changed pixels (loss with maps);
* ``other``: true training anomalies from ``trainer.outliers`` (e.g. ``{name: oe_images, split: oe}``
  of a folder benchmark with ``train/<class>/anomalous``). FCDD's published code silently trains
  *unsupervised* in this mode when supervision is online; we use the anomalies (the intended
  behaviour); ``published_other_quirk: true`` reproduces the published behaviour;
* ``unsupervised``: no outliers.

Loss (:func:`fcdd_loss`): A = sqrt(phi^2 + 1) - 1 per output pixel. Without maps: a_i = mean of A_i;
normal -> a_i, anomalous -> -log(1 - exp(-a_i) + 1e-31); batch mean. With maps Y: A' = receptive
upsampling of A to the input size; normal term mean(A' (1 - Y)) over *all* pixels, anomaly term
-log(1 - exp(-mean(A' Y)) + 1e-31) when Y has a 1; batch mean. ``gt_path: true`` takes the map path
for every batch (Y = all ones for synthetic anomalies without their own map, FCDD's MVTec behaviour).
FCDD's published loss returns plain mean(A) when every label in a batch is equal (an all-anomalous
batch is then pulled *down*); we apply the formula always; ``published_single_label_quirk: true``
restores the published behaviour.

``epoch_repeats: N`` reads the training set N times per epoch, as one shuffle of the N-times repeated
set (FCDD's MVTec-AD ``enlarge``: ten copies, for every supervise mode, online and offline; the FCDD
MVTec recipe sets 10, so that 200 epochs and the per-epoch schedule are the published ones).

Where the anomalies are made is the source's ``supervisor`` option: ``batch`` (default) on the
transformed batch here; ``online``/``offline`` in the training set, before the training transform, as
FCDD (:mod:`openood_ext.synthesizers.supervisor`): online replaces each image with probability
``p_outlier`` there; offline adds a fixed anomaly per training image (an epoch then holds N images and
N anomalies). ``online`` runs on either data path: on the per-image path the training set is wrapped
(:meth:`OnlineSupervision.train_dataset`), on the tensor path the anomalies are made on the raw decoded
batch before the batched augmentation (:meth:`OnlineSupervision.raw_batch_stage`); ``offline``,
changed-pixel maps (``malformed_normal_gt``, the maps would have to follow each image's crop) and
``epoch_repeats`` keep the per-image path.

Anomaly score (:meth:`anomaly_scores`): the mean of A (higher = more anomalous), heatmap = upsampled A.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch

from .. import distributed
from ..datasets.repeated import RepeatedDataset
from ..schema import PositiveInt, Probability
from ..synthesizers.supervisor import DatasetSupervision, RawBatchSupervision
from .registry import TRAINERS
from .trainer import Trainer

SuperviseMode = Literal["noise", "malformed_normal", "malformed_normal_gt", "other", "unsupervised"]
SUPERVISE_MODES = get_args(SuperviseMode)
EPS = 1e-31


def pseudo_huber(x: torch.Tensor) -> torch.Tensor:
    """sqrt(x^2 + 1) - 1, elementwise."""
    return (x ** 2 + 1).sqrt() - 1


def anomaly_term(a: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """-log(1 - exp(-a) + eps), elementwise (the loss of an anomalous sample with score a >= 0)."""
    return -torch.log(1 - torch.exp(-a) + eps)


def fcdd_loss(a: torch.Tensor, labels: torch.Tensor, gt: torch.Tensor | None = None, upsample=None,
              eps: float = EPS, single_label_quirk: bool = False) -> torch.Tensor:
    """FCDD's loss on pseudo-Huber maps ``a`` [B, 1, n, n] with ``labels`` [B] (0 normal, 1 anomalous).

    ``gt`` [B, 1, H, W] in {0, 1}: the map path (``upsample(a)`` must give [B, 1, H, W]).
    """
    labels = labels.to(a.device)
    if gt is None:
        if single_label_quirk and bool((labels == labels[0]).all()):
            return a.mean()
        per = a.flatten(1).mean(1)
        return torch.where(labels.bool(), anomaly_term(per, eps), per).mean()
    up = upsample(a)
    y = gt.to(up.dtype).to(up.device)
    if y.shape != up.shape:
        raise ValueError(f"fcdd_loss: ground-truth maps {tuple(y.shape)} do not match the upsampled maps {tuple(up.shape)}")
    norm = (up * (1 - y)).flatten(1).mean(1)
    has = y.flatten(1).amax(1) > 0
    anom = torch.where(has, anomaly_term((up * y).flatten(1).mean(1), eps), torch.zeros_like(norm))
    return (norm + anom).mean()


def _first(*values):
    return next((v for v in values if v is not None), None)


def step_generator(seed: int, step: int, tag: int) -> torch.Generator:
    """A generator seeded by (run seed, global step, tag): the same draws after a resume. Under torchrun
    the rank joins the seed, so the ranks replace different positions of their batches."""
    rank = [distributed.rank()] if distributed.world_size() > 1 else []
    state = np.random.SeedSequence([int(seed), int(step), tag, *rank]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) % 2**62)


class OnlineSupervision(Trainer):
    """Shared by FCDD/HSC: ``supervise_mode`` + ``p_outlier`` replacement, see the module doc.

    :meth:`supervised_batch` returns (images [B, ...], labels [B] 0/1, gt maps [B, 1, H, W] or None).
    """

    def __init__(self, supervise_mode: SuperviseMode = "noise", p_outlier: Probability = 0.5, gt_path: bool = False,
                 published_other_quirk: bool = False, epoch_repeats: PositiveInt = 1):
        self.supervise_mode, self.p_outlier, self.gt_path = supervise_mode, float(p_outlier), bool(gt_path)
        self.published_other_quirk = bool(published_other_quirk)
        self.epoch_repeats = int(epoch_repeats)
        unsupervised = supervise_mode == "unsupervised" or (supervise_mode == "other" and published_other_quirk)
        self.needs_outliers = None if unsupervised else "images"
        self.default_outliers = {
            "noise": {"name": "confetti", "mode": "noise"},
            "malformed_normal": {"name": "confetti", "mode": "malformed_normal"},
            "malformed_normal_gt": {"name": "confetti", "mode": "malformed_normal"},
            "other": {"name": "oe_images", "split": "oe"},
        }.get(supervise_mode)

    @staticmethod
    def _aligned(x: torch.Tensor, b: int) -> torch.Tensor:
        """The first ``b`` rows of ``x``, cycled when shorter (as the outliers)."""
        return x[torch.arange(b, device=x.device) % len(x)] if len(x) < b else x[:b]

    #: this trainer reads the anomalies a dataset-side source (``supervisor: online|offline``) makes
    reads_dataset_side = True

    def dataset_side(self, source) -> bool:
        """Whether ``source``'s anomalies are made in the training data (before the training transform)
        rather than drawn by the engine on the transformed batch: the one test both data paths use."""
        return bool(self.needs_outliers) and bool(getattr(source, "dataset_side", False))

    def train_dataset(self, dataset, preprocessor, source=None, seed=0):
        """``epoch_repeats`` copies of the training set per epoch (FCDD's MVTec ``enlarge``), then, for a
        dataset-side source (``supervisor: online|offline``), its anomalies made in the set
        (:class:`~openood_ext.synthesizers.supervisor.DatasetSupervision`)."""
        if self.epoch_repeats > 1:
            dataset = RepeatedDataset(dataset, self.epoch_repeats)
        if self.dataset_side(source):
            dataset = DatasetSupervision(dataset, source, preprocessor, p=self.p_outlier, seed=seed,
                                         changed_maps=self.supervise_mode == "malformed_normal_gt")
        return dataset

    def train_dataset_change(self, source=None) -> str | None:
        """What keeps the training set on the per-image path (None: the tensor path can run it, online
        anomalies included, :meth:`raw_batch_stage`)."""
        if self.dataset_side(source):
            if source.supervisor != "online":
                return f"trainer.outliers.supervisor: {source.supervisor} (a fixed set of anomalies per training image)"
            if self.supervise_mode == "malformed_normal_gt":
                return "trainer.supervise_mode: malformed_normal_gt with supervisor: online (changed-pixel maps)"
            if not hasattr(source, "corrupt255"):
                return f"trainer.outliers.supervisor: online ({type(source).__name__} makes no raw anomalies)"
        if self.epoch_repeats > 1:
            return f"trainer.epoch_repeats: {self.epoch_repeats}"
        return None

    def raw_batch_stage(self, source=None) -> RawBatchSupervision | None:
        """The tensor path's online supervisor (anomalies on the raw decoded batch, before the batched
        augmentation; call :meth:`train_dataset_change` first), or None for a source the engine draws."""
        return RawBatchSupervision(source, self.p_outlier) if self.dataset_side(source) else None

    def supervised_batch(self, batch):
        images = batch.images
        want_gt = self.gt_path or self.supervise_mode == "malformed_normal_gt"
        if images.dim() == 5:  # dataset-side supervision: (image, map) stacks, anomalies labelled -1
            labels = (batch.labels < 0).long().to(images.device)
            return images[:, 0], labels, (images[:, 1, :1] if want_gt else None)
        if self.dataset_side(getattr(getattr(self, "ctx", None), "outliers", None)):
            # the tensor path's online supervisor: anomalies labelled -1, every pixel of one anomalous
            labels = (batch.labels < 0).long().to(images.device)
            gt = labels.view(-1, 1, 1, 1).float().expand(-1, 1, *images.shape[-2:]) if want_gt else None
            return images, labels, gt
        b = len(images)
        labels = torch.zeros(b, dtype=torch.long, device=images.device)
        gt = None
        if self.needs_outliers and batch.outliers is not None and self.p_outlier > 0:
            outliers = self._aligned(batch.outliers, b).to(images.device, images.dtype)  # a short batch cycled
            replace = (torch.rand(b, generator=step_generator(self.ctx.seed, batch.step, 0xFCDD))
                       < self.p_outlier).to(images.device)
            images = torch.where(replace.view(-1, *[1] * (images.dim() - 1)), outliers, images)
            labels = replace.long()
            if want_gt:
                src = self.ctx.outliers  # a batch built without the engine: the source's last draw
                changed = _first(getattr(batch, "outlier_changed", None), getattr(src, "last_changed", None))
                masks = _first(getattr(batch, "outlier_masks", None), getattr(src, "last_masks", None))
                if self.supervise_mode == "malformed_normal_gt" and changed is not None:
                    y = self._aligned(changed, b).to(images.device).float()
                elif masks is not None:  # real anomalies with their masks (FCDD's mvtec_gt)
                    y = self._aligned(masks, b).to(images.device).float()
                else:  # synthetic anomaly without its own map: every pixel anomalous
                    y = torch.ones(b, 1, *images.shape[-2:], device=images.device)
                gt = y * replace.view(-1, 1, 1, 1).float()
        elif want_gt:
            gt = torch.zeros(b, 1, *images.shape[-2:], device=images.device)
        return images, labels, gt


@TRAINERS.register("fcdd")
class FCDDTrainer(OnlineSupervision):
    """FCDD (see the module doc). The network must be an FCDD net (``fcdd_cnn28``, ``fcdd_cnn32``,
    ``fcdd_vgg11_224``): ``net(x)`` -> [B, 1, n, n], ``net.upsample``; logs ``loss``, ``frac_anomalous``,
    ``score_normal`` and ``score_anomalous`` (mean a_i of each group in the batch)."""

    def __init__(self, supervise_mode: SuperviseMode = "noise", p_outlier: Probability = 0.5, gt_path: bool = False,
                 published_other_quirk: bool = False, published_single_label_quirk: bool = False,
                 epoch_repeats: PositiveInt = 1):
        super().__init__(supervise_mode, p_outlier, gt_path, published_other_quirk, epoch_repeats)
        self.single_label_quirk = bool(published_single_label_quirk)

    def setup(self, net, ctx):
        super().setup(net, ctx)
        if not getattr(net, "fcdd_map", False):
            from ..errors import ConfigError
            raise ConfigError(f"trainer fcdd: network {type(net).__name__} is not an FCDD network "
                              f"(use fcdd_cnn28, fcdd_cnn32 or fcdd_vgg11_224)")

    def training_step(self, batch):
        images, labels, gt = self.supervised_batch(batch)
        a = pseudo_huber(self.net(images))
        loss = fcdd_loss(a, labels, gt, self.net.upsample, single_label_quirk=self.single_label_quirk)
        per = a.detach().flatten(1).mean(1)
        anom = labels.bool()
        return {"loss": loss, "frac_anomalous": anom.float().mean(),
                "score_normal": (per * ~anom).sum() / (~anom).sum().clamp(min=1),
                "score_anomalous": (per * anom).sum() / anom.sum().clamp(min=1)}

    @torch.no_grad()
    def anomaly_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [B] = mean A, heatmaps [B, H, W] = receptive-field-upsampled A); higher = anomalous."""
        self.net.eval()
        a = pseudo_huber(self.net(images))
        return a.flatten(1).mean(1), self.net.upsample(a)[:, 0]


def fcdd_anomaly_scores(net: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and heatmaps of a trained FCDD net without its trainer (``test_ad`` on a checkpoint)."""
    net.eval()
    with torch.no_grad():
        a = pseudo_huber(net(images))
        return a.flatten(1).mean(1), net.upsample(a)[:, 0]
