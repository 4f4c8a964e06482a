"""Watching the loss for NaN/inf without a host synchronisation per step.

Reading ``isfinite(loss)`` on the host every step makes the CPU wait for the GPU at every step (the
next batch cannot be queued while the current one runs). :class:`FiniteWatch` keeps the verdict on the
device instead, with the terms of the first bad batch, and reads it every ``every`` optimizer steps and at
the end of each epoch (before the training state is saved, so a saved state is never one that went
non-finite). ``every: 1`` checks each batch, as a CPU run does by default (there a check costs nothing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch


class NonFiniteLoss(Exception):
    """Raised by :meth:`FiniteWatch.check`: ``where`` (epoch and batch, 1-based), the culprit term and value."""

    def __init__(self, where: str, term: str, value: float):
        super().__init__(f"{where}: loss term '{term}' is {value}")
        self.where, self.term, self.value = where, term, value


def _first_non_finite(terms: Mapping[str, float]) -> tuple[str, float]:
    """The first named term (other than ``loss``) that is NaN/inf, else ``loss`` itself; with its value."""
    for key, value in terms.items():
        if key != "loss" and isinstance(value, float) and not math.isfinite(value):
            return key, value
    return "loss", terms["loss"]


class FiniteWatch:
    """``observe(terms, epoch, index)`` after each batch's step (no host read); ``check()`` reads the
    device-side verdict once and raises :class:`NonFiniteLoss` naming the first non-finite batch;
    ``due(step)`` says whether optimizer step ``step`` (1-based) should be followed by a ``check``."""

    def __init__(self, every: int = 1):
        self.every = int(every)
        self._reset()

    def _reset(self) -> None:
        self.bad: torch.Tensor | None = None          # any non-finite loss since the last check (device bool)
        self.first_batch: torch.Tensor | None = None  # global index of the first one (device int, -1: none)
        self.first_terms: dict[str, torch.Tensor] = {}
        self.epochs: dict[int, int] = {}               # global batch index -> (epoch, batch) for the message

    def observe(self, terms: Mapping[str, Any], epoch: int, index: int) -> None:
        loss = terms["loss"].detach()
        if self.every == 1:  # check now, with the old per-batch semantics
            if not torch.isfinite(loss):
                values = {k: float(v.detach()) if torch.is_tensor(v) and v.numel() == 1 else v
                          for k, v in terms.items()}
                term, value = _first_non_finite(values)
                raise NonFiniteLoss(f"epoch {epoch + 1}, batch {index + 1}", term, value)
            return
        bad = ~torch.isfinite(loss)
        key = len(self.epochs)
        self.epochs[key] = (epoch, index)
        if self.bad is None:
            self.bad, newly = bad, bad
            self.first_batch = torch.where(bad, key, -1)
        else:
            newly = bad & ~self.bad
            self.first_batch = torch.where(newly, key, self.first_batch)
            self.bad = self.bad | bad
        for name, value in terms.items():
            if torch.is_tensor(value) and value.numel() == 1:
                value = value.detach().reshape(()).float()
                kept = self.first_terms.get(name)
                self.first_terms[name] = value if kept is None else torch.where(newly, value, kept)

    def due(self, step: int) -> bool:
        return self.every > 1 and step % self.every == 0

    def check(self) -> None:
        """One host read of the verdict (none when nothing was observed since the last check)."""
        if self.bad is None:
            return
        if not bool(self.bad):
            self._reset()
            return
        epoch, index = self.epochs[int(self.first_batch)]
        values = {k: float(v) for k, v in self.first_terms.items()}
        term, value = _first_non_finite(values)
        self._reset()
        raise NonFiniteLoss(f"epoch {epoch + 1}, batch {index + 1}", term, value)
