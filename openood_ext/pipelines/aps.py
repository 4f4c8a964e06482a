"""Automatic parameter search (APS), OpenOOD's protocol, run entirely on cached network outputs.

For a postprocessor spec with ``APS: true`` (or the top-level ``aps: true``), every combination of its
grid is fitted on ID train (+ ID val) outputs and scored on the benchmark's ID validation split against
its OOD validation split; the combination with the highest AUROC wins (the first one on ties). The grid
comes from the spec's ``aps_grid`` or from ``configs/postprocessors/<name>.yml``, which has the same flat
form as an entry of a run config's ``postprocessors`` list (the method's defaults, then its grid)::

    name: knn
    k: 50
    aps_grid: {k: [50, 100, 200, 500, 1000]}
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from ..datasets.benchmark import resolve_path
from ..errors import ConfigError
from ..evaluators.metrics import ood_metrics
from ..postprocessors import POSTPROCESSORS
from ..postprocessors.base import as_postprocessor

GRID_DIR = Path("configs") / "postprocessors"


def load_method_config(name: str) -> dict:
    """``configs/postprocessors/<name>.yml`` as a mapping (``name``, defaults, ``aps_grid``), or {} when absent."""
    path = resolve_path(GRID_DIR / f"{name}.yml")
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict) or data.get("name", name) != name:
        raise ConfigError(f"{path}: expected a mapping with name: {name}, its default arguments and aps_grid")
    return data


def grid_combinations(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Cartesian product of a ``{param: [values]}`` grid, in the grid's order."""
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"aps_grid.{key}: expected a non-empty list of values, got {values!r}")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def split_spec(spec: str | dict, aps_default: bool) -> tuple[dict, bool, dict | None]:
    """(build spec without APS keys, whether to search, the grid given inline or None)."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    spec.pop("label", None)
    use_aps = bool(spec.pop("APS", spec.pop("aps", aps_default)))
    grid = spec.pop("aps_grid", None)
    return spec, use_aps, grid


def single_point(spec: dict, grid: dict | None) -> dict | None:
    """The only combination of a one-point grid (inline, else the method's config file), else None.

    There is nothing to search over such a grid, so the pipeline builds the method with that point and
    lets it ride the shared passes (a layer-tap method such as Gram then needs no passes of its own).
    """
    if grid is None:
        grid = load_method_config(spec["name"]).get("aps_grid")
    combos = grid_combinations(dict(grid)) if grid else []
    return combos[0] if len(combos) == 1 else None


def search(spec: dict, grid: dict | None, fit_and_score: Callable[[Any], tuple[np.ndarray, np.ndarray]],
           fit: Callable[[Any], None] | None = None, loaders: dict | None = None) -> dict:
    """Pick the grid point with the best validation AUROC.

    Args:
        spec: build spec ``{"name": ..., **fixed_args}``.
        grid: ``{param: [values]}``; None -> the method's config file grid.
        fit_and_score: builds nothing; takes a built postprocessor, fits it and returns
            (ID-val confidences, OOD-val confidences).
        fit, loaders: when given and the method evaluates its whole grid jointly (it has
            ``aps_scores(combos, loaders)`` and every grid key is in its ``grid_params``, as ODIN's and
            MDSEns's input perturbation: the clean pass and gradients do not depend on the noise
            magnitude), one instance is fitted with ``fit`` and scores every combination from
            ``loaders["id_val"]`` / ``loaders["ood_val"]`` in one set of passes.
    Returns:
        ``{"chosen": {...}, "auroc": best, "trials": [{"params": {...}, "auroc": x}, ...]}``.
    """
    if grid is None:
        grid = load_method_config(spec["name"]).get("aps_grid")
    if not grid:
        raise ConfigError(f"postprocessor '{spec['name']}': APS asked for but it has no aps_grid "
                          f"(add one to {GRID_DIR / (spec['name'] + '.yml')} or inline)")
    combos = grid_combinations(dict(grid))
    first = as_postprocessor(POSTPROCESSORS.build({**spec, **combos[0]}))
    joint = getattr(first, "aps_scores", None)
    if fit is not None and callable(joint) and set(grid) <= set(getattr(first, "grid_params", ())):
        fit(first)
        results = joint(combos, loaders)
    else:
        results = (fit_and_score(first if i == 0 else as_postprocessor(POSTPROCESSORS.build({**spec, **c})))
                   for i, c in enumerate(combos))
    trials, best = [], None
    for combo, (id_conf, ood_conf) in zip(combos, results):
        auroc = ood_metrics(id_conf, ood_conf)["auroc"]
        trials.append({"params": combo, "auroc": auroc})
        if best is None or auroc > best["auroc"]:
            best = trials[-1]
    return {"chosen": best["params"], "auroc": best["auroc"], "trials": trials}


def check_specs(specs: Any, aps_default: bool = False) -> None:
    """A run's ``postprocessors:`` list: each entry against its method's typed arguments, every point of an
    APS grid too, and no label twice; ConfigError naming ``postprocessors[i]`` otherwise.

    Each entry (and grid point) is also built: constructors only store their settings, and the rules that
    relate arguments to each other (VRA's low < high percentile, GMM's per-layer lists of one length, ASH's
    percentile < 100) live there, so they too fail here, before the run directory exists."""
    if isinstance(specs, str):
        specs = [specs]
    if not specs:
        raise ConfigError("postprocessors: list at least one postprocessor (e.g. postprocessors=[msp,ebo])")
    labels = []
    for i, raw in enumerate(specs):
        if not isinstance(raw, (str, dict)):
            raise ConfigError(f"postprocessors[{i}]: expected a name or a mapping with 'name', got {raw!r}")
        if isinstance(raw, dict) and "name" not in raw:
            raise ConfigError(f"postprocessors[{i}]: {raw} has no 'name' key")
        spec, use_aps, grid = split_spec(raw, aps_default)
        POSTPROCESSORS.build(spec)
        if use_aps and grid is None:
            grid = load_method_config(spec["name"]).get("aps_grid")
        if use_aps and grid is not None:
            if not isinstance(grid, dict):
                raise ConfigError(f"postprocessors[{i}].aps_grid: expected a mapping of lists, got {grid!r}")
            for combo in grid_combinations(grid):
                POSTPROCESSORS.build({**spec, **combo})
        label = raw if isinstance(raw, str) else raw.get("label") or raw["name"]
        if label in labels:
            raise ConfigError(f"postprocessors: '{label}' is listed twice; give one of them a 'label:' "
                              f"so their results do not overwrite each other")
        labels.append(label)
