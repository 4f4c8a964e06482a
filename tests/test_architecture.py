"""The package's shape: its layer and no-cycle contracts (import-linter, setup.cfg) and what may sit at
its root. A new module goes in the folder of its layer (docs/architecture.md)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import REPO

#: the only modules allowed at the package root; everything else lives in the folder of its layer
ROOT_MODULES = {"__init__", "cli", "runner", "config", "registry", "schema", "errors", "features", "distributed",
                "leaderboard"}


def test_only_the_agreed_modules_sit_at_the_package_root():
    found = {p.stem for p in (REPO / "openood_ext").glob("*.py")}
    assert found <= ROOT_MODULES, f"move {sorted(found - ROOT_MODULES)} into the folder of its layer"


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(REPO / ".venv" / "bin")) or shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    proc = subprocess.run([exe, "--config", str(REPO / "setup.cfg")], cwd=REPO, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": str(REPO / ".venv" / "bin") + ":/usr/bin:/bin"},
                          timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout
