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


def l2_normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Row-wise x / ||x||_2 in float32."""
    x = x.float()
    return x / (x.norm(dim=1, keepdim=True) + eps)


class KNNIndex:
    """Exact L2 index over a bank of vectors [M, D].

    Args:
        bank: float tensor [M, D] (normalise it first when cosine geometry is wanted).
        backend: ``auto`` (faiss if importable), ``faiss`` or ``torch``.
        chunk_size: queries per matmul block in the torch backend (bounds memory to chunk x M floats).
    """

    def __init__(self, bank: torch.Tensor, backend: str = "auto", chunk_size: int = 2048):
        if backend not in ("auto", "faiss", "torch"):
            raise ValueError(f"knn backend must be auto, faiss or torch, got {backend!r}")
        if backend == "auto":
            backend = "faiss" if faiss_available() else "torch"
        self.backend, self.chunk_size = backend, chunk_size
        self.bank = bank.detach().float().cpu().contiguous()
        if backend == "faiss":
            import faiss
            index = faiss.IndexFlatL2(self.bank.shape[1])
            if hasattr(faiss, "StandardGpuResources") and torch.cuda.is_available():
                index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
            index.add(np.ascontiguousarray(self.bank.numpy()))
            self._index = index

    def search(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """Distances [N, k] (Euclidean, ascending) from each query to its k nearest bank vectors."""
        k = min(int(k), len(self.bank))
        q = queries.detach().float().cpu().contiguous()
        if self.backend == "faiss":
            sq, _ = self._index.search(np.ascontiguousarray(q.numpy()), k)
            return torch.from_numpy(sq).clamp_min(0).sqrt()
        bank_sq = (self.bank * self.bank).sum(dim=1)
        out = []
        for start in range(0, len(q), self.chunk_size):
            block = q[start:start + self.chunk_size]
            d2 = (block * block).sum(dim=1, keepdim=True) + bank_sq[None, :] - 2.0 * block @ self.bank.T
            out.append(d2.topk(k, dim=1, largest=False).values.clamp_min(0).sqrt())
        return torch.cat(out)
