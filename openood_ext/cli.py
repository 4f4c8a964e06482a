"""The ``openood-ext`` command (``python main.py`` is ``openood-ext run``).

    openood-ext run --config a.yml [b.yml ...] [key=value ...] [--key.sub value ...] [--debug]
    openood-ext run --resume RUN_DIR [key=value ...]
    openood-ext list [kind] [pattern]

User errors print one line on stderr and exit with status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import Sequence

from .errors import ConfigError, OpenOODError
from .registry import registries, registry_of
from .utils.interrupts import RunInterrupted

USAGE = """usage: openood-ext run --config FILE.yml [FILE.yml ...] [key=value ...] [--debug]
       openood-ext run --resume RUN_DIR [key=value ...]
       openood-ext list [kind] [pattern]
       openood-ext sweep --config FILE.yml key=[v1,v2] seed=[0,1] [--jobs N] [--backend local|submitit|ray]
       openood-ext cache list|clean [--older-than DAYS] [--cache-dir DIR]
       openood-ext data | leaderboard | bench ...  (see --help of each)"""


def cmd_run(argv: Sequence[str]) -> int:
    from .config import check_config_paths, cli_overrides, load_config, split_run_args
    from .runner import resume_config, run_config
    configs, rest, resume = split_run_args(argv)
    if resume and configs:
        raise ConfigError("give either --config FILES or --resume RUN_DIR, not both")
    check_config_paths(configs)
    cfg = resume_config(resume, cli_overrides(rest)) if resume else load_config(configs, cli_overrides(rest))
    run_config(cfg)
    return 0


def all_registries() -> dict:
    """Every registry of the toolkit, each with its built-in parts loaded (for listing)."""
    from . import datasets, evaluators, networks, pipelines, postprocessors, synthesizers, trainers  # noqa: F401
    found = registries()
    for registry in found.values():
        registry.load_home()
    return found


def cmd_list(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="openood-ext list", description="List registered parts.")
    parser.add_argument("kind", nargs="?", help="registry (networks, postprocessors, ...); all when omitted")
    parser.add_argument("pattern", nargs="?", default="*", help="shell wildcard on names, e.g. '*knn*'")
    args = parser.parse_args(argv)
    registries = all_registries()
    former = registry_of(args.kind) if args.kind else None
    if former is not None:  # an earlier name of a kind (synthesizers -> outlier_sources)
        args.kind = former.kind
    if args.kind and args.kind not in registries:
        from .errors import RegistryError
        close = difflib.get_close_matches(args.kind, sorted(registries), n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise RegistryError(f"unknown kind '{args.kind}'{hint} (known: {', '.join(sorted(registries))})")
    kinds = [args.kind] if args.kind else sorted(registries)
    for kind in kinds:
        reg = registries[kind]
        names = reg.names(args.pattern)
        for name in names:
            print(f"{kind:15s} {name:20s} {reg.describe(name)}")
        if not names and args.kind:
            what = "no parts registered" if args.pattern == "*" else f"no parts match '{args.pattern}'"
            print(f"{kind}: {what} (plugins add parts: see README, 'Add your own postprocessor')",
                  file=sys.stderr)
        elif not names and args.pattern == "*":
            print(f"{kind:15s} (none registered)")
    return 0


COMMANDS = {"run": cmd_run, "list": cmd_list}
# Subcommands implemented elsewhere, imported only when used: "module:function(argv) -> int".
LAZY_COMMANDS = {
    "data": "openood_ext.datasets.cli:main",
    "leaderboard": "openood_ext.leaderboard:main",
    "bench": "openood_ext.bench.dispatch:main",
    "sweep": "openood_ext.sweep:main",
    "ad-score": "openood_ext.pipelines.ad.infer:main",  # score an unlabeled folder with an AD cell (EOE)
    "cache": "openood_ext.datasets.cache_cli:main",  # list / clean the decoded-image caches
}


def _lookup(name: str):
    if name in COMMANDS:
        return COMMANDS[name]
    if name in LAZY_COMMANDS:
        import importlib
        module, func = LAZY_COMMANDS[name].split(":")
        try:
            return getattr(importlib.import_module(module), func)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                return None
            raise
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command = _lookup(argv[0])
    if command is None:
        known = ", ".join([*COMMANDS, *LAZY_COMMANDS])
        print(f"openood-ext: error: unknown command '{argv[0]}' (known: {known})\n{USAGE}",
              file=sys.stderr)
        return 2
    try:
        return command(argv[1:])
    except OpenOODError as exc:
        if debug:
            raise
        message = " ".join(str(exc).split("\n"))
        print(f"openood-ext: error: {message}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, RunInterrupted) as exc:
        print(f"openood-ext: {exc or 'interrupted'}; nothing complete was overwritten", file=sys.stderr)
        return 130


def run_main() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run_main()
