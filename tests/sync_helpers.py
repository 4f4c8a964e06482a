"""Counting host synchronisations on the CPU.

On a GPU each of these operations waits for the device (the value has to reach the host), so a training
step that calls them stalls the pipeline; on the CPU they cost nothing, so they are counted instead:
:func:`count_host_syncs` patches the tensor methods and torch functions that read device values on the
host (``item``, ``bool()``/``float()``/``int()``, ``tolist``, ``numpy``, ``cpu``, ``nonzero``,
``unique``, ``bincount``, ``masked_select``, one-argument ``where``, boolean-mask indexing) and counts
their calls. ``.cpu()`` of a tensor already on the CPU counts too (on a GPU run it is a copy). Reads made
inside :func:`openood_ext.utils.runtime.device_check` do not count: on CUDA it queues the check instead."""

from __future__ import annotations

import contextlib
import traceback
from collections import Counter

import torch

METHODS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu", "nonzero",
           "unique", "bincount", "masked_select")
FUNCTIONS = ("nonzero", "unique", "bincount", "masked_select", "argwhere")


#: functions whose host read happens on the CPU only (on CUDA the check is queued on the device)
QUEUED_ON_GPU = {"device_check"}


def _bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class SyncCounter:
    """``count``: host syncs seen; ``where``: Counter of 'op at file:line' for the report."""

    def __init__(self):
        self.count = 0
        self.where: Counter = Counter()
        self.active = True
        self._depth = 0

    def hit(self, op: str) -> None:
        if not self.active or self._depth:
            return
        stack = traceback.extract_stack()[:-2]
        if any(f.name in QUEUED_ON_GPU for f in stack):
            return
        self.count += 1
        frame = next((f for f in reversed(stack) if "openood_ext" in f.filename), None)
        self.where[f"{op} at {frame.filename.rsplit('openood_ext', 1)[-1]}:{frame.lineno}" if frame else op] += 1


@contextlib.contextmanager
def count_host_syncs():
    """Yields a :class:`SyncCounter` counting host syncs until the block ends (patches undone after)."""
    counter = SyncCounter()
    saved = []

    def wrap(owner, name, check=None):
        original = getattr(owner, name)

        def patched(*args, **kwargs):
            if check is None or check(*args, **kwargs):
                counter.hit(name)
            counter._depth += 1  # nested calls (unique -> nonzero) count once
            try:
                return original(*args, **kwargs)
            finally:
                counter._depth -= 1

        saved.append((owner, name, original))
        setattr(owner, name, patched)

    for name in METHODS:
        wrap(torch.Tensor, name)
    for name in FUNCTIONS:
        wrap(torch, name)
    wrap(torch, "where", lambda *a, **k: len(a) + len(k) == 1)
    wrap(torch.Tensor, "__getitem__", lambda self, index: _bool_index(index))
    wrap(torch.Tensor, "__setitem__", lambda self, index, value: _bool_index(index))
    try:
        yield counter
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)
