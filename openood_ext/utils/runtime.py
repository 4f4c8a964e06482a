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
    console = logging.StreamHandler(sys.stderr)
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


def progress(iterable, desc: str, total: int | None = None):
    """tqdm progress bar on stderr, silent when stderr is not a terminal."""
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, total=total, leave=False, disable=not sys.stderr.isatty())
