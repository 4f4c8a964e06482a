"""The one training loop. Every trainer runs through :class:`Engine`; trainers only say what is new.

The engine places the network and every module a trainer adds on the device, runs mixed precision
(``precision: bf16|fp16`` on CUDA, ``bf16`` also on CPU) and gradient accumulation (``accumulate: N``),
builds the optimizer and schedule from config (:mod:`.optim`), clips gradients (``grad_clip``), draws
image outliers into ``batch.outliers``, shows a progress bar (on a terminal) and logs one line per
epoch, records the mean of every named loss term per epoch (``history``), saves the full training
state after every epoch and resumes from it bit-identically on CPU.

Engine keys of ``trainer:`` (everything else goes to the trainer's constructor)::

    trainer:
      name: oe                     # TRAINERS entry
      epochs: 100
      batch_size: 128
      optimizer: {name: sgd, lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 5.0e-4}
      scheduler: {name: cosine, interval: step, warmup_epochs: 0}
      accumulate: 1                # optimizer step every N batches (gradient of an N-times larger batch)
      accumulate_mode: gradients   # gradients: N forward/backward passes, gradients summed (BatchNorm sees
                                   # one loader batch); concat: the N batches concatenated and forwarded at
                                   # once (FCDD's acc_batches: BatchNorm sees N x batch_size samples)
      precision: fp32              # fp32 | bf16 | fp16 (fp16: CUDA only, with loss scaling)
      grad_clip: null              # max global gradient norm
      outliers: {name: oe_images, limit: null}   # OUTLIER_SOURCES entry (default: the trainer's own)
      channels_last: false         # network and batches in channels_last memory format (CUDA convnets)
      compile: false               # true (torch.compile, inductor) or a torch.compile backend name
      sync_batchnorm: false        # torchrun only: BatchNorm statistics over all ranks (CUDA only)
      find_unused_parameters: true # torchrun only: DDP tolerates parameters a step does not use
      finite_check_every: null     # read the NaN/inf verdict every N optimizer steps and at epoch end
                                   # (null: 1 on the CPU, 50 on a GPU, where each read stalls the device)
      cudnn_benchmark: true        # CUDA: let cuDNN pick the fastest convolution algorithms (fixed shapes)

Data parallel (``torchrun --nproc_per_node N``, see :mod:`openood_ext.distributed`): ``batch_size`` is per
process (the global batch is N x batch_size); the network and the trainable extra modules are wrapped
together in one ``DistributedDataParallel`` around the trainer's step (so a trainer calling
``net.features`` or ``net.encode`` is synchronised too); gradients are averaged over the ranks;
``ctx.gather`` concatenates tensors over the ranks; epoch means of the loss terms are over all ranks;
only rank 0 logs and writes the training state (with every rank's RNG state); every rank resumes from it.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, get_args

import torch

from .. import distributed
from ..config import to_plain
from ..errors import CheckpointError, ConfigError, OpenOODError
from ..schema import PositiveFloat, PositiveInt, check_value
from ..utils.io import write_stream
from ..utils.runtime import autocast, check_compile, get_logger, prepare_module, progress, seed_everything
from .optim import build_optimizer, build_scheduler, check_optimizer_spec, check_schedule_spec
from .resume import restore_rng_states, rng_states
from .finite import FiniteWatch, NonFiniteLoss
from .trainer import Batch, TrainContext

ENGINE_KEYS = ("epochs", "batch_size", "optimizer", "scheduler", "accumulate", "accumulate_mode", "precision",
               "grad_clip", "outliers", "channels_last", "compile", "sync_batchnorm", "find_unused_parameters",
               "finite_check_every", "cudnn_benchmark")
#: optimizer steps between two host reads of the loss's finiteness on a GPU (finite_check_every: null)
GPU_FINITE_CHECK_EVERY = 50
Precision = Literal["fp32", "bf16", "fp16"]
AccumulateMode = Literal["gradients", "concat"]
PRECISIONS = get_args(Precision)


class TrainingError(OpenOODError):
    """Training cannot go on (a missing or non-finite loss); the last good training state is kept."""


def _checked(spec: Mapping[str, Any], key: str, default: Any, hint: Any) -> Any:
    value = spec.get(key, default)
    check_value(f"trainer.{key}", value, hint)
    return value


@dataclass
class EngineSettings:
    """The engine's part of ``trainer:`` (see the module docstring), validated."""

    epochs: int = 100
    batch_size: int = 128
    optimizer: dict = field(default_factory=lambda: check_optimizer_spec({}))
    scheduler: dict = field(default_factory=lambda: check_schedule_spec("cosine", 100))
    accumulate: int = 1
    precision: str = "fp32"
    grad_clip: float | None = None
    outliers: Any = None
    channels_last: bool = False
    compile: str | None = None
    sync_batchnorm: bool = False
    find_unused_parameters: bool = True
    finite_check_every: int | None = None
    cudnn_benchmark: bool = True
    accumulate_mode: str = "gradients"

    @classmethod
    def from_config(cls, spec: Mapping[str, Any]) -> "EngineSettings":
        epochs = _checked(spec, "epochs", 100, PositiveInt)
        batch_size = _checked(spec, "batch_size", 128, PositiveInt)
        accumulate = _checked(spec, "accumulate", 1, PositiveInt)
        accumulate_mode = _checked(spec, "accumulate_mode", "gradients", AccumulateMode)
        precision = _checked(spec, "precision", "fp32", Precision)
        clip = _checked(spec, "grad_clip", None, PositiveFloat | None)
        outliers = spec.get("outliers")
        if outliers is not None and not isinstance(outliers, (str, Mapping)):
            raise ConfigError(f"trainer.outliers: expected a source name or mapping, got {outliers!r}")
        flags = {key: _checked(spec, key, default, bool)
                 for key, default in (("channels_last", False), ("sync_batchnorm", False),
                                      ("find_unused_parameters", True), ("cudnn_benchmark", True))}
        flags["finite_check_every"] = _checked(spec, "finite_check_every", None, PositiveInt | None)
        sched = spec.get("scheduler", "cosine")
        return cls(epochs, batch_size, check_optimizer_spec(spec.get("optimizer") or {}),
                   check_schedule_spec(sched, epochs), accumulate, precision,
                   None if clip is None else float(clip), outliers,
                   compile=check_compile("trainer.compile", spec.get("compile", False)),
                   accumulate_mode=accumulate_mode, **flags)


def split_trainer_config(spec: Mapping[str, Any]) -> tuple[EngineSettings, dict]:
    """``trainer:`` -> (engine settings, the trainer's own mapping with ``name`` and its arguments)."""
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = to_plain(spec)
    if not isinstance(spec, Mapping):
        raise ConfigError(f"trainer: expected a mapping with 'name', got {spec!r}")
    spec = {k: to_plain(v) for k, v in spec.items()}  # nested configs -> dict/list, so list[int] hints apply
    if "name" not in spec:
        raise ConfigError("trainer: no 'name' (a TRAINERS entry, e.g. base, oe, energy_oe, logitnorm)")
    settings = EngineSettings.from_config(spec)
    method = {k: v for k, v in spec.items() if k not in ENGINE_KEYS}
    return settings, method


class TermMeter:
    """Per-epoch means of named terms, weighted by batch size; device tensors are summed without syncing."""

    def __init__(self):
        self.sums: dict[str, Any] = {}
        self.count = 0

    def update(self, terms: Mapping[str, Any], n: int) -> None:
        self.count += n
        for key, value in terms.items():
            value = value.detach().float() if torch.is_tensor(value) else float(value)
            self.sums[key] = self.sums.get(key, 0.0) + value * n

    def reduce_over_ranks(self) -> None:
        """Sum the sums and counts over the torchrun ranks (every rank must call it)."""
        keys = sorted(self.sums)
        values = torch.tensor([float(self.sums[k]) for k in keys] + [float(self.count)], dtype=torch.float64)
        with distributed.guard("averaging the epoch's loss terms"):
            distributed.all_reduce_sum_(values)
        self.sums = dict(zip(keys, values[:-1].tolist()))
        self.count = int(values[-1].item())

    def means(self) -> dict[str, float]:
        return {k: float(v) / max(self.count, 1) for k, v in self.sums.items()}


def _precision_context(precision: str, device: torch.device):
    return autocast(precision, device, key="trainer.precision")


class TrainingStep(torch.nn.Module):
    """The network plus the trainable extra modules as one module whose forward is the trainer's step,
    so that ``DistributedDataParallel`` / ``torch.compile`` see every parameter the step uses, however
    the trainer calls its network (``net(x)``, ``net.features(x)``, ``net.encode(x)``, ...)."""

    def __init__(self, trainer, net: torch.nn.Module, extras: Mapping[str, torch.nn.Module]):
        super().__init__()
        self.net = net
        self.extras = torch.nn.ModuleDict(dict(extras))
        self._step = trainer.training_step  # a bound method, not a submodule

    def forward(self, batch: Batch):
        return self._step(batch)


def _format_terms(terms: Mapping[str, float]) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in terms.items())


class Engine:
    """Runs ``trainer`` on ``net`` over ``loader`` for ``settings.epochs`` epochs.

    Args:
        trainer: a :class:`~openood_ext.trainers.Trainer` (or duck-typed equivalent).
        net: the network (moved to ``device``).
        loader: ID training batches ``(images, labels[, n_skipped])``.
        settings: :class:`EngineSettings`.
        device, num_classes, seed, benchmark: passed to the trainer through its :class:`TrainContext`.
        source: an outlier source (already set up and checked), or None.
        state_path: where the training state is saved after every epoch (None: not saved).
        on_epoch_end: optional callback ``(epoch, record)`` after each epoch (and after the save).
    """

    def __init__(self, trainer, net: torch.nn.Module, loader, settings: EngineSettings, *,
                 device: torch.device | str = "cpu", num_classes: int, seed: int = 0, benchmark=None,
                 source=None, state_path: str | Path | None = None, log=None,
                 on_epoch_end: Callable[[int, dict], None] | None = None):
        self.trainer, self.loader, self.settings = trainer, loader, settings
        self.device = torch.device(device)
        self.world = distributed.world_size()
        if settings.sync_batchnorm and self.world > 1:
            if self.device.type != "cuda":
                raise ConfigError("trainer.sync_batchnorm: torch's SyncBatchNorm runs on CUDA devices only "
                                  "(remove it for a CPU run)")
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        self.net = net.to(self.device)
        if settings.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.source = source
        self.state_path = Path(state_path) if state_path else None
        self.log = log or get_logger()
        self.on_epoch_end = on_epoch_end
        self.batches_per_epoch = len(loader)
        if self.batches_per_epoch == 0:
            raise ConfigError("trainer: the training split yields no batch (is it empty?)")
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / settings.accumulate)
        self.ctx = TrainContext(device=self.device, num_classes=num_classes, epochs=settings.epochs,
                                steps_per_epoch=self.steps_per_epoch, seed=seed, benchmark=benchmark,
                                outliers=source, log=self.log, precision=settings.precision)
        self.autocast = _precision_context(settings.precision, self.device)
        trainer.setup(self.net, self.ctx)
        self.step = self._build_step(seed)
        groups = [dict(g) for g in trainer.parameter_groups()]
        for extra in self.ctx.modules.values():
            if extra.trainable:
                group = {"params": list(extra.module.parameters())}
                if extra.lr is not None:
                    group["lr"] = extra.lr
                if extra.weight_decay is not None:
                    group["weight_decay"] = extra.weight_decay
                groups.append(group)
        self.optimizer = build_optimizer(groups, settings.optimizer)
        self.scheduler = build_scheduler(self.optimizer, settings.scheduler, settings.epochs, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda") if settings.precision == "fp16" else None
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        every = settings.finite_check_every or (GPU_FINITE_CHECK_EVERY if self.device.type == "cuda" else 1)
        self.finite = FiniteWatch(every)
        if self.device.type == "cuda" and settings.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True  # fixed input shapes: the autotuned algorithms pay off
        self.history: list[dict] = []
        self.start_epoch = 0

    def _build_step(self, seed: int):
        """The callable running one training step: the trainer's own ``training_step`` in a single
        process without compile (bit-identical to a run without this code); otherwise the
        :class:`TrainingStep` module, compiled and/or DDP-wrapped."""
        self.ddp = None
        if self.world == 1 and not self.settings.compile:
            return self.trainer.training_step
        extras = {k: m.module for k, m in self.ctx.modules.items() if m.trainable}
        step = TrainingStep(self.trainer, self.net, extras)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel
            ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
                if self.device.type == "cuda" else None
            with distributed.guard("wrapping the network in DistributedDataParallel"):
                step = self.ddp = DistributedDataParallel(
                    step, device_ids=ids, find_unused_parameters=self.settings.find_unused_parameters)
            # rank 0's weights are everywhere now; give every rank its own random stream (noise, augmentation)
            seed_everything(seed + 7919 * distributed.rank())
        return prepare_module(step, compile_backend=self.settings.compile)

    # ------------------------------------------------------------------ state
    def _generator(self):
        return getattr(self.loader, "generator", None)

    def state(self, epoch: int) -> dict:
        """Everything needed to continue after ``epoch`` finished epochs."""
        return {
            "epoch": epoch, "model": self.net.state_dict(),
            "modules": {k: m.module.state_dict() for k, m in self.ctx.modules.items() if m.persistent},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "trainer": self.trainer.state_dict(),
            "states": {k: s.state_dict() for k, s in self.ctx.states.items()},
            "source": self.source.state_dict() if self.source is not None else {},
            "rng": rng_states(self._generator()), "history": list(self.history),
        }

    def save_state(self, epoch: int) -> None:
        """Rank 0 writes the state (with every rank's RNG states under ``rng_ranks`` under torchrun)."""
        if self.state_path is None:
            return
        ranks = distributed.all_gather_object(rng_states(self._generator())) if self.world > 1 else None
        if distributed.is_main():
            blob = self.state(epoch)
            if ranks is not None:
                blob["rng_ranks"] = ranks
            save_training_state(self.state_path, blob)
        distributed.barrier()

    def load_state(self, path: str | Path) -> int:
        """Restore a saved state; returns the number of finished epochs. Under torchrun rank 0 reads the
        file and hands it to the others (no shared file system needed); each rank takes its own RNG state."""
        try:
            blob = distributed.run_on_main(lambda: torch.load(path, map_location="cpu", weights_only=False))
            self.net.load_state_dict(blob["model"])
            for name, sd in blob.get("modules", {}).items():
                if name not in self.ctx.modules:
                    raise KeyError(f"extra module {name!r} is not built by this trainer")
                self.ctx.modules[name].module.load_state_dict(sd)
            self.optimizer.load_state_dict(blob["optimizer"])
            self.scheduler.load_state_dict(blob["scheduler"])
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise CheckpointError(f"{path}: cannot resume from this training state ({type(exc).__name__}: {first})") from None
        if self.scaler is not None and blob.get("scaler"):
            self.scaler.load_state_dict(blob["scaler"])
        self.trainer.load_state_dict(blob.get("trainer", {}))
        for name, sd in blob.get("states", {}).items():
            if name in self.ctx.states:
                self.ctx.states[name].load_state_dict(sd)
        if self.source is not None:
            self.source.load_state_dict(blob.get("source", {}))
        ranks = blob.get("rng_ranks")
        own = ranks[distributed.rank()] if self.world > 1 and ranks and len(ranks) == self.world else blob["rng"]
        restore_rng_states(own, self._generator())
        self.history = list(blob.get("history", []))
        self.start_epoch = int(blob["epoch"])
        return self.start_epoch

    # ------------------------------------------------------------------ loop
    def _train_mode(self) -> None:
        self.net.train()
        for extra in self.ctx.modules.values():
            extra.module.train(extra.trainable)

    def _check_terms(self, terms: Any, epoch: int, index: int) -> torch.Tensor:
        where = f"epoch {epoch + 1}, batch {index + 1}"
        if not isinstance(terms, Mapping) or "loss" not in terms:
            got = sorted(terms) if isinstance(terms, Mapping) else type(terms).__name__
            raise TrainingError(f"trainer {type(self.trainer).__name__}: training_step returned no 'loss' "
                                f"at {where} (got {got}); return {{'loss': tensor, ...}}")
        loss = terms["loss"]
        if not torch.is_tensor(loss) or loss.ndim != 0 or not loss.requires_grad:
            raise TrainingError(f"trainer {type(self.trainer).__name__}: 'loss' must be a scalar tensor with "
                                f"gradient at {where}, got {type(loss).__name__}"
                                f"{'' if not torch.is_tensor(loss) else f' of shape {tuple(loss.shape)}'}")
        return loss

    def _check_finite(self, epoch: int, at_epoch_end: bool = False, step: int = 0) -> None:
        """Read the loss's finiteness verdict (see :mod:`.finite`) when due or at the end of the epoch."""
        if not (at_epoch_end or self.finite.due(step)):
            return
        try:
            self.finite.check()
        except NonFiniteLoss as exc:
            raise self._stopped(exc, epoch) from None

    def _stopped(self, exc: NonFiniteLoss, epoch: int) -> TrainingError:
        kept = (f"the last good training state (after epoch {epoch}) is {self.state_path}"
                if self.state_path is not None and epoch > 0 else "no training state was saved yet")
        return TrainingError(f"training stopped at {exc}; {kept}")

    def _check_finite_now(self, terms, epoch: int, index: int) -> None:
        try:
            self.finite.observe(terms, epoch, index)  # a host read only with finite_check_every: 1
        except NonFiniteLoss as exc:
            raise self._stopped(exc, epoch) from None

    def _on_device(self, images):
        """Images (ID or outlier batches) on the device, in channels_last when that is on."""
        if not torch.is_tensor(images):
            return images
        images = images.to(self.device, non_blocking=True)
        if self.settings.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _optimizer_step(self) -> None:
        if self.scaler is not None and self.settings.grad_clip:
            self.scaler.unscale_(self.optimizer)
        if self.settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.settings.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.settings.scheduler["interval"] == "step":
            self.scheduler.step()

    def run_epoch(self, epoch: int) -> dict:
        """One pass over the loader; returns the epoch's history record."""
        self._train_mode()
        self.trainer.on_epoch_start(epoch)
        for sampler in (getattr(self.loader, "batch_sampler", None), getattr(self.loader, "sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
        if self.source is not None:
            self.source.on_epoch_start(epoch)
        # a dataset-side source (FCDD's supervisor position) made its anomalies in the training set already
        wants_images = getattr(self.source, "kind", None) == "images" and not getattr(self.source, "dataset_side", False)
        accumulate, n_batches = self.settings.accumulate, self.batches_per_epoch
        meter, t0, seen = TermMeter(), time.perf_counter(), 0
        bar = progress(self.loader, desc=f"epoch {epoch + 1}/{self.settings.epochs}", total=n_batches)
        self.optimizer.zero_grad(set_to_none=True)
        batches = self._batches(bar, epoch, wants_images)
        if self.settings.accumulate_mode == "concat" and accumulate > 1:
            batches = _concatenated(batches, accumulate, epoch)
            accumulate, n_batches = 1, self.steps_per_epoch
        for batch in batches:
            index, labels = batch.index, batch.labels
            group_start = (index // accumulate) * accumulate
            group_len = min(accumulate, n_batches - group_start)
            last_of_group = index + 1 == group_start + group_len
            # DDP averages gradients at the last micro-batch of an accumulation group only
            no_sync = self.ddp.no_sync() if self.ddp is not None and not last_of_group else contextlib.nullcontext()
            with no_sync:
                with self.autocast:
                    terms = self.step(batch)
                loss = self._check_terms(terms, epoch, index)
                self._check_finite_now(terms, epoch, index)
                scaled = loss / group_len if group_len > 1 else loss
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            if last_of_group:
                self._optimizer_step()
                self._check_finite(epoch, step=index // accumulate + 1)
            meter.update(terms, len(labels))
            seen += len(labels)
            if hasattr(bar, "set_postfix") and not getattr(bar, "disable", True) and index % 10 == 0:
                bar.set_postfix({k: f"{v:.3g}" for k, v in meter.means().items()})
        self._check_finite(epoch, at_epoch_end=True)
        if self.settings.scheduler["interval"] == "epoch":
            self.scheduler.step()
        if self.world > 1:
            meter.reduce_over_ranks()
            seen = meter.count
        elapsed = time.perf_counter() - t0
        record = {"epoch": epoch + 1, **meter.means(), "lr": self.optimizer.param_groups[0]["lr"],
                  "time_s": round(elapsed, 3), "images_per_s": round(seen / max(elapsed, 1e-9), 1)}
        self.trainer.on_epoch_end(epoch, record)
        return record

    def _batches(self, loader, epoch: int, wants_images: bool):
        """The loader's batches as :class:`Batch` on the device, with their outliers drawn."""
        n_batches = self.batches_per_epoch
        for index, data in enumerate(loader):
            images, labels = data[0], data[1]
            if len(images) == 0:
                continue
            images = self._on_device(images)
            labels = labels.to(self.device, non_blocking=True)
            batch = Batch(images, labels, None, epoch, epoch * n_batches + index, index)
            if wants_images:
                batch.outliers = self._on_device(self.source.draw(batch))
                batch.outlier_masks = getattr(self.source, "last_masks", None)
                batch.outlier_changed = getattr(self.source, "last_changed", None)
            yield batch

    def fit(self, resume: bool = False) -> list[dict]:
        """Train (continuing from ``state_path`` when ``resume`` and it exists); returns the history."""
        with distributed.guard("training"):
            return self._fit(resume)

    def _fit(self, resume: bool) -> list[dict]:
        exists = self.state_path is not None and distributed.broadcast_object(self.state_path.is_file())
        if resume and exists:
            done = self.load_state(self.state_path)
            self.log.info("resuming training from %s after epoch %d", self.state_path, done)
        for epoch in range(self.start_epoch, self.settings.epochs):
            record = self.run_epoch(epoch)
            self.history.append(record)
            terms = {k: v for k, v in record.items() if k not in ("epoch", "lr", "time_s", "images_per_s")}
            self.log.info("epoch %d/%d: %s | lr %.4g | %.1f s, %.0f img/s", epoch + 1, self.settings.epochs,
                          _format_terms(terms), record["lr"], record["time_s"], record["images_per_s"])
            self.save_state(epoch + 1)
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch + 1, record)
        return self.history


def _concatenated(batches, n: int, epoch: int):
    """``accumulate_mode: concat``: every ``n`` consecutive batches (the last group may be shorter) as one
    batch, images, labels and outliers concatenated (FCDD's ``acc_batches``); index = the group's index."""
    group: list[Batch] = []
    steps = 0

    def cat(parts: list[Batch], key: str):
        values = [getattr(b, key) for b in parts]
        return None if any(v is None for v in values) else torch.cat(values)

    def joined(parts: list[Batch], index: int) -> Batch:
        return Batch(cat(parts, "images"), cat(parts, "labels"), cat(parts, "outliers"), epoch, parts[0].step,
                     index, cat(parts, "outlier_masks"), cat(parts, "outlier_changed"))

    for batch in batches:
        group.append(batch)
        if len(group) == n:
            yield joined(group, steps)
            group, steps = [], steps + 1
    if group:
        yield joined(group, steps)


def save_training_state(path: Path, blob: dict) -> None:
    """Write a training state atomically (a killed process leaves the previous one intact)."""
    write_stream(path, lambda fh: torch.save(blob, fh))
