"""Atomic file writes: write to a temporary file in the same directory, then rename.

A reader never sees a half-written file, and a failed write (disk full, Ctrl-C) leaves the previous
version of the file untouched. Files get the permissions of an ordinary ``open(path, "w")`` (0666
minus the umask), not ``mkstemp``'s private 0600, so a shared results folder stays readable.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import OpenOODError
from .interrupts import critical


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a unique temporary path next to ``path``; on success rename it onto ``path``.

    SIGINT/SIGTERM arriving meanwhile take effect after the write. On failure (disk full, ...) the
    temporary file is removed, ``path`` keeps its previous content and OpenOODError names the file.
    """
    path = Path(path)
    with critical():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as exc:
            raise OpenOODError(f"could not write {path}: {exc.strerror or exc}") from None
        os.close(fd)
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; results follow the user's umask
        try:
            yield tmp
            os.replace(tmp, path)
        except OSError as exc:
            raise OpenOODError(f"could not write {path}: {exc.strerror or exc}") from None
        finally:
            if tmp.exists():
                tmp.unlink()


def current_umask() -> int:
    """The process's umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Atomically write ``path`` with ``writer(tmp_path)`` (e.g. ``np.savez``, ``torch.save``)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def _json_default(obj: Any) -> Any:
    import numpy as np
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
