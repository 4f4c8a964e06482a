"""Exact k-nearest-neighbour search on L2-normalised vectors: faiss when importable, torch otherwise.

Both backends return the same numbers (up to float32 rounding): the Euclidean distances to the k
nearest bank vectors, sorted ascending.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


def choose_backend(faiss_ok: bool, faiss_gpu: bool, cuda: bool) -> str:
    """What ``backend: auto`` means: faiss when it can search where the data is fastest (it was 1.3x
    faster than the torch matmul on CPU at 50k x 512, BENCHMARKS.md), the torch matmul on the GPU when a
    GPU exists but the installed faiss is CPU-only (keeps the search on the device), torch otherwise."""
    if faiss_ok and (faiss_gpu or not cuda):
        return "faiss"
    return "torch"


def l2_normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Row-wise x / ||x||_2 in float32."""
    x = x.float()
    return x / (x.norm(dim=1, keepdim=True) + eps)


class KNNIndex:
    """Exact L2 index over a bank of vectors [M, D].

    Args:
        bank: float tensor [M, D] (normalise it first when cosine geometry is wanted).
        backend: ``auto`` (see :func:`choose_backend`), ``faiss`` or ``torch``.
        chunk_size: queries per matmul block in the torch backend (bounds memory to chunk x M floats).
        device: where the torch backend keeps the bank and searches (``auto``: CUDA when available);
            results come back on the queries' device either way.
    """

    def __init__(self, bank: torch.Tensor, backend: str = "auto", chunk_size: int = 2048, device: str = "auto"):
        if backend not in ("auto", "faiss", "torch"):
            raise ValueError(f"knn backend must be auto, faiss or torch, got {backend!r}")
        cuda = torch.cuda.is_available()
        if backend == "auto":
            faiss_ok = faiss_available()
            faiss_gpu = faiss_ok and hasattr(importlib.import_module("faiss"), "StandardGpuResources")
            backend = choose_backend(faiss_ok, faiss_gpu, cuda)
        self.backend, self.chunk_size = backend, chunk_size
        self.device = torch.device("cuda" if device == "auto" and cuda else "cpu" if device == "auto" else device)
        if backend == "faiss":
            self.bank = bank.detach().float().cpu().contiguous()
            import faiss
            index = faiss.IndexFlatL2(self.bank.shape[1])
            if hasattr(faiss, "StandardGpuResources") and torch.cuda.is_available():
                index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
            index.add(np.ascontiguousarray(self.bank.numpy()))
            self._index = index
        else:
            self.bank = bank.detach().float().to(self.device).contiguous()

    def search(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """Distances [N, k] (Euclidean, ascending) from each query to its k nearest bank vectors."""
        k = min(int(k), len(self.bank))
        if self.backend == "faiss":
            q = queries.detach().float().cpu().contiguous()
            sq, _ = self._index.search(np.ascontiguousarray(q.numpy()), k)
            return torch.from_numpy(sq).clamp_min(0).sqrt().to(queries.device)
        q = queries.detach().float().to(self.device)
        bank_sq = (self.bank * self.bank).sum(dim=1)
        out = []
        for start in range(0, len(q), self.chunk_size):
            block = q[start:start + self.chunk_size]
            d2 = (block * block).sum(dim=1, keepdim=True) + bank_sq[None, :] - 2.0 * block @ self.bank.T
            out.append(d2.topk(k, dim=1, largest=False).values.clamp_min(0).sqrt())
        return torch.cat(out).to(queries.device)
