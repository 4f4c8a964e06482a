"""What makes a run directory what it is: its name, whether it holds a complete result, and the identity of
the configuration that produced it (a short hash of what changes the numbers), so that a finished result
is never replaced by a run of another configuration without ``overwrite: true``, and an unfinished one
(``<experiment>.partial``) is neither deleted without ``overwrite: true`` nor resumed under settings that
change its numbers (:func:`check_unfinished`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..errors import ConfigError

#: Top-level keys that do not change a run's numbers (where and how it runs, not what it computes).
NOT_IDENTITY = ("experiment", "output_dir", "cache_dir", "verbose", "resume", "report", "num_workers",
                "overwrite", "device", "train_if_missing", "pin_memory", "persistent_workers", "prefetch_factor")


def check_experiment_name(name: Any) -> str:
    """The experiment name if it is one plain directory name; ConfigError otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"experiment: expected a non-empty name, got {name!r}")
    if name != name.strip() or "/" in name or "\\" in name or "\0" in name:
        raise ConfigError(f"experiment '{name}': must be one directory name (no '/', no surrounding spaces); "
                          f"use output_dir=... to choose where results go")
    if name.startswith(".") or name.endswith(".partial"):
        raise ConfigError(f"experiment '{name}': may not start with '.' or end with '.partial' "
                          f"(those names are reserved for hidden and unfinished runs)")
    if len(name.encode()) > 200:
        raise ConfigError(f"experiment: name longer than 200 bytes ({name[:40]}...)")
    return name


def _identity_view(config: dict) -> dict:
    """The config minus :data:`NOT_IDENTITY`; ``benchmark.csid`` counts only when ``fsood`` is on (the
    covariate-shifted ID sets are not read otherwise, so adding them to a benchmark keeps earlier runs)."""
    kept = {k: v for k, v in config.items() if k not in NOT_IDENTITY}
    bench = kept.get("benchmark")
    if not kept.get("fsood") and isinstance(bench, dict) and "csid" in bench:
        kept["benchmark"] = {k: v for k, v in bench.items() if k != "csid"}
    return kept


def run_identity(config: dict) -> str:
    """Short hash of what changes a run's numbers: the resolved config minus :data:`NOT_IDENTITY`."""
    kept = _identity_view(config)
    blob = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def changed_keys(old: dict, new: dict) -> list[str]:
    """Dotted keys (outside :data:`NOT_IDENTITY`) whose values differ between two plain configs."""
    a = _flat(_identity_view(old))
    b = _flat(_identity_view(new))
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def complete_result(run_dir: Path) -> dict | None:
    """run.json of a complete run in ``run_dir``, else None."""
    try:
        record = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("status") == "complete" else None


def saved_config(run_dir: Path) -> dict | None:
    try:
        return OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
    except Exception:  # unreadable: treated as a different configuration
        return None


def _shown(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


#: What every run directory holds from its start: an unfinished run with nothing else did no work yet.
BOOKKEEPING = frozenset({"config.yaml", "log.txt", "run.json"})


def check_unfinished(cfg) -> None:
    """Refuse to discard or mix the finished parts of an interrupted run (``<experiment>.partial``).

    * without ``resume``: ConfigError asking for ``--resume`` (continue it) or ``overwrite=true`` (discard
      it), unless ``overwrite`` is given or the directory holds nothing but :data:`BOOKKEEPING` (a run that
      failed before it saved any work, e.g. on a bad checkpoint: it is started afresh);
    * with ``resume``: the stored resolved config (``.partial/config.yaml``) and ``cfg`` must agree on every
      key outside :data:`NOT_IDENTITY`; ConfigError naming the keys that differ otherwise.

    Reads only: called before anything is created or rewritten (config.yaml included)."""
    root = Path(str(cfg.get("output_dir", "results")))
    name = str(cfg.get("experiment", "default"))
    final, partial = root / name, root / f"{name}.partial"
    if not partial.is_dir():
        return
    if not cfg.get("resume", False):
        work = sorted(p.name for p in partial.iterdir() if p.name not in BOOKKEEPING)
        if cfg.get("overwrite", False) or not work:
            return  # discarded on purpose, or nothing finished to lose (it failed before any work was saved)
        try:
            status = json.loads((partial / "run.json").read_text()).get("status", "unfinished")
        except (OSError, ValueError, AttributeError):
            status = "unfinished"
        shown = ", ".join(work[:3]) + (", ..." if len(work) > 3 else "")
        raise ConfigError(f"{partial} holds the finished work of an {status} run ({shown}); continue it with: "
                          f"openood-ext run --resume {final} (same settings), or give overwrite=true to discard it")
    old_file = partial / "config.yaml"
    if not old_file.exists():
        return  # stopped before it saved its config: nothing finished to mix
    old = saved_config(partial)
    new = OmegaConf.to_container(cfg, resolve=True)
    changed = changed_keys(old, new) if old is not None else [f"{old_file} unreadable"]
    if changed:
        raise ConfigError(f"--resume {final}: the settings differ from the interrupted run's in {_shown(changed)}, "
                          f"which would mix results of two configurations; resume with the same settings, or "
                          f"start over with overwrite=true (discards {partial})")
