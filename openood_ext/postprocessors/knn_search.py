"""Exact k-nearest-neighbour search on L2-normalised vectors: faiss when installed, torch otherwise.

Both backends return the same numbers (up to float32 rounding): the Euclidean distances to the k
nearest bank vectors, sorted ascending. faiss is optional (``openood_ext[faiss]`` or ``[gpu]``,
:mod:`openood_ext.utils.faiss_support`); the torch backend is the default path without it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..utils.faiss_support import faiss_available, faiss_has_gpu, flat_l2_index

# float32 temporaries per (query, bank row) pair in the torch backend: the matmul, the squared distances
# and the sum they are built from; topk's own buffers are k-wide and negligible
_TEMPORARIES = 3
DEFAULT_MEMORY_MB = 1024.0


def choose_backend(faiss_ok: bool, faiss_gpu: bool, cuda: bool) -> str:
    """What ``backend: auto`` means: faiss when it can search where the data is fastest (it was 1.3x
    faster than the torch matmul on CPU at 50k x 512, BENCHMARKS.md), the torch matmul on the GPU when a
    GPU exists but the installed faiss is CPU-only (keeps the search on the device), torch otherwise."""
    if faiss_ok and (faiss_gpu or not cuda):
        return "faiss"
    return "torch"


def rows_per_chunk(bank_rows: int, memory_mb: float, cap: int, bytes_per_pair: int = _TEMPORARIES * 4) -> int:
    """Queries per block of a query-against-bank computation so that its temporaries stay within
    ``memory_mb`` (at least 1, at most ``cap``): a block of r queries against M bank rows holds
    ``bytes_per_pair * r * M`` bytes (default: the KNN torch backend's 3 float32 values per pair)."""
    per_query = int(bytes_per_pair) * max(int(bank_rows), 1)
    return max(1, min(int(cap), int(memory_mb * 2 ** 20) // per_query))


def l2_normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Row-wise x / ||x||_2 in float32."""
    x = x.float()
    return x / (x.norm(dim=1, keepdim=True) + eps)


class KNNIndex:
    """Exact L2 index over a bank of vectors [M, D].

    Args:
        bank: float tensor [M, D] (normalise it first when cosine geometry is wanted).
        backend: ``auto`` (see :func:`choose_backend`), ``faiss`` or ``torch``.
        chunk_size: at most this many queries per matmul block in the torch backend.
        memory_mb: budget of one torch-backend block's temporaries (:func:`rows_per_chunk`); the
            unchunked search of 10k queries against a 1.28M ImageNet bank would need ~150 GB.
        device: where the search runs (``auto``: CUDA when available): the torch backend keeps the bank
            there; faiss-gpu builds its index on that GPU (a CPU-only faiss on the host). Results come
            back on the queries' device either way.
    """

    def __init__(self, bank: torch.Tensor, backend: str = "auto", chunk_size: int = 2048, device: str = "auto",
                 memory_mb: float = DEFAULT_MEMORY_MB):
        if backend not in ("auto", "faiss", "torch"):
            raise ValueError(f"knn backend must be auto, faiss or torch, got {backend!r}")
        if not memory_mb > 0:
            raise ValueError(f"knn memory_mb must be > 0, got {memory_mb!r}")
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if device == "auto" and cuda else "cpu" if device == "auto" else device)
        if backend == "auto":
            backend = choose_backend(faiss_available(), faiss_has_gpu(), self.device.type == "cuda")
        self.backend, self.chunk_size, self.memory_mb = backend, chunk_size, float(memory_mb)
        if backend == "faiss":
            self.bank = bank.detach().float().cpu().contiguous()
            on_gpu = self.device.type == "cuda" and faiss_has_gpu()
            gpu = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
                if on_gpu else None
            self._index = flat_l2_index(self.bank.shape[1], gpu)
            self._index.add(np.ascontiguousarray(self.bank.numpy()))
        else:
            self.bank = bank.detach().float().to(self.device).contiguous()
        self.largest_chunk = 0  # queries in the largest torch-backend block so far

    def search(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """Distances [N, k] (Euclidean, ascending) from each query to its k nearest bank vectors."""
        k = min(int(k), len(self.bank))
        if self.backend == "faiss":
            q = queries.detach().float().cpu().contiguous()
            sq, _ = self._index.search(np.ascontiguousarray(q.numpy()), k)
            return torch.from_numpy(sq).clamp_min(0).sqrt().to(queries.device)
        q = queries.detach().float().to(self.device)
        bank_sq = (self.bank * self.bank).sum(dim=1)
        step = rows_per_chunk(len(self.bank), self.memory_mb, self.chunk_size)
        out = []
        for start in range(0, len(q), step):
            block = q[start:start + step]
            self.largest_chunk = max(self.largest_chunk, len(block))
            d2 = (block * block).sum(dim=1, keepdim=True) + bank_sq[None, :] - 2.0 * block @ self.bank.T
            out.append(d2.topk(k, dim=1, largest=False).values.clamp_min(0).sqrt())
        if not out:
            return torch.zeros(0, k, device=queries.device)
        return torch.cat(out).to(queries.device)
