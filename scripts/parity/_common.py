"""Shared pieces of the parity harnesses (``scripts/parity/*.py``): CPU shims for the authors' CUDA-only
code, module stubs for imports the compared code never uses, and the markdown table.

The shims change nothing numerical: ``.cuda()`` is the identity (everything runs on the CPU), faiss's GPU
flat index is faiss-cpu's ``IndexFlatL2`` (the same exact squared-L2 search; ``faiss.contrib.torch_utils``
lets it take torch tensors as the GPU index does), and ``torch.device('cuda')`` inside an imported module
resolves to the CPU.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

import torch


def cpu_cuda() -> None:
    """Make ``Tensor.cuda()`` / ``Module.cuda()`` the identity (the published code calls them everywhere)."""
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self


class CpuTorch(types.ModuleType):
    """``torch`` for an imported module, with ``torch.device('cuda')`` mapped to the CPU."""

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        if name == "device":
            return lambda *a, **k: torch.device("cpu")
        return getattr(torch, name)


def faiss_gpu_shim():
    """faiss-cpu with the GPU names the published code uses (``StandardGpuResources``, ``GpuIndexFlatL2``,
    ``GpuIndexFlatConfig``) mapped to the exact CPU flat index."""
    import faiss
    import faiss.contrib.torch_utils  # noqa: F401 -- torch tensors in and out, as the GPU index

    faiss.StandardGpuResources = lambda *a, **k: None
    faiss.GpuIndexFlatConfig = types.SimpleNamespace
    faiss.GpuIndexFlatL2 = lambda res, dim, *a, **k: faiss.IndexFlatL2(dim)
    return faiss


def stub_modules(*names: str) -> None:
    """Empty modules for imports the compared functions never use (umap, tensorboard_logger, ipdb...)."""
    for name in names:
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
            mod.__getattr__ = lambda attr, _n=name: (_ for _ in ()).throw(AttributeError(f"{_n}.{attr} (stub)"))
            sys.modules[name] = mod


def load_file(name: str, path: Path):
    """Import one source file as module ``name`` (without importing its package)."""
    if not path.is_file():
        raise SystemExit(f"{path}: not found (is --published/--openood a checkout at the named commit?)")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def maxdiff(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max()) if a.numel() else 0.0


class SizedLoader:
    """A list of batches standing in for a DataLoader whose iterator has ``len`` (OpenOOD's and OAML's
    trainers call ``len(iter(loader))``)."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return _SizedIter(self.batches)


class _SizedIter:
    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return self

    def __next__(self):
        if self.i >= len(self.batches):
            raise StopIteration
        self.i += 1
        return self.batches[self.i - 1]


class Table:
    """Rows of (item, measured difference, verdict), printed as markdown."""

    def __init__(self, title: str):
        self.title, self.rows = title, []

    def add(self, item: str, diff: str | float, verdict: str) -> None:
        if isinstance(diff, float):
            diff = "0" if diff == 0 else f"{diff:.1e}"
        self.rows.append((item, str(diff), verdict))

    def equal(self, item: str, diff: float, tol: float = 1e-5, switch: str | None = None,
              otherwise: str = "DIFFERS") -> bool:
        ok = diff <= tol
        verdict = ("equal" if switch is None else f"equal with switch {switch}") if ok else otherwise
        self.add(item, diff, verdict)
        return ok

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| item | measured difference | verdict |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in self.rows]
        return "\n".join(lines)
