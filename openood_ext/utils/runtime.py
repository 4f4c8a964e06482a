"""Seeding, device selection, logging setup, and the GPU-path options shared by training and evaluation
(precision, channels_last, torch.compile, DataLoader workers/pinning/prefetch)."""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..schema import NonNegativeInt, PositiveInt, check_value

LOGGER_NAME = "openood_ext"


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _local_rank() -> int | None:
    """torchrun's LOCAL_RANK when this process is one of several, else None."""
    try:
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            return int(os.environ.get("LOCAL_RANK", "0") or 0)
    except ValueError:
        return None
    return None


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cpu``/``cuda``/``cuda:1`` as given. Under torchrun
    (WORLD_SIZE > 1) ``auto`` and ``cuda`` mean ``cuda:LOCAL_RANK``: one device per process."""
    spec = str(spec or "auto")
    local = _local_rank()
    if spec == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda") if local is None else _visible_gpu(local, spec)
    if spec == "cuda" and local is not None and torch.cuda.is_available():
        return _visible_gpu(local, spec)
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: '{spec}' was asked for but CUDA is not available (use auto or cpu)")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"device: '{spec}' is not a device (expected auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device: '{spec}' does not exist: {torch.cuda.device_count()} GPU(s) are visible "
                          f"(cuda:0..cuda:{torch.cuda.device_count() - 1}; check CUDA_VISIBLE_DEVICES)")
    return device


def _visible_gpu(local_rank: int, spec: str) -> torch.device:
    """``cuda:LOCAL_RANK``, or a one-line error when torchrun started more processes on this node than
    it has GPUs (CUDA would fail later with "invalid device ordinal")."""
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(f"device: {spec} under torchrun puts process LOCAL_RANK={local_rank} on cuda:{local_rank}, "
                          f"but this node has {count} visible GPU(s); run torchrun with --nproc_per_node <= {count} "
                          f"(or device=cpu)")
    return torch.device(f"cuda:{local_rank}")


PRECISIONS = ("fp32", "bf16", "fp16")


def check_precision(key: str, value, device: torch.device | None = None) -> str:
    """``value`` if it is one of :data:`PRECISIONS` (and usable on ``device``); ConfigError naming ``key``."""
    if value not in PRECISIONS:
        raise ConfigError(f"{key}: expected one of {', '.join(PRECISIONS)}, got {value!r}")
    if value == "fp16" and device is not None and device.type != "cuda":
        raise ConfigError(f"{key}: fp16 needs a CUDA device (use bf16 or fp32 on the CPU)")
    return value


def autocast(precision: str, device: torch.device, key: str = "precision"):
    """Mixed-precision context for ``precision`` on ``device`` (fp32: a no-op context)."""
    import contextlib
    check_precision(key, precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is half precision (float16, bfloat16); any other dtype unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _autocast_off(device_type: str):
    return torch.autocast(device_type=device_type, enabled=False)


def full_precision(fn=None):
    """Autocast switched off (on the CPU and, when present, CUDA) for reductions that must run in float32:
    layer-tap reductions (Gram row sums), Mahalanobis-type statistics, CLUB's log-likelihood, FCDD's
    heatmap upsampling, energy / logsumexp terms.

    Under autocast ``x.float()`` alone is not enough: the next matmul, bmm or conv casts its float32
    inputs back down to bf16/fp16 (Gram's row sums then overflow fp16 to inf). Inside this region
    they stay float32; callers still cast their inputs with ``.float()``. Use it as a context manager
    (``with full_precision(): ...``) or as a decorator (``@full_precision``)."""
    import contextlib
    import functools

    @contextlib.contextmanager
    def region():
        with contextlib.ExitStack() as stack:
            stack.enter_context(_autocast_off("cpu"))
            if torch.cuda.is_available():
                stack.enter_context(_autocast_off("cuda"))
            yield

    if fn is None:
        return region()

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with region():
            return fn(*args, **kwargs)

    return wrapper


def device_check(ok: torch.Tensor, error: Exception) -> None:
    """Raise ``error`` unless the boolean tensor ``ok`` (one element) is true, without stalling a GPU.

    On the CPU this is ``if not ok: raise error``. On CUDA reading ``ok`` on the host would wait for every
    queued kernel (a host synchronisation per call, per step), so the check is queued on the device
    instead (``torch._assert_async``): a failure aborts the process at the next synchronisation with a
    device-side assertion carrying ``error``'s message. For checks of data that should never be bad
    (NaN embeddings, out-of-range labels), where a crash with the message is the right outcome."""
    if ok.device.type == "cuda":
        torch._assert_async(ok, f"{type(error).__name__}: {error}")
    elif not bool(ok):
        raise error


def check_compile(key: str, value) -> str | None:
    """``compile``: false/null (off), true (torch.compile's default backend) or a backend name -> the
    backend name or None."""
    if value is None or value is False:
        return None
    if value is True:
        return "inductor"
    if isinstance(value, str) and value.strip():
        return value
    raise ConfigError(f"{key}: expected true, false or a torch.compile backend name, got {value!r}")


def prepare_module(module: torch.nn.Module, channels_last: bool = False, compile_backend: str | None = None):
    """``module`` in channels_last memory format (in place) and, with a backend, ``torch.compile``-d
    (the compiled wrapper shares the parameters and forwards attribute access)."""
    if channels_last:
        module.to(memory_format=torch.channels_last)
    if compile_backend:
        return torch.compile(module, backend=compile_backend)
    return module


def _bool_or(key: str, value, default, allowed=()):
    if value is None:
        return default
    if isinstance(value, bool) or value in allowed:
        return value
    raise ConfigError(f"config key '{key}': expected true or false{''.join(f' or {a}' for a in allowed)}, got {value!r}")


def loader_options(cfg, device: torch.device) -> dict:
    """DataLoader options from the top-level config (used for training and evaluation loaders)::

        num_workers: 0              # worker processes
        pin_memory: auto            # auto: pinned host memory when the device is CUDA
        persistent_workers: false   # keep workers between epochs (only with num_workers > 0)
        prefetch_factor: null       # batches prefetched per worker (torch's default 2; num_workers > 0)

    With ``num_workers: 0`` the last two are ignored (torch rejects them there)."""
    workers = cfg.get("num_workers", 0)
    check_value("config key 'num_workers'", workers, NonNegativeInt)
    pin = _bool_or("pin_memory", cfg.get("pin_memory", "auto"), "auto", ("auto",))
    opts = {"num_workers": workers, "pin_memory": (device.type == "cuda") if pin == "auto" else bool(pin)}
    persistent = _bool_or("persistent_workers", cfg.get("persistent_workers"), False)
    prefetch = cfg.get("prefetch_factor")
    check_value("config key 'prefetch_factor'", prefetch, PositiveInt | None)
    if workers > 0:
        opts["persistent_workers"] = persistent
        if prefetch is not None:
            opts["prefetch_factor"] = prefetch
    return opts


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


def setup_logging(log_file: str | os.PathLike | None = None, verbose: bool = False, rank: int = 0) -> logging.Logger:
    """Log to stderr (INFO) and, if given, to ``log_file`` (DEBUG). Idempotent. A torchrun process
    other than rank 0 (``rank`` > 0) shows only errors, prefixed with its rank."""
    logger = get_logger()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = _StderrHandler()
    console.setLevel(logging.ERROR if rank > 0 else logging.DEBUG if verbose else logging.INFO)
    console.addFilter(lambda record: not getattr(record, "file_only", False))
    prefix = f"[rank {rank}] " if rank > 0 else ""
    console.setFormatter(logging.Formatter(f"[%(asctime)s] {prefix}%(message)s", "%H:%M:%S"))
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
    ``PROGRESS_LOG_EVERY_S`` seconds for loops that run that long, so long steps never look stuck.
    Under torchrun only rank 0 shows one (the log lines of other ranks are filtered by their logger)."""
    if sys.stderr.isatty() and os.environ.get("RANK", "0") in ("", "0"):
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
