"""Seeding, device selection and logging setup."""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError

LOGGER_NAME = "openood_ext"


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cpu``/``cuda``/``cuda:1`` as given."""
    spec = str(spec or "auto")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: '{spec}' was asked for but CUDA is not available (use auto or cpu)")
    try:
        return torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"device: '{spec}' is not a device (expected auto, cpu, cuda or cuda:N)") from exc


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (not the stream of setup time), so
    a redirected or replaced stderr (in-process CLI calls, tests) never receives a closed-file error."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def setup_logging(log_file: str | os.PathLike | None = None, verbose: bool = False) -> logging.Logger:
    """Log to stderr (INFO) and, if given, to ``log_file`` (DEBUG). Idempotent."""
    logger = get_logger()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = _StderrHandler()
    console.setLevel(logging.DEBUG if verbose else logging.INFO)
    console.addFilter(lambda record: not getattr(record, "file_only", False))
    console.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
    logger.addHandler(console)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, mode="a")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(fh)
    return logger


def log_to_file(text: str) -> None:
    """Append ``text`` (e.g. a table already printed on stdout) to the run's log file, not the console."""
    get_logger().info("%s", text, extra={"file_only": True})


PROGRESS_LOG_EVERY_S = 15.0


def progress(iterable, desc: str, total: int | None = None):
    """tqdm progress bar on stderr; when stderr is not a terminal (logs, CI), a log line every
    ``PROGRESS_LOG_EVERY_S`` seconds for loops that run that long, so long steps never look stuck."""
    if sys.stderr.isatty():
        from tqdm.auto import tqdm
        return tqdm(iterable, desc=desc, total=total, leave=False)
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    return _LoggedProgress(iterable, desc, total)


class _LoggedProgress:
    """Iterates like tqdm (``set_postfix``/``set_description``/``close`` accepted) and logs now and then."""

    def __init__(self, iterable, desc: str, total: int | None):
        self.iterable, self.desc, self.total, self.postfix = iterable, desc, total, ""

    def set_postfix(self, values=None, **kwargs):
        values = {**(values or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_description(self, desc: str, *_, **__):
        self.desc = desc

    def close(self):
        pass

    def __len__(self):
        return len(self.iterable)

    def __iter__(self):
        import time
        start = last = time.monotonic()
        done = 0
        for item in self.iterable:
            yield item
            done += 1
            now = time.monotonic()
            if now - last >= PROGRESS_LOG_EVERY_S:
                last = now
                of = f"/{self.total}" if self.total else ""
                extra = f", {self.postfix}" if self.postfix else ""
                get_logger().info("%s: %d%s done (%.0f s%s)", self.desc, done, of, now - start, extra)
