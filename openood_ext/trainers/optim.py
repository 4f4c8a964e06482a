"""Optimizers and learning-rate schedules built from config.

``trainer.optimizer`` (defaults shown)::

    optimizer: {name: sgd, lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 5.0e-4}
    optimizer: {name: adam, lr: 1.0e-3, weight_decay: 0, betas: [0.9, 0.999]}
    optimizer: {name: adamw, lr: 1.0e-3, weight_decay: 0.01}

``trainer.scheduler`` gives a multiplicative factor f(t) of the base learning rate of every parameter
group (so per-group rates keep their ratio). ``t`` counts optimizer steps (``interval: step``) or
finished epochs (``interval: epoch``); ``T`` is the run's length in the same unit::

    constant:     f = 1
    cosine:       f = 0.5 (1 + cos(pi t / T)) (1 - r) + r          r = min_lr_ratio (default 1e-4)
    multistep:    f = gamma ** (number of milestones <= t)         milestones in epochs
    exponential:  f = gamma ** t                                   (FCDD: gamma = 0.98 per epoch)
    supcon:       SupCon/CIDER/NPOS's adjust_learning_rate + warmup_learning_rate (always per step):
                  per 0-based epoch e = t // N, f = r + (1 - r) (1 + cos(pi e / E)) / 2  (r = min_lr_ratio),
                  and while e_w = e + warmup_epoch_base <= W (W = warmup_epochs):
                  f = w0 + p (f(W) - w0), p = (b + (e_w - 1) N) / (W N), b = t % N + 1 (1-based batch),
                  w0 = warmup_from_ratio (SupCon's absolute warmup_from divided by the base lr)

A linear warm-up (``warmup_epochs: W``, possibly fractional) multiplies f by ``(t + 1) / W_t`` while
``t + 1 < W_t`` (``W_t`` = W in the schedule's unit), so the first step already has a positive rate.
Multistep milestones are given in epochs whatever the interval.

``supcon`` reproduces the published per-step warm-up of OpenOOD v1.5's NPOS trainer exactly with
``warmup_epoch_base: 0``: it passes the 0-based epoch to a formula written for 1-based epochs, so p <= 0
through its first epoch and the learning rate there is **negative** (down to about -0.009 at lr 0.1,
w0 = 0.01), and the warm-up lasts W + 1 epochs. ``warmup_epoch_base: 1`` (default) is the formula as
intended (p in (0, 1] over the first W epochs). Its own linear warm-up aside, the engine's ``cosine``
with ``interval: epoch`` is the same cosine.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Iterable, Mapping

import torch

from ..errors import ConfigError
from ..schema import Range, check_value

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "multistep", "exponential", "supcon")
_OPTIMIZER_KEYS = {
    "sgd": {"name", "lr", "momentum", "nesterov", "weight_decay", "dampening"},
    "adam": {"name", "lr", "weight_decay", "betas", "eps", "amsgrad"},
    "adamw": {"name", "lr", "weight_decay", "betas", "eps", "amsgrad"},
}
_SCHEDULE_KEYS = {"name", "interval", "warmup_epochs", "min_lr_ratio", "milestones", "gamma", "warmup_from_ratio",
                  "warmup_epoch_base"}


def _number(where: str, value: Any, low: float | None = None, *, integer: bool = False,
            strict_low: bool = False) -> float:
    """``value`` if it is a number (an int when ``integer``) at or above ``low`` (above, when ``strict_low``)."""
    check_value(where, value, Annotated[int if integer else float, Range(low, open_low=strict_low)])
    return value


def check_optimizer_spec(spec: Mapping[str, Any], where: str = "trainer.optimizer") -> dict:
    """Validate an optimizer mapping; returns a plain dict with defaults filled in."""
    spec = dict(spec or {})
    name = str(spec.get("name", "sgd")).lower()
    if name not in OPTIMIZERS:
        raise ConfigError(f"{where}.name: unknown optimizer {name!r} (known: {', '.join(OPTIMIZERS)})")
    unknown = sorted(set(spec) - _OPTIMIZER_KEYS[name])
    if unknown:
        raise ConfigError(f"{where}: {name} does not take {', '.join(map(repr, unknown))} "
                          f"(it takes: {', '.join(sorted(_OPTIMIZER_KEYS[name] - {'name'}))})")
    defaults = {"sgd": {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
                "adam": {"lr": 1e-3, "weight_decay": 0.0}, "adamw": {"lr": 1e-3, "weight_decay": 0.01}}[name]
    out = {**defaults, **spec, "name": name}
    _number(f"{where}.lr", out["lr"], 0, strict_low=True)
    _number(f"{where}.weight_decay", out["weight_decay"], 0)
    if name == "sgd":
        _number(f"{where}.momentum", out["momentum"], 0)
        if out["nesterov"] and out["momentum"] == 0:
            raise ConfigError(f"{where}: nesterov needs momentum > 0")
    return out


def check_schedule_spec(spec: Mapping[str, Any] | str | None, epochs: int,
                        where: str = "trainer.scheduler") -> dict:
    """Validate a schedule mapping (or a bare name); returns a plain dict with defaults filled in."""
    if spec is None:
        spec = {"name": "constant"}
    elif isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    name = str(spec.get("name", "cosine")).lower()
    if name not in SCHEDULES:
        raise ConfigError(f"{where}.name: unknown scheduler {name!r} (known: {', '.join(SCHEDULES)})")
    unknown = sorted(set(spec) - _SCHEDULE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} "
                          f"(known: {', '.join(sorted(_SCHEDULE_KEYS - {'name'}))})")
    supcon = {"warmup_from_ratio": 0.01, "warmup_epoch_base": 1} if name == "supcon" else {}
    extra = sorted(set(spec) & {"warmup_from_ratio", "warmup_epoch_base"} - set(supcon))
    if extra:
        raise ConfigError(f"{where}: {', '.join(extra)} apply to the supcon schedule only (name: {name})")
    out = {"interval": "step" if name in ("cosine", "supcon") else "epoch", "warmup_epochs": 0, "min_lr_ratio": 1e-4,
           "milestones": [], "gamma": 0.1, **supcon, **spec, "name": name}
    if supcon:
        if out["interval"] != "step":
            raise ConfigError(f"{where}.interval: supcon changes the rate every step (its warm-up); use interval: step")
        if out["warmup_epoch_base"] not in (0, 1):
            raise ConfigError(f"{where}.warmup_epoch_base: expected 1 (as intended) or 0 (OpenOOD's NPOS trainer), "
                              f"got {out['warmup_epoch_base']!r}")
        _number(f"{where}.warmup_from_ratio", out["warmup_from_ratio"], 0)
    if out["interval"] not in ("step", "epoch"):
        raise ConfigError(f"{where}.interval: expected 'step' or 'epoch', got {out['interval']!r}")
    _number(f"{where}.warmup_epochs", out["warmup_epochs"], 0)
    _number(f"{where}.min_lr_ratio", out["min_lr_ratio"], 0)
    _number(f"{where}.gamma", out["gamma"], 0, strict_low=True)
    milestones = list(out["milestones"] or [])
    for m in milestones:
        _number(f"{where}.milestones", m, 0, integer=True)
    if milestones != sorted(milestones):
        raise ConfigError(f"{where}.milestones: expected increasing epochs, got {milestones}")
    if name == "multistep" and not milestones:
        raise ConfigError(f"{where}: multistep needs milestones (epochs), e.g. [100, 150]")
    out["milestones"] = milestones
    return out


def schedule_factor(spec: Mapping[str, Any], t: int, epochs: int, steps_per_epoch: int) -> float:
    """The learning-rate factor after ``t`` scheduler steps (see the module docstring)."""
    per_step = spec["interval"] == "step"
    unit = steps_per_epoch if per_step else 1
    total = max(1, epochs * unit)
    name = spec["name"]
    if name == "supcon":
        return _supcon_factor(spec, t, epochs, steps_per_epoch)
    if name == "cosine":
        r = float(spec["min_lr_ratio"])
        factor = 0.5 * (1 + math.cos(math.pi * min(t, total) / total)) * (1 - r) + r
    elif name == "multistep":
        epoch = t / unit
        factor = spec["gamma"] ** sum(epoch >= m for m in spec["milestones"])
    elif name == "exponential":
        factor = spec["gamma"] ** (t / unit if per_step else t)
    else:
        factor = 1.0
    warmup = float(spec["warmup_epochs"]) * unit
    if warmup > 0 and t + 1 < warmup:
        factor *= (t + 1) / warmup
    return factor


def _supcon_factor(spec: Mapping[str, Any], t: int, epochs: int, steps_per_epoch: int) -> float:
    r, n, total = float(spec["min_lr_ratio"]), max(1, steps_per_epoch), max(1, epochs)

    def cosine(e: float) -> float:
        return r + (1 - r) * (1 + math.cos(math.pi * e / total)) / 2

    epoch, batch = divmod(int(t), n)
    warm, e_w = float(spec["warmup_epochs"]), epoch + int(spec["warmup_epoch_base"])
    if warm > 0 and e_w <= warm:
        p = (batch + 1 + (e_w - 1) * n) / (warm * n)
        w0 = float(spec["warmup_from_ratio"])
        return w0 + p * (cosine(warm) - w0)
    return cosine(epoch)


def build_optimizer(groups: Iterable[dict], spec: Mapping[str, Any]) -> torch.optim.Optimizer:
    """An optimizer over parameter groups; group keys (``lr``, ``weight_decay``) override ``spec``."""
    spec = dict(spec)
    name = spec.pop("name")
    if "betas" in spec:
        spec["betas"] = tuple(spec["betas"])
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    groups = [g for g in groups if any(p.requires_grad for p in g["params"])]
    for g in groups:
        g["params"] = [p for p in g["params"] if p.requires_grad]
    if not groups:
        raise ConfigError("trainer: the network and its extra modules have no trainable parameters")
    return cls(groups, **spec)


def build_scheduler(optimizer: torch.optim.Optimizer, spec: Mapping[str, Any], epochs: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR applying :func:`schedule_factor` to every group's base rate."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: schedule_factor(spec, t, epochs, steps_per_epoch))
