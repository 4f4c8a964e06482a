"""The public trainer contract: a trainer says only what its method adds to the one training loop.

    from openood_ext.trainers import TRAINERS, Trainer

    @TRAINERS.register("my_method")
    class MyTrainer(Trainer):
        def setup(self, net, ctx):          # build extra modules, teacher, queues here
            super().setup(net, ctx)
        def training_step(self, batch):     # -> {"loss": tensor to minimise, other named terms}
            return {"loss": F.cross_entropy(self.net(batch.images), batch.labels)}

The engine (:mod:`openood_ext.trainers.engine`) owns everything else: devices, precision, gradient
accumulation, optimizer and schedule, clipping, progress, history, checkpoints and resume.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import ConfigError


@dataclass
class Batch:
    """One training step's inputs.

    images: ID images [B, C, H, W] on the device (normalised like the benchmark's training split).
    labels: ID class labels [B] (long).
    outliers: outlier images [B_out, C, H, W] from an image outlier source, or None.
    epoch: 0-based epoch; step: 0-based optimizer-independent batch counter over the whole run;
    index: 0-based batch index within the epoch.
    outlier_masks: ground-truth masks [B_out, 1, H, W] in {0, 1} of real anomalies (an image source
    reading a split with masks, e.g. MVTec's training defects), else None.
    outlier_changed: the pixels a synthetic source changed [B_out, 1, H, W] (confetti), else None.
    """

    images: torch.Tensor
    labels: torch.Tensor
    outliers: torch.Tensor | None
    epoch: int
    step: int
    index: int
    outlier_masks: torch.Tensor | None = None
    outlier_changed: torch.Tensor | None = None


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class ExtraModule:
    """A module a trainer added through :meth:`TrainContext.add_module`."""

    module: nn.Module
    lr: float | None = None
    weight_decay: float | None = None
    trainable: bool = True
    persistent: bool = True


@dataclass
class TrainContext:
    """What a trainer may use besides its network (the engine fills it; trainers read it).

    Cross-batch state (queues, prototypes, class statistics) must be kept through what this offers
    (``add_module`` buffers, ``register_state``, ``gather``) so that data-parallel training
    synchronises it in one place (under torchrun ``gather`` is an all-gather over the ranks).
    """

    device: torch.device
    num_classes: int
    epochs: int
    steps_per_epoch: int
    seed: int = 0
    benchmark: Any = None
    outliers: Any = None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("openood_ext"))
    precision: str = "fp32"
    modules: dict[str, ExtraModule] = field(default_factory=dict)
    states: dict[str, Stateful] = field(default_factory=dict)

    def add_module(self, name: str, module: nn.Module, *, lr: float | None = None,
                   weight_decay: float | None = None, trainable: bool = True,
                   persistent: bool | None = None) -> nn.Module:
        """Place ``module`` on the device and hand it to the engine; returns it.

        Trainable modules get their own optimizer parameter group (``lr`` / ``weight_decay`` override
        the optimizer's) and are saved in the training state. Frozen ones (``trainable=False``, e.g. a
        teacher) are put in eval mode with ``requires_grad`` off and are not saved unless
        ``persistent=True``.
        """
        if name in self.modules:
            raise ConfigError(f"trainer: extra module {name!r} is registered twice")
        module = module.to(self.device)
        if not trainable:
            module.eval().requires_grad_(False)
        self.modules[name] = ExtraModule(module, lr, weight_decay, trainable,
                                         trainable if persistent is None else persistent)
        return module

    def register_state(self, name: str, obj: Stateful) -> Stateful:
        """Save ``obj.state_dict()`` in every training state and restore it on resume; returns ``obj``."""
        if name in self.states:
            raise ConfigError(f"trainer: state {name!r} is registered twice")
        self.states[name] = obj
        return obj

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate ``tensor`` over all processes along dim 0, in rank order (one process: returns it
        unchanged). Every rank must call it at the same point; row counts may differ; no gradient."""
        from ..distributed import gather_rows
        return gather_rows(tensor)


class Trainer:
    """Base of every trainer. Subclasses implement :meth:`training_step`; the rest is optional.

    Attributes set by :meth:`setup`: ``self.net`` (the network, on the device) and ``self.ctx``.
    ``needs_outliers``: ``"images"`` when the method needs ``batch.outliers`` (the run then requires
    ``trainer.outliers`` or the benchmark's OE set), ``"features"`` when it uses a feature-space
    source through ``ctx.outliers``, None when it needs none.
    """

    needs_outliers: str | None = None
    default_outliers: dict | None = None  # the source used when trainer.outliers is not given

    def setup(self, net: nn.Module, ctx: TrainContext) -> None:
        self.net, self.ctx = net, ctx

    def training_step(self, batch: Batch) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement training_step(batch)")

    def parameter_groups(self) -> list[dict]:
        """Optimizer groups of the network (extra modules get theirs from ``ctx.add_module``)."""
        return [{"params": list(self.net.parameters())}]

    def train_transform(self, preprocessor: dict):
        """A PIL -> tensor transform for the ID training images, or None for the benchmark's own
        (methods with several augmented views return a transform producing a [V, C, H, W] stack)."""
        return None

    def train_batch_transform(self, preprocessor: dict):
        """The batched counterpart of :meth:`train_transform` (uint8 batch -> float batch, ``op(images,
        generator, labels)``, see :mod:`openood_ext.datasets.batch_transforms`), used on the tensor data
        path; None keeps a trainer with its own transform on the per-image path."""
        return None

    def train_dataset(self, dataset, preprocessor: dict, source=None, seed: int = 0):
        """The ID training set as this trainer reads it (default: ``dataset`` itself). A wrapper keeps
        ``labels()``; e.g. FCDD's enlarged MVTec epochs and dataset-side supervision
        (:class:`~openood_ext.trainers.fcdd.OnlineSupervision`)."""
        return dataset

    def train_dataset_change(self, source=None) -> str | None:
        """What :meth:`train_dataset` changes (it keeps the run on the per-image data path), or None."""
        return None

    def batch_sampler(self, labels: torch.Tensor, batch_size: int, seed: int):
        """A batch sampler over the training set (``set_epoch(epoch)`` is called if it has one), or None
        for seeded shuffling (e.g. class-balanced batches)."""
        return None

    def on_epoch_start(self, epoch: int) -> None:
        """Called before epoch ``epoch`` (0-based)."""

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        """Called after epoch ``epoch`` with its history record (add entries to it if useful)."""

    def state_dict(self) -> dict:
        """Extra state for resume that is not a registered module or state."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def as_trainer(obj: Any) -> Any:
    """Accept duck-typed trainers: anything with ``training_step``; optional hooks get defaults."""
    if not callable(getattr(obj, "training_step", None)):
        raise ConfigError(f"trainer {type(obj).__name__} has no training_step(batch) method")
    defaults = {"setup": Trainer.setup, "parameter_groups": Trainer.parameter_groups,
                "train_transform": Trainer.train_transform, "batch_sampler": Trainer.batch_sampler,
                "on_epoch_start": Trainer.on_epoch_start, "on_epoch_end": Trainer.on_epoch_end,
                "state_dict": Trainer.state_dict, "load_state_dict": Trainer.load_state_dict}
    for name, fn in defaults.items():
        if not callable(getattr(obj, name, None)):
            setattr(obj, name, fn.__get__(obj))
    for attr in ("needs_outliers", "default_outliers"):
        if not hasattr(obj, attr):
            setattr(obj, attr, None)
    return obj
