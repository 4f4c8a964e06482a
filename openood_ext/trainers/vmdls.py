"""VMDLS training (Dinari & Freifeld, "Variational- and Metric-based Deep Latent Space for
Out-of-Distribution Detection", UAI 2022; code ``BGU-CS-VIL/vmdls``).

On reparameterised latent samples z = mu + exp(logvar / 2) * eps of a ``vmdls`` network:

    loss = L_metric(z, y) + [epoch >= generation_epoch] * kl_coeff * L_KL

* L_metric: triplet loss over all in-batch triplets (margin 0.1) plus the distancing term
  relu(M - d(anchor, negative)), mean over the non-zero triplet terms
  (:func:`~.vmdls_losses.triplet_distancing_loss`). M starts at ``neg_margin`` (0.15) and grows by
  ``margin_jump`` at the start of every epoch >= ``margins_epoch`` while it is <= ``margin_max_distance``.
* L_KL: per class in the batch, the one-sample Monte-Carlo KL of q(z|x) to N(m_c, prior_std^2 I), with
  m_c = the mean of the sampled z of class c over the *previous* epoch (zero before the first epoch
  ends), averaged over samples, dims and classes.

``distance: normalized`` (default) measures distances on L2-normalised z as the published code does
(pytorch-metric-learning's LpDistance default): distances lie in [0, 2], so any M > 2 just makes every
distancing term active and M_d = 32 or 64 train identically. ``distance: euclidean`` uses raw latent
distances, the reading of the paper in which M_d is a latent distance.

``metric_on`` says what the metric loss sees: ``z`` (default, as published: the reparameterised sample) or
``mu`` (the deterministic latent mean; the KL term still uses the sample), an ablation. With ``distance:
normalized`` the metric loss is blind to the scale of mu while the KL pins sigma near ``prior_std`` (a noise
vector of norm ~0.1 * sqrt(32) = 0.57 at 32 dims), so the direction of z separates the classes only once mu
has grown past that noise. At the published learning rate (Adam 1e-4) it does, also on the 1,000-image
Fashion-MNIST subset; at 10x that rate the KL wins first and the latent stays at chance (docs/methods/vmdls.md,
measured with ``scripts/vmdls_latent_check.py``).

Fine-tuning (the README's WRN and CIFAR-100 commands, ``--finetune``): ``init_weights`` loads a checkpoint
into the encoder (an encoder state dict, or a whole network's whose ``encoder.*`` keys are taken);
``freeze_encoder_epochs: N`` keeps the encoder's weights fixed during epochs < N (BatchNorm statistics still
update, as published; N = 22 is the code's switch at the end of epoch 21) and ``head_lr`` gives fc_mu/fc_var
their own learning rate (``finetune_lr``). Departure: the code then rebuilds its optimizer and StepLR for all
parameters at ``lr``; the engine builds one optimizer per run, so here the heads keep ``head_lr`` and the
schedule runs on. For the code's exact schedule run two stages: N epochs with ``freeze_encoder_epochs: N``,
then a run with ``init_weights`` = the first stage's network checkpoint (``generation_epoch: 1``, so the KL
does not pull every class to zero while the class means are rebuilt).

Batches are class balanced (:class:`~.vmdls_sampler.ClassBalancedBatchSampler`): ``batch_classes`` x
``sample_count`` images; ``trainer.batch_size`` is not used. The published README calls ``sample_count``
the *starting* B_s, but the code never grows it; neither does this trainer.

The class means are kept through ``ctx.register_state`` (saved every epoch, restored on resume) and
copied into the network's ``class_means`` buffer (used by its nearest-mean logits).
"""

from __future__ import annotations

import pickle
from typing import Annotated, Literal

import torch

from ..errors import ConfigError
from ..schema import NonNegativeFloat, NonNegativeInt, PositiveFloat, Range
from ..utils.runtime import device_check
from .engine import TrainingError
from .registry import TRAINERS
from .trainer import Trainer
from .vmdls_losses import Distance, class_kl, margin_schedule, triplet_distancing_loss
from .vmdls_sampler import ClassBalancedBatchSampler


class ClassMeanTracker:
    """Per-class sums of z over the running epoch; ``means`` = last finished epoch's class means.

    A class not seen in an epoch keeps its previous mean.
    """

    def __init__(self, num_classes: int, dim: int, device):
        self.sums = torch.zeros(num_classes, dim, dtype=torch.float64, device=device)
        self.counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.means = torch.zeros(num_classes, dim, dtype=torch.float32, device=device)

    def add(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        self.sums.index_add_(0, labels, z.detach().double())
        self.counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))

    def finish_epoch(self) -> None:
        seen = self.counts > 0
        self.means[seen] = (self.sums[seen] / self.counts[seen, None]).float()
        self.sums.zero_()
        self.counts.zero_()

    def state_dict(self) -> dict:
        return {"sums": self.sums.cpu(), "counts": self.counts.cpu(), "means": self.means.cpu()}

    def load_state_dict(self, state: dict) -> None:
        for key in ("sums", "counts", "means"):
            getattr(self, key).copy_(state[key])


def load_encoder_weights(net, path) -> None:
    """Load ``path`` into ``net.encoder``: an encoder state dict, or a network checkpoint (ours, a training
    state's ``model``, or a plain state dict) whose ``encoder.*`` entries are used. CheckpointError (one line)
    naming the file when it is unreadable or does not fit."""
    from ..errors import CheckpointError
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"trainer.init_weights: {path}: not a readable checkpoint ({type(exc).__name__})") from None
    state = blob.get("state_dict", blob.get("model", blob)) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"trainer.init_weights: {path}: expected a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("encoder.") for k in state):
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    try:
        net.encoder.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise CheckpointError(f"trainer.init_weights: {path} does not fit the {net.encoder_name} encoder "
                              f"({first})") from None


AtLeastTwo = Annotated[int, Range(2)]  # a class-balanced batch needs two classes, and two images of each


def _check(name: str, value, ok: bool, expected: str):
    if not ok:
        raise ValueError(f"vmdls: {name} must be {expected}, got {value!r}")


@TRAINERS.register("vmdls")
class VMDLSTrainer(Trainer):
    """See the module docstring. The network must be a ``vmdls`` network (``encode(x) -> (mu, logvar)``).

    Args (README values for MNIST: batch_classes 10, sample_count 16, margins_epoch 1; CIFAR-10 ResNet-18:
    10 x 8, margins_epoch 10; all: kl_coeff 0.1, generation_epoch 0, margin_max_distance 32):
        batch_classes, sample_count: B_c classes x B_s images per batch.
        margin: triplet margin (0.1). neg_margin: initial distancing margin (0.15).
        margin_jump: growth per epoch (1.0). margins_epoch: first epoch that grows it.
        margin_max_distance: M_d, growth stops once the margin exceeds it.
        kl_coeff: KL weight (0.1). prior_std: class prior std (0.1). generation_epoch: first epoch with KL.
        distance: ``normalized`` (published code) | ``euclidean`` (paper's latent distance); must equal the
            network's ``distance`` (its nearest-class-mean logits measure the same way).
        metric_on: ``z`` (published: the sampled latent) | ``mu`` (the latent mean; see the module docstring).
        init_weights, freeze_encoder_epochs, head_lr: fine-tuning (module docstring).
    """

    def __init__(self, batch_classes: AtLeastTwo = 10, sample_count: AtLeastTwo = 40, margin: NonNegativeFloat = 0.1,
                 neg_margin: NonNegativeFloat = 0.15, margin_jump: NonNegativeFloat = 1.0,
                 margins_epoch: NonNegativeInt = 0, margin_max_distance: NonNegativeFloat = 32.0,
                 kl_coeff: NonNegativeFloat = 0.1, prior_std: PositiveFloat = 0.1, generation_epoch: NonNegativeInt = 0,
                 distance: Distance = "normalized", metric_on: Literal["z", "mu"] = "z",
                 init_weights: str | None = None, freeze_encoder_epochs: NonNegativeInt = 0,
                 head_lr: PositiveFloat | None = None):
        _check("init_weights", init_weights, bool(init_weights) or not freeze_encoder_epochs,
               "the pretrained encoder checkpoint when freeze_encoder_epochs > 0 (a frozen random encoder)")
        self.init_weights, self.freeze_encoder_epochs, self.head_lr = init_weights, freeze_encoder_epochs, head_lr
        self.batch_classes, self.sample_count = batch_classes, sample_count
        self.margin, self.neg_margin0, self.margin_jump = float(margin), float(neg_margin), float(margin_jump)
        self.margins_epoch, self.margin_max_distance = margins_epoch, float(margin_max_distance)
        self.kl_coeff, self.prior_std, self.generation_epoch = float(kl_coeff), float(prior_std), generation_epoch
        self.distance, self.metric_on = distance, metric_on
        self.neg_margin = self.neg_margin0
        self.epoch = 0

    def check_weights(self, net) -> None:
        """``init_weights`` read and fitted into a fresh ``net`` before anything runs (CheckpointError)."""
        if self.init_weights:
            load_encoder_weights(net, self.init_weights)

    def setup(self, net, ctx):
        super().setup(net, ctx)
        if not callable(getattr(net, "encode", None)):
            raise ConfigError(f"trainer vmdls: network {type(net).__name__} has no encode(x) -> (mu, logvar); "
                              f"use network.name: vmdls")
        net_distance = getattr(net, "distance", self.distance)
        if net_distance != self.distance:
            raise ConfigError(f"trainer.distance is {self.distance!r} but network.distance is {net_distance!r}: "
                              f"set both to the same value (the network's nearest-class-mean logits use it)")
        if self.init_weights:
            load_encoder_weights(net, self.init_weights)
        self.stats = ctx.register_state("vmdls_class_means",
                                        ClassMeanTracker(ctx.num_classes, net.latent_dim, ctx.device))

    def batch_sampler(self, labels, batch_size, seed):
        return ClassBalancedBatchSampler(labels, self.batch_classes, self.sample_count, seed)

    def parameter_groups(self):
        if self.head_lr is None:
            return super().parameter_groups()
        heads = [*self.net.fc_mu.parameters(), *self.net.fc_var.parameters()]
        ids = {id(p) for p in heads}
        return [{"params": [p for p in self.net.parameters() if id(p) not in ids]},
                {"params": heads, "lr": self.head_lr}]

    def on_epoch_start(self, epoch):
        self.epoch = epoch
        if self.freeze_encoder_epochs:  # no gradient = no update (optimizers skip params without .grad)
            self.net.encoder.requires_grad_(epoch >= self.freeze_encoder_epochs)
        self.neg_margin = margin_schedule(epoch, self.neg_margin0, self.margin_jump, self.margins_epoch,
                                          self.margin_max_distance)

    def training_step(self, batch):
        mu, logvar = self.net.encode(batch.images)
        mu, logvar = mu.float(), logvar.float()
        device_check(torch.isfinite(logvar).all(),  # queued on a GPU: no host read per step
                     TrainingError(f"vmdls: the latent log-variance is not finite at epoch {batch.epoch + 1}, "
                                   f"batch {batch.index + 1} (lower the learning rate)"))
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        labels = batch.labels
        metric = triplet_distancing_loss(z if self.metric_on == "z" else mu, labels, self.margin, self.neg_margin,
                                         self.distance)
        if batch.epoch >= self.generation_epoch and self.kl_coeff > 0:
            kl = self.kl_coeff * class_kl(z, mu, logvar, labels, self.stats.means, self.prior_std)
        else:
            kl = torch.zeros((), device=z.device)
        self.stats.add(self.ctx.gather(z.detach()), self.ctx.gather(labels))
        return {"loss": metric["loss"] + kl, "metric": metric["loss"].detach(), "kl": kl.detach(),
                "triplet": metric["triplet"], "distancing": metric["distancing"], "active": metric["active"]}

    def on_epoch_end(self, epoch, record):
        self.stats.finish_epoch()
        buf = getattr(self.net, "class_means", None)
        if buf is not None:
            with torch.no_grad():
                buf.copy_(self.stats.means.to(buf.device, buf.dtype))
        record["neg_margin"] = self.neg_margin

from . import autoencoder as _autoencoder  # noqa: F401  (registration: the AE trainer for VMDLS)
