"""``openood-ext data``: prepare benchmark data, report what is there, turn a folder into a benchmark.

    openood-ext data prepare <benchmark> [--root DIR] [--from PATH ...] [--no-download]
    openood-ext data status [<benchmark> ...] [--root DIR]
    openood-ext data from-folder <dir> --name <benchmark> [--ood DIR ...] [--near DIR ...] [--ood-val DIR]

``--root`` defaults to ``$OPENOOD_EXT_DATA``, else ``./data`` (the same default as the benchmark configs).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from ..config import load_config
from ..errors import ConfigError, DataError
from ..utils.interrupts import RunInterrupted, graceful_interrupts
from ..utils.runtime import setup_logging
from .benchmark import resolve_path
from .from_folder import from_folder
from .imglist import read_imglist
from .prepare import BENCHMARK_LISTS, IMAGE_DIR, prepare, unfinished_extractions
from .registry import BENCHMARKS

BENCHMARK_CONFIG_DIR = Path("configs") / "benchmarks"
STATUS_BENCHMARKS = ("digits", "cifar10", "cifar100", "imagenet200", "imagenet", "mnist", "fmnist", "cifar10_ad")


def default_root() -> Path:
    return Path(os.environ.get("OPENOOD_EXT_DATA") or "data")


def benchmark_config_path(name: str) -> Path:
    """``configs/benchmarks/<name>.yml`` (from the working directory, else the repository), or a path."""
    if name.endswith((".yml", ".yaml")):
        path = Path(name)
    else:
        path = resolve_path(BENCHMARK_CONFIG_DIR / f"{name}.yml")
    if not path.is_file():
        known = sorted(p.stem for p in resolve_path(BENCHMARK_CONFIG_DIR).glob("*.yml"))
        raise ConfigError(f"benchmark '{name}': no config {path} (known: {', '.join(known)})")
    return path


def load_benchmark(name: str, root: Path | None):
    """Build the benchmark of ``configs/benchmarks/<name>.yml``, with ``data_root`` replaced by ``root``."""
    overrides = [f"benchmark.data_root={root}"] if root is not None else []
    cfg = load_config([benchmark_config_path(name)], overrides)
    return BENCHMARKS.build(cfg.benchmark)


# ---------------------------------------------------------------------------------------------- prepare
def cmd_prepare(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="openood-ext data prepare",
                                     description="Download (or take from --from) a benchmark's images and "
                                                 "write its image lists.")
    parser.add_argument("benchmark", help=f"one of: {', '.join([*BENCHMARK_LISTS, 'mvtec'])} (mvtec: --from "
                                          f"its archive(s) or extracted folder)")
    parser.add_argument("--root", type=Path, default=None, help="data root (default $OPENOOD_EXT_DATA or ./data)")
    parser.add_argument("--from", dest="sources", action="append", default=[], metavar="PATH",
                        help="local archive or folder to use instead of downloading (repeatable)")
    parser.add_argument("--no-download", action="store_true",
                        help="never use the network (implied by --from: only the given sets are used)")
    parser.add_argument("--imglist-dir", type=Path, default=None,
                        help="write the image lists here (default <root>/benchmark_imglist/<benchmark>)")
    parser.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds")
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    setup_logging()
    root = args.root or default_root()
    try:
        with graceful_interrupts():
            report = prepare(args.benchmark, root, args.sources,
                             allow_download=not (args.no_download or args.sources),
                             imglist_dir=args.imglist_dir, timeout=args.timeout)
    except (RunInterrupted, KeyboardInterrupt) as exc:
        unfinished = ", ".join([*unfinished_extractions(root / IMAGE_DIR),
                                *unfinished_extractions(root / "mvtec_anomaly_detection")]) or "nothing"
        print(f"openood-ext data prepare: {exc or 'interrupted'}; finished files are kept under {root} "
              f"(unfinished: {unfinished}); to continue, run the same command again: openood-ext data prepare "
              f"{' '.join(argv)}", file=sys.stderr)
        return 130
    images_root = root / ("mvtec_anomaly_detection" if args.benchmark == "mvtec" else "images_classic")
    for set_name, n in report.ingested.items():
        print(f"{set_name}: {n} images under {images_root / set_name}")
    for fname, n in report.lists.items():
        if n is not None:
            print(f"  {fname}: {n} images")
    for fname, why in report.absent.items():
        print(f"  {fname}: absent ({why})")
    print(f"prepared {args.benchmark} under {root} in {report.seconds:.1f} s")
    return 0


# ---------------------------------------------------------------------------------------------- status
def split_status(bench, split) -> dict:
    """present/expected image counts of one split, and which image list was used."""
    row = {"split": split.name, "group": split.group, "imglist": str(split.imglist), "expected": None,
           "present": 0}
    if not split.imglist.is_file():
        source = bench.source_list(split) if hasattr(bench, "source_list") else None
        row["state"] = "no image list"
        if source is not None and not source.is_file():  # one-vs-rest: the full list is what is missing
            row["imglist"] = str(source)
        return row
    try:
        entries = read_imglist(split.imglist)
    except DataError as exc:
        row["state"] = f"bad image list: {exc}"
        return row
    root = bench.image_root_of(split)
    row["expected"] = len(entries)
    row["present"] = sum(os.path.exists(os.path.join(root, e.path)) for e in entries)
    row["state"] = "ok" if row["present"] == row["expected"] else ("absent" if row["present"] == 0 else "partial")
    return row


def cmd_status(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="openood-ext data status",
                                     description="Per benchmark and split: images present / expected.")
    parser.add_argument("benchmarks", nargs="*", help=f"default: {' '.join(STATUS_BENCHMARKS)}")
    parser.add_argument("--root", type=Path, default=None, help="data root (default: each benchmark's data_root)")
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in args.benchmarks or STATUS_BENCHMARKS:
        bench = load_benchmark(name, args.root)
        print(f"{name}  (data_root {bench.data_root})")
        for split in bench.splits():
            row = split_status(bench, split)
            counts = "-" if row["expected"] is None else f"{row['present']}/{row['expected']}"
            where = "" if row["state"] == "ok" else f"  {row['state']}: {row['imglist']}" \
                if row["state"] == "no image list" else f"  {row['state']}"
            print(f"  {row['group']:9s} {row['split']:14s} {counts:>15s}{where}")
    return 0


# ---------------------------------------------------------------------------------------------- from-folder
def cmd_from_folder(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="openood-ext data from-folder",
        description="A class-per-folder tree (ID) plus folders of OOD images -> image lists + benchmark config.")
    parser.add_argument("directory", type=Path, help="ID images as <directory>/<class>/<image>")
    parser.add_argument("--name", required=True, help="benchmark name (config and image-list folder)")
    parser.add_argument("--ood", action="extend", nargs="+", default=[], metavar="[NAME=]DIR",
                        help="far-OOD folder(s): --ood junk/ other/ or --ood junk/ --ood other/")
    parser.add_argument("--near", action="extend", nargs="+", default=[], metavar="[NAME=]DIR",
                        help="near-OOD folder(s)")
    parser.add_argument("--ood-val", default=None, metavar="DIR", help="OOD folder for parameter search")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("."),
                        help="write configs/benchmarks/<name>.yml and benchmark_imglist/<name>/ under this directory")
    parser.add_argument("--force", action="store_true", help="overwrite an existing benchmark of that name")
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    result = from_folder(args.directory, args.name, far=args.ood, near=args.near, ood_val=args.ood_val,
                         val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed,
                         image_size=args.image_size, out=args.out, force=args.force)
    for fname, n in result.counts.items():
        print(f"  {fname}: {n} images")
    print(f"wrote {result.config} and {result.imglist_dir}/ (data_root {result.data_root})")
    return 0


COMMANDS = {"prepare": cmd_prepare, "status": cmd_status, "from-folder": cmd_from_folder}
USAGE = "usage:\n" + __doc__.split("\n\n")[1]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(argv or [])
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command = COMMANDS.get(argv[0])
    if command is None:
        raise ConfigError(f"unknown data command '{argv[0]}' (known: {', '.join(COMMANDS)})")
    return command(argv[1:])
