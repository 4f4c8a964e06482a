"""NPOS's KNN backend: CUDA queues stay on the device, and everything works without faiss."""

from __future__ import annotations

import sys

import pytest
import torch

from openood_ext.errors import ConfigError
from openood_ext.synthesizers import npos as npos_module
from openood_ext.synthesizers.npos import NPOSParams, npos_sample, resolve_backend


def test_auto_keeps_cuda_queues_on_the_device(monkeypatch):
    """With faiss installed (CPU or GPU build), auto must not copy CUDA queues to the host every step."""
    monkeypatch.setattr(npos_module, "faiss_available", lambda: True)
    assert resolve_backend("auto", torch.device("cuda", 1)) == "torch"
    assert resolve_backend("auto", "cuda") == "torch"
    assert resolve_backend("auto", torch.device("cpu")) == "faiss"


def test_npos_runs_without_faiss(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # not installed
    assert resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(ConfigError, match=r"npos.backend: faiss is not installed .*backend: torch"):
        resolve_backend("faiss", "cpu")
    q = torch.randn(2, 12, 6, generator=torch.Generator().manual_seed(0))
    p = NPOSParams(K=3, select=4, pick=2, candidates=10, keep=3, sigma=0.1)
    a = npos_sample(q, p, generator=torch.Generator().manual_seed(1))
    b = npos_sample(q, p, generator=torch.Generator().manual_seed(1), backend="torch")
    assert a.outliers.shape == (2, 2, 3, 6) and torch.equal(a.outliers, b.outliers)
