"""Loading the side-by-side harnesses of ``scripts/parity/`` (not a package) in the golden-value tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parity_script(method: str):
    """``scripts/parity/<method>.py`` as a module, loaded once and registered as ``parity_<method>`` (its
    dataclasses need their module in ``sys.modules``). Importing it does not import the authors' code."""
    name = f"parity_{method}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "parity" / f"{method}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
