"""faiss is an optional extra: packaging, a missing faiss, two wheels over each other, GPU resources."""

from __future__ import annotations

import configparser
import sys
from pathlib import Path

import pytest

from openood_ext.errors import ConfigError
from openood_ext.utils import faiss_support

SETUP_CFG = Path(__file__).resolve().parents[2] / "setup.cfg"


def _extras():
    cfg = configparser.ConfigParser()
    cfg.read(SETUP_CFG)
    lines = lambda text: [ln.strip() for ln in text.strip().splitlines() if ln.strip()]  # noqa: E731
    return lines(cfg["options"]["install_requires"]), {k: lines(v) for k, v in cfg["options.extras_require"].items()}


def test_faiss_is_an_extra_and_the_cpu_and_gpu_wheels_are_never_pulled_together():
    required, extras = _extras()
    assert not any(r.startswith("faiss") for r in required)
    assert [r for r in extras["faiss"] if r.startswith("faiss")] == ["faiss-cpu>=1.7.4"]
    assert [r.split(">=")[0] for r in extras["gpu"] if r.startswith("faiss")] == ["faiss-gpu"]
    assert any(r.startswith("faiss-cpu") for r in extras["test"])  # CI keeps the faiss paths tested
    for name, reqs in extras.items():  # no extra installs both wheels
        assert not (any(r.startswith("faiss-cpu") for r in reqs) and any(r.startswith("faiss-gpu") for r in reqs)), name


def test_missing_faiss_is_one_line_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    assert not faiss_support.faiss_available() and not faiss_support.faiss_has_gpu()
    with pytest.raises(ConfigError, match=r"^knn.backend: faiss is not installed \(pip install 'openood_ext\[faiss\]'"):
        faiss_support.import_faiss("knn.backend")


def test_two_faiss_wheels_over_each_other_say_how_to_repair(monkeypatch):
    monkeypatch.setattr(faiss_support, "faiss_available", lambda: True)
    real = faiss_support.importlib.import_module

    def broken(name, *a):
        if name == "faiss":
            raise ImportError("libfaiss.so: cannot open shared object file")
        return real(name, *a)

    monkeypatch.setattr(faiss_support.importlib, "import_module", broken)
    monkeypatch.setattr(faiss_support, "installed_faiss_wheels", lambda: ["faiss-cpu", "faiss-gpu"])
    with pytest.raises(ConfigError, match=r"faiss-cpu and faiss-gpu are both installed .* "
                                          r"pip uninstall -y faiss-cpu faiss-gpu, then install one"):
        faiss_support.import_faiss("npos.backend")
    assert faiss_support.faiss_has_gpu() is False
