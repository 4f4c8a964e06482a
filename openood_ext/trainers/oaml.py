"""OAML: outlier-aware metric learning (Gao et al., arXiv 2406.16525; code ``HengGao12/OAML``,
``openood/trainers/generative_ood_distill_trainer.py``).

Per step (B ID images, labels y; student logits s and penultimate features f [B, 512]):

    L = CE(s, y) + w_kd * KL(softmax(t/T) || softmax(s/T)) * T^2
        + w_feat * KL(softmax_channels(DT(h)) || softmax_channels(f))
        + w_text * CLUB_text(o, f) + w_latent * CLUB_latent(z, f)

* t, h: the frozen teacher's logits and class-token feature (timm ViT ``pre_logits``, 768-d), computed
  under no_grad on the same tensor; DT = BN1d(768) -> Linear(768 -> D_f) -> ReLU -> BN1d(D_f), trained
  only by the feature term (an extra module at the student's lr).
* KL terms: ``KLDivLoss(reduction="batchmean")`` semantics, i.e. sum over classes/channels, mean over
  the batch, the teacher as the target distribution (:func:`kd_kl`).
* o: B rows of the text-space outlier pool (``trainer.outliers`` = ``sd_text_outliers``), z: B latents
  (``latent_outliers`` = ``sd_latent_outliers``); the outlier batch equals the image batch because CLUB
  pairs rows (o_i, f_i); the pairs are arbitrary, as published. Draws are seeded per (seed, step), so a
  resumed run draws the same rows.
* The CLUB estimators (:mod:`.club`) are extra modules at ``club_lr`` (1e-4). ``club_update: alternate``
  (default, the CLUB paper): each estimator also takes its log-likelihood step on the pairs;
  ``joint`` (OAML as coded): the bound is minimised by the encoder and the estimators together.

Deviations from the published trainer: the dataset, architecture and feature sizes come from the config
and the data (the published trainer hard-codes CIFAR-100 and a ResNet-50, so its CIFAR-10 script
crashes); CLUB's default update is the paper's, ``joint`` reproduces the code.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..errors import ConfigError
from ..schema import Length, NonNegativeFloat, PositiveFloat, PositiveInt, Range
from .club import CLUB, ClubUpdate, club_terms
from .drop_last import DropLastBatchSampler
from .registry import TRAINERS
from .trainer import Trainer


def kd_kl(student: torch.Tensor, teacher: torch.Tensor, T: float = 1.0, dim: int = 1) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)) along ``dim``, summed over it and averaged over the
    other (batch) dimension, times T^2 -- ``nn.KLDivLoss(reduction='batchmean')(log_softmax(s/T),
    softmax(t/T)) * T^2``. ``dim=1`` over classes for logits, over channels for features."""
    log_p_s = F.log_softmax(student / T, dim=dim)
    log_p_t = F.log_softmax(teacher / T, dim=dim)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum() / student.shape[0] * T * T


def distill_projection(in_dim: int, out_dim: int) -> nn.Sequential:
    """OAML's ``DT``: BN1d(in) -> Linear(in -> out) -> ReLU -> BN1d(out)."""
    return nn.Sequential(nn.BatchNorm1d(in_dim), nn.Linear(in_dim, out_dim), nn.ReLU(), nn.BatchNorm1d(out_dim))


def build_teacher(spec: dict, num_classes: int) -> nn.Module:
    """The frozen teacher from ``trainer.teacher`` = {model, checkpoint, img_size, patch_size, ...}."""
    from ..networks.timm_vit import TimmViT, load_timm_weights

    spec = dict(spec)
    ckpt = spec.pop("checkpoint", None)
    classes = spec.pop("num_classes", num_classes)
    if classes != num_classes:
        raise ConfigError(f"trainer.teacher.num_classes: {classes} differs from the benchmark's {num_classes} classes")
    teacher = TimmViT(num_classes=num_classes, **spec)
    load_timm_weights(teacher, ckpt)
    return teacher


HiddenSizes = Annotated[list[PositiveInt], Length(1)]


@TRAINERS.register("oaml")
class OAMLTrainer(Trainer):
    """OAML (module docstring). ``teacher``: {model, checkpoint (local file), img_size, ...};
    ``student_init``: a cross-entropy checkpoint of the student (or null); ``latent_outliers``: the
    OUTLIER_SOURCES mapping of the latent pool (default: ``sd_latent_outliers`` over the text source's root);
    ``drop_last``: train full batches only (the published loop skips each epoch's last batch, the short one
    on CIFAR's 50,000 images: 390 steps of 128, not 391)."""

    needs_outliers = "features"
    default_outliers = {"name": "sd_text_outliers"}

    # nested config nodes (DictConfig/ListConfig) pass the schema's mapping/list checks and are made
    # plain here
    def __init__(self, teacher: dict | None = None, student_init: str | None = None,
                 latent_outliers: dict | str | None = None, w_kd: NonNegativeFloat = 4.0, w_feat: NonNegativeFloat = 8.0,
                 w_text: NonNegativeFloat = 0.1, w_latent: NonNegativeFloat = 0.2, temperature: PositiveFloat = 1.0,
                 club_update: ClubUpdate = "alternate", club_lr: PositiveFloat = 1e-4,
                 club_hidden: Annotated[int, Range(2)] = 512, latent_mu_hidden: HiddenSizes | None = None,
                 latent_logvar_hidden: HiddenSizes | None = None, drop_last: bool = False):
        from ..config import to_plain

        teacher, latent_outliers = to_plain(teacher), to_plain(latent_outliers)
        latent_mu_hidden, latent_logvar_hidden = to_plain(latent_mu_hidden), to_plain(latent_logvar_hidden)
        if not isinstance(teacher, dict) or not teacher.get("checkpoint"):
            raise ValueError("teacher: expected a mapping with 'checkpoint' (a local timm ViT state dict, "
                             "e.g. {model: vit_base_patch16_224, checkpoint: teachers/vit_cifar10.bin})")
        self.teacher_spec, self.student_init = dict(teacher), student_init
        self.latent_spec = ({"name": latent_outliers} if isinstance(latent_outliers, str) else dict(latent_outliers)
                            if latent_outliers else {"name": "sd_latent_outliers"})
        self.w_kd, self.w_feat, self.w_text, self.w_latent = map(float, (w_kd, w_feat, w_text, w_latent))
        self.T, self.club_update, self.club_lr, self.club_hidden = float(temperature), club_update, float(club_lr), int(club_hidden)
        self.latent_mu_hidden = list(latent_mu_hidden or [8192, 4096, 256])
        self.latent_logvar_hidden = list(latent_logvar_hidden or [256])
        self.drop_last = drop_last

    def batch_sampler(self, labels, batch_size, seed):
        return DropLastBatchSampler(len(labels), batch_size, seed) if self.drop_last else None

    # ------------------------------------------------------------------------------------------ setup
    def check_weights(self, net) -> None:
        """``student_init`` read and fitted into a fresh ``net`` before anything runs (CheckpointError)."""
        from ..networks.checkpoint import load_checkpoint
        if self.student_init:
            load_checkpoint(self.student_init, net)

    def setup(self, net, ctx) -> None:
        super().setup(net, ctx)
        from ..networks.checkpoint import load_checkpoint

        if self.student_init:
            load_checkpoint(self.student_init, net)
        self.teacher = ctx.add_module("teacher", build_teacher(self.teacher_spec, ctx.num_classes), trainable=False)
        self.text = ctx.outliers
        self.latent = self._latent_source(ctx)
        f_dim = int(getattr(net, "feature_dim", 0)) or self._probe_feature_dim()
        self.proj = ctx.add_module("distill_proj", distill_projection(self.teacher.feature_dim, f_dim))
        self.club_text = ctx.add_module("club_text", CLUB(self.text.dim, f_dim, self.club_hidden), lr=self.club_lr)
        self.club_latent = ctx.add_module(
            "club_latent", CLUB(self.latent.dim, f_dim, self.club_hidden, self.latent_mu_hidden,
                                self.latent_logvar_hidden), lr=self.club_lr)

    def _latent_source(self, ctx):
        from ..synthesizers import OUTLIER_SOURCES

        spec = dict(self.latent_spec)
        if "root" not in spec and getattr(self.text, "root", None) is not None:
            spec["root"] = str(self.text.root)
        source = OUTLIER_SOURCES.build(spec)
        source.setup(self.text.ctx)
        source.check()
        ctx.register_state("latent_outliers", source)
        return source

    def _probe_feature_dim(self) -> int:
        raise ConfigError("trainer oaml: the network has no feature_dim attribute")

    # ------------------------------------------------------------------------------------------- step
    def _draw(self, source, n: int, step: int, salt: int) -> torch.Tensor:
        # each torchrun rank draws its own rows (rank 0 and a single process: the same stream)
        rank = distributed.rank()
        g = torch.Generator().manual_seed((self.ctx.seed * 1_000_003 + step * 2 + salt + rank * 1_000_000_007)
                                          % (2 ** 63))
        return source.draw_features(n, g).to(self.ctx.device)

    def training_step(self, batch) -> dict[str, Any]:
        x, y = batch.images, batch.labels
        logits, feat = self.net(x, return_feature=True)
        with torch.no_grad():
            t_logits, t_feat = self.teacher(x, return_feature=True)
        ce = F.cross_entropy(logits, y)
        kd = kd_kl(logits, t_logits.float(), self.T)
        feat_kd = kd_kl(feat, self.proj(t_feat.float()), 1.0)
        n = len(x)
        o = self._draw(self.text, n, batch.step, 0)
        z = self._draw(self.latent, n, batch.step, 1)
        b_text, q_text, v_text = club_terms(self.club_text, o, feat, self.club_update)
        b_lat, q_lat, v_lat = club_terms(self.club_latent, z, feat, self.club_update)
        loss = (ce + self.w_kd * kd + self.w_feat * feat_kd + self.w_text * b_text + self.w_latent * b_lat
                + q_text + q_lat)
        return {"loss": loss, "ce": ce, "kd": kd, "feat_kd": feat_kd, "club_text": v_text,
                "club_latent": v_lat, "q_nll": (q_text + q_lat).detach(),
                "acc": (logits.detach().argmax(1) == y).float().mean()}
