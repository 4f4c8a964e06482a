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
      precision: fp32              # fp32 | bf16 | fp16 (fp16: CUDA only, with loss scaling)
      grad_clip: null              # max global gradient norm
      outliers: {name: oe_images, limit: null}   # SYNTHESIZERS entry (default: the trainer's own)
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..config import to_plain
from ..errors import CheckpointError, ConfigError, OpenOODError
from ..utils.io import write_with
from ..utils.runtime import get_logger, progress
from .optim import build_optimizer, build_scheduler, check_optimizer_spec, check_schedule_spec
from .resume import restore_rng_states, rng_states
from .trainer import Batch, TrainContext

ENGINE_KEYS = ("epochs", "batch_size", "optimizer", "scheduler", "accumulate", "precision", "grad_clip", "outliers")
PRECISIONS = ("fp32", "bf16", "fp16")


class TrainingError(OpenOODError):
    """Training cannot go on (a missing or non-finite loss); the last good training state is kept."""


def _positive_int(key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key}: expected an integer >= 1, got {value!r}")
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

    @classmethod
    def from_config(cls, spec: Mapping[str, Any]) -> "EngineSettings":
        epochs = _positive_int("trainer.epochs", spec.get("epochs", 100))
        batch_size = _positive_int("trainer.batch_size", spec.get("batch_size", 128))
        accumulate = _positive_int("trainer.accumulate", spec.get("accumulate", 1))
        precision = spec.get("precision", "fp32")
        if precision not in PRECISIONS:
            raise ConfigError(f"trainer.precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
        clip = spec.get("grad_clip")
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip <= 0):
            raise ConfigError(f"trainer.grad_clip: expected a positive number or null, got {clip!r}")
        outliers = spec.get("outliers")
        if outliers is not None and not isinstance(outliers, (str, Mapping)):
            raise ConfigError(f"trainer.outliers: expected a source name or mapping, got {outliers!r}")
        sched = spec.get("scheduler", "cosine")
        return cls(epochs, batch_size, check_optimizer_spec(spec.get("optimizer") or {}),
                   check_schedule_spec(sched, epochs), accumulate, precision,
                   None if clip is None else float(clip), outliers)


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

    def means(self) -> dict[str, float]:
        return {k: float(v) / max(self.count, 1) for k, v in self.sums.items()}


def _precision_context(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("trainer.precision: fp16 needs a CUDA device (use bf16 or fp32 on the CPU)")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _first_non_finite(terms: Mapping[str, Any]) -> tuple[str, float]:
    """The first named term (other than ``loss``) that is NaN/inf, else ``loss`` itself; with its value."""
    for key, value in terms.items():
        v = float(value.detach()) if torch.is_tensor(value) and value.numel() == 1 else value
        if key != "loss" and isinstance(v, float) and not math.isfinite(v):
            return key, v
    return "loss", float(terms["loss"].detach())


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
        self.net = net.to(self.device)
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
        self.history: list[dict] = []
        self.start_epoch = 0

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
        if self.state_path is not None:
            save_training_state(self.state_path, self.state(epoch))

    def load_state(self, path: str | Path) -> int:
        """Restore a saved state; returns the number of finished epochs."""
        try:
            blob = torch.load(path, map_location="cpu", weights_only=False)
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
        restore_rng_states(blob["rng"], self._generator())
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
        if not torch.isfinite(loss.detach()):
            culprit, value = _first_non_finite(terms)
            kept = (f"the last good training state (after epoch {epoch}) is {self.state_path}"
                    if self.state_path is not None and epoch > 0 else "no training state was saved yet")
            raise TrainingError(f"training stopped at {where}: loss term '{culprit}' is {value}; {kept}")
        return loss

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
        sampler = getattr(self.loader, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if self.source is not None:
            self.source.on_epoch_start(epoch)
        wants_images = getattr(self.source, "kind", None) == "images"
        accumulate, n_batches = self.settings.accumulate, self.batches_per_epoch
        meter, t0, seen = TermMeter(), time.perf_counter(), 0
        bar = progress(self.loader, desc=f"epoch {epoch + 1}/{self.settings.epochs}", total=n_batches)
        self.optimizer.zero_grad(set_to_none=True)
        for index, data in enumerate(bar):
            images, labels = data[0], data[1]
            if len(images) == 0:
                continue
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            batch = Batch(images, labels, None, epoch, epoch * n_batches + index, index)
            if wants_images:
                batch.outliers = self.source.draw(batch)
            with self.autocast:
                terms = self.trainer.training_step(batch)
            loss = self._check_terms(terms, epoch, index)
            group_start = (index // accumulate) * accumulate
            group_len = min(accumulate, n_batches - group_start)
            scaled = loss / group_len if group_len > 1 else loss
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            if index + 1 == group_start + group_len:
                self._optimizer_step()
            meter.update(terms, len(labels))
            seen += len(labels)
            if hasattr(bar, "set_postfix") and not getattr(bar, "disable", True) and index % 10 == 0:
                bar.set_postfix({k: f"{v:.3g}" for k, v in meter.means().items()})
        if self.settings.scheduler["interval"] == "epoch":
            self.scheduler.step()
        elapsed = time.perf_counter() - t0
        record = {"epoch": epoch + 1, **meter.means(), "lr": self.optimizer.param_groups[0]["lr"],
                  "time_s": round(elapsed, 3), "images_per_s": round(seen / max(elapsed, 1e-9), 1)}
        self.trainer.on_epoch_end(epoch, record)
        return record

    def fit(self, resume: bool = False) -> list[dict]:
        """Train (continuing from ``state_path`` when ``resume`` and it exists); returns the history."""
        if resume and self.state_path is not None and self.state_path.is_file():
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


def save_training_state(path: Path, blob: dict) -> None:
    """Write a training state atomically (a killed process leaves the previous one intact)."""
    write_with(path, lambda tmp: torch.save(blob, tmp))
