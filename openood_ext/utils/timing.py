"""Timing helpers for the benchmark commands."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time in seconds of ``repeats`` calls of ``fn`` after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def alternate(a: Callable[[], float], b: Callable[[], float], rounds: int) -> tuple[list[float], list[float]]:
    """``rounds`` measurements of each of ``a`` and ``b`` (each returns its own figure, e.g. items per
    second) after one untimed warm-up call each, in ABBA order: which one runs first changes every round,
    so a drift or an order effect (caches, a neighbour's load) does not favour one side."""
    a(), b()
    out_a, out_b = [], []
    for r in range(rounds):
        if r % 2 == 0:
            out_a.append(a())
            out_b.append(b())
        else:
            out_b.append(b())
            out_a.append(a())
    return out_a, out_b


@contextmanager
def add_elapsed(timings: dict[str, float], label: str) -> Iterator[None]:
    """Add the wall time of the ``with`` block to ``timings[label]`` (seconds; repeated labels add up)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[label] = timings.get(label, 0.0) + time.perf_counter() - start
