"""Atomic file writes: write to a temporary file in the same directory, then rename.

Every file the toolkit writes goes through here (:func:`write_text`, :func:`write_json`, :func:`write_with`
for writers that take a path, :func:`write_stream` for writers that take an open binary file, such as
``torch.save``). A reader never sees a half-written file, and a failed write (disk full, Ctrl-C) leaves the
previous version of the file untouched and is one OpenOODError line naming the file. Only a regular file
or an absent path is ever replaced: a directory, symbolic link, device node, FIFO or socket at the target
is refused (:func:`check_replaceable`), since a rename over it would destroy it. Files get the permissions of an ordinary ``open(path, "w")`` (0666
minus the umask), not ``mkstemp``'s private 0600, so a shared results folder stays readable.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from ..errors import OpenOODError
from .interrupts import critical

_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"))


def non_regular_kind(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it exists and is not a regular file ("a directory", "a character device",
    "a symbolic link", ...; a link is not followed); None for a regular file or an absent path."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise OpenOODError(f"could not write {path}: {exc.strerror or exc}") from None
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_replaceable(path: str | os.PathLike, what: str = "") -> None:
    """OpenOODError (one line, naming ``path`` and what it is) unless ``path`` is a regular file or absent."""
    kind = non_regular_kind(path)
    if kind is not None:
        label = f"{what} {path}" if what else str(path)
        raise OpenOODError(f"{label} is {kind}, not a regular file; refusing to replace it (give the path of a file)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a unique temporary path next to ``path``; on success rename it onto ``path``.

    SIGINT/SIGTERM arriving meanwhile take effect after the write. On failure (disk full, ...) the
    temporary file is removed, ``path`` keeps its previous content and OpenOODError names the file.
    ``path`` must be a regular file or absent (:func:`check_replaceable`), checked before and after.
    """
    path = Path(path)
    check_replaceable(path)
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
            check_replaceable(path)  # something else may have appeared there meanwhile
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


def write_stream(path: str | os.PathLike, writer: Callable[[BinaryIO], None]) -> None:
    """Atomically write ``path`` with ``writer(binary_file)``, e.g. ``lambda fh: torch.save(obj, fh)``.

    Given an open file, ``torch.save`` lets the OSError of a failed write (disk full) through, where
    given a path it raises a RuntimeError; so the failure is the same one line as any other write."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        writer(fh)


def _json_default(obj: Any) -> Any:
    import numpy as np
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
