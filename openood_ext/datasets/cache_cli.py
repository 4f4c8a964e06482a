"""``openood-ext cache``: list and remove decoded-image caches (:mod:`.decoded_cache`).

    openood-ext cache list  [--cache-dir DIR]
    openood-ext cache clean [--older-than DAYS] [--cache-dir DIR] [--dry-run]

``--cache-dir`` defaults to ``cache/decoded`` (where the shipped configs' ``cache_dir: cache`` puts them;
a run with ``data.cache_dir`` set writes there instead). A cache is the pair ``<name>.npy`` +
``<name>.json`` whose sidecar is one the cache wrote (a JSON object with its ``key``, ``shape``, ``kept``
and ``format``); nothing else in the directory is listed or touched. ``list`` prints each cache's image
list, image count and shape, size on disk and time since its last use (the sidecar's mtime, refreshed on
every read); ``clean`` removes every cache (or those unused for more than ``--older-than`` days), array
first, then its sidecar, and prints what it freed. A removed cache is rebuilt by the next run that needs
it. A cache directory that is a file, or (for ``clean``) not writable, is a one-line error.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError

DEFAULT_DIR = Path("cache") / "decoded"
SIDECAR_KEYS = ("key", "shape", "kept", "format")


@dataclass(frozen=True)
class CacheEntry:
    """One decoded-image cache: its array and sidecar, bytes on disk, last use (epoch seconds), the image
    list it holds (None for caches written before the sidecar named it) and the array's shape."""

    array: Path
    sidecar: Path
    size: int
    last_used: float
    imglist: str | None
    shape: tuple[int, ...]


def read_sidecar(path: Path) -> dict | None:
    """The sidecar's content when it is one the decoded-image cache wrote, else None."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(meta, dict) or any(k not in meta for k in SIDECAR_KEYS):
        return None
    return meta


def check_dir(root: Path, writable: bool) -> None:
    """ConfigError (one line) when ``root`` is a file, or not writable when ``writable``."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"cache --cache-dir {root}: is a file, expected a directory of decoded-image caches")
    if writable and root.is_dir() and not os.access(root, os.W_OK | os.X_OK):
        raise ConfigError(f"cache --cache-dir {root}: not writable, nothing can be removed")


def find_caches(root: Path) -> list[CacheEntry]:
    """The decoded-image caches directly under ``root`` (identified by their sidecars), oldest use first."""
    check_dir(root, writable=False)
    if not root.is_dir():
        return []
    found = []
    for sidecar in sorted(root.glob("*.json")):
        array = sidecar.with_suffix(".npy")
        meta = read_sidecar(sidecar)
        if meta is None or not array.is_file():
            continue
        try:
            size = array.stat().st_size + sidecar.stat().st_size
            last_used = sidecar.stat().st_mtime
        except OSError:  # removed meanwhile (another clean, a rebuild)
            continue
        found.append(CacheEntry(array, sidecar, size, last_used, meta.get("imglist"), tuple(meta["shape"])))
    return sorted(found, key=lambda e: e.last_used)


def remove(entry: CacheEntry) -> None:
    """Remove one cache: the array first (a sidecar without its array is never read as a hit)."""
    entry.array.unlink(missing_ok=True)
    entry.sidecar.unlink(missing_ok=True)


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def age(seconds: float) -> str:
    days = seconds / 86400
    return f"{days:.1f} days" if days >= 1 else f"{seconds / 3600:.1f} hours"


def describe(entry: CacheEntry, now: float) -> str:
    shape = "x".join(map(str, entry.shape[1:]))
    return (f"{mib(entry.size):>11}  {age(now - entry.last_used):>11}  {entry.imglist or '(list not recorded)'} "
            f"({entry.shape[0]} images {shape})")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="openood-ext cache",
                                     description="List or remove the decoded-image caches of the tensor data path.")
    parser.add_argument("action", choices=("list", "clean"))
    parser.add_argument("--cache-dir", default=str(DEFAULT_DIR),
                        help=f"directory of decoded-image caches (default: {DEFAULT_DIR})")
    parser.add_argument("--older-than", default=None, metavar="DAYS",
                        help="clean: only caches unused for more than DAYS days (default: every cache)")
    parser.add_argument("--dry-run", action="store_true", help="clean: print what would be removed, remove nothing")
    args = parser.parse_args(list(argv))
    if args.older_than is not None:
        given = args.older_than
        try:
            args.older_than = float(given)
        except ValueError:
            args.older_than = float("nan")
        if not args.older_than >= 0:  # NaN included
            raise ConfigError(f"cache --older-than: expected a number of days >= 0, got {given!r}")
        if args.action == "list":
            raise ConfigError("cache --older-than: only with 'clean'")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse(argv)
    root, now = Path(args.cache_dir), time.time()
    if args.action == "clean" and not args.dry_run:
        check_dir(root, writable=True)
    entries = find_caches(root)
    if args.action == "list":
        total = sum(e.size for e in entries)
        print(f"{len(entries)} decoded-image cache(s) under {root}, {mib(total)}")
        if entries:
            print(f"{'size':>11}  {'last used':>11}  image list")
            for e in entries:
                print(describe(e, now))
        return 0
    cutoff = now - 86400 * args.older_than if args.older_than is not None else None
    chosen = [e for e in entries if cutoff is None or e.last_used < cutoff]
    for e in chosen:
        if not args.dry_run:
            remove(e)
        print(("would remove " if args.dry_run else "removed ") + describe(e, now))
    kept = len(entries) - len(chosen)
    print(f"{'would free' if args.dry_run else 'freed'} {mib(sum(e.size for e in chosen))} "
          f"({len(chosen)} cache(s)); {kept} kept under {root}")
    return 0
