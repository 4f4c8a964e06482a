"""The profiling scripts run end to end on tiny inputs (their numbers are read by people, not asserted)."""

import importlib.util
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_gram_gmm_prints_every_part(capsys):
    script = _load("profile_gram_gmm")
    script.profile_gram(width=4, batch=3)
    script.profile_pca([40, 60], dim=120, k=5)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("gram, 20 layers, batch 3, CPU s: row sums fused")
    assert "subspace cosine to sklearn's full: sample Gram 1.000000" in out[1]
    assert out[2].startswith("pca, 60 x 120 -> 5")
