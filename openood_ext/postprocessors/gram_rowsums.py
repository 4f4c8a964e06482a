"""Row sums of p-th order Gram matrices, the one heavy computation of the Gram method.

For a feature map F of one sample, flattened to [C, HW], and an order p:
``S_c = sum_c' (F^p (F^p)^T)_{c c'} = <F^p_c, s>`` with ``s = sum_c F^p_c`` (an [HW] vector), so the
C x C Gram matrix is never formed. The work is elementwise and memory-bound (ResNet-18 on CIFAR-10:
20 tapped conv outputs, 614k values per image, 5 orders), so how often each value crosses the memory
bus decides the time. Two backends give the same numbers (float32 arithmetic, as OpenOOD):

* ``numba`` (CPU default when numba is installed): compiled loops per sample, which read the sample's
  [C, HW] map from memory once and then work in cache. Orders up to 5 (OpenOOD's 1..5) take two sweeps
  over the map in all: the first accumulates every order's column sums at once, the second every
  order's dot products, with the powers in registers; 1.5x less time than the general loop, which
  keeps the [C, HW] powers in a buffer and sweeps it twice per order (the last product with the column
  sums, then the dot products) and serves higher orders. Both take about a tenth of the time of
  whole-batch tensor ops.
* ``torch``: tensor ops; on CPU in chunks of samples small enough to stay in cache, on a GPU the whole
  batch at once.

``auto`` picks ``numba`` for CPU tensors when it imports, else ``torch``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ..utils.runtime import full_precision

BACKENDS = ("auto", "numba", "torch")
#: the highest order the fused CPU kernel computes (every order 1..5 at once)
FUSED_MAX_POWER = 5
#: bytes of one chunk of samples for the CPU torch backend (a few chunks fit in a core's L2 cache)
CPU_CHUNK_BYTES = 1 << 18


@torch.compiler.disable  # in a compiled network's tap it runs eagerly: the CPU kernel is numba's, not traceable
@full_precision  # float32 products and sums: in fp16 the 5th-order sums overflow to inf
def gram_row_sums(t: torch.Tensor, powers, backend: str = "auto") -> torch.Tensor:
    """``S[j, b, c] = rowsum_c((F_b^p)(F_b^p)^T)`` for ``p = powers[j]``; float32 [P, B, C] on t's device.

    ``t`` is [B, C, *spatial] (any float dtype; a [B, D] input is D channels of one position);
    ``powers`` are positive integers in any order.
    """
    if backend not in BACKENDS:
        raise ValueError(f"gram: backend must be one of {BACKENDS}, got {backend!r}")
    powers = [int(p) for p in powers]
    f = t.detach().float().reshape(t.shape[0], t.shape[1], -1)
    if backend == "auto":
        backend = "numba" if f.device.type == "cpu" and _numba_kernel() is not None else "torch"
    if backend == "numba":
        kernel = _numba_kernel()
        if kernel is None:
            raise RuntimeError("gram: backend 'numba' needs the numba package (pip install numba)")
        if f.device.type != "cpu":
            raise ValueError("gram: backend 'numba' runs on CPU tensors only")
        if max(powers) <= FUSED_MAX_POWER:
            out = np.empty((FUSED_MAX_POWER, f.shape[0], f.shape[1]), dtype=np.float32)
            _numba_fused_kernel()(f.contiguous().numpy(), out)
            return torch.from_numpy(out[[p - 1 for p in powers]] if powers != [1, 2, 3, 4, 5] else out)
        out = np.empty((len(powers), f.shape[0], f.shape[1]), dtype=np.float32)
        kernel(f.contiguous().numpy(), np.asarray(powers, dtype=np.int64), out)
        return torch.from_numpy(out)
    return _torch_row_sums(f, powers)


def load_kernel() -> bool:
    """Import numba and load (or, on first use after install, compile) the CPU kernel now; True when it
    is available. A one-time cost per process (~0.3 s from numba's on-disk cache, ~3 s to compile)."""
    kernel = _numba_kernel()
    if kernel is not None:
        kernel(np.zeros((1, 1, 1), dtype=np.float32), np.ones(1, dtype=np.int64), np.empty((1, 1, 1), dtype=np.float32))
        _numba_fused_kernel()(np.zeros((1, 1, 1), dtype=np.float32), np.empty((FUSED_MAX_POWER, 1, 1), dtype=np.float32))
    return kernel is not None


@full_precision
def _torch_row_sums(f: torch.Tensor, powers: list[int]) -> torch.Tensor:
    b_total, c, hw = f.shape
    out = torch.empty(len(powers), b_total, c, dtype=torch.float32, device=f.device)
    per = b_total if f.device.type != "cpu" else max(1, CPU_CHUNK_BYTES // max(1, c * hw * 4))
    order = sorted(range(len(powers)), key=lambda j: powers[j])
    for i in range(0, b_total, per):
        chunk = f[i:i + per]
        fp, prev = chunk, 1
        for j in order:
            for _ in range(powers[j] - prev):  # the first product allocates, later ones are in place
                fp = fp * chunk if fp is chunk else fp.mul_(chunk)
            prev = powers[j]
            out[j, i:i + per] = torch.bmm(fp, fp.sum(dim=1).unsqueeze(2)).squeeze(2)
    return out


#: fastmath flags of the kernels: reassociation lets the reductions vectorise; no nnan/ninf, so an
#: overflow to inf behaves as in torch
_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


@functools.cache
def _numba_fused_kernel():
    """The compiled kernel for every order 1..5 at once (numba is importable when this is called)."""
    import numba

    @numba.njit(cache=True, fastmath=_FASTMATH, nogil=True)
    def row_sums_1_to_5(f, out):  # f [B, C, HW] float32, out [5, B, C] float32
        n, c_dim, hw = f.shape
        s = np.empty((5, hw), dtype=np.float32)
        for b in range(n):
            fb = f[b]
            s[:] = 0
            for ci in range(c_dim):  # every order's column sums, in one sweep
                for k in range(hw):
                    x = fb[ci, k]
                    x2 = x * x
                    x3 = x2 * x
                    x4 = x2 * x2
                    s[0, k] += x
                    s[1, k] += x2
                    s[2, k] += x3
                    s[3, k] += x4
                    s[4, k] += x4 * x
            for ci in range(c_dim):  # every order's dot products, in a second (the map is in cache)
                a1 = a2 = a3 = a4 = a5 = np.float32(0)
                for k in range(hw):
                    x = fb[ci, k]
                    x2 = x * x
                    x3 = x2 * x
                    x4 = x2 * x2
                    a1 += x * s[0, k]
                    a2 += x2 * s[1, k]
                    a3 += x3 * s[2, k]
                    a4 += x4 * s[3, k]
                    a5 += x4 * x * s[4, k]
                out[0, b, ci] = a1
                out[1, b, ci] = a2
                out[2, b, ci] = a3
                out[3, b, ci] = a4
                out[4, b, ci] = a5

    return row_sums_1_to_5


@functools.cache
def _numba_kernel():
    """The compiled per-sample kernel, or None when numba is not installed."""
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(cache=True, fastmath=_FASTMATH, nogil=True)
    def row_sums(f, powers, out):  # f [B, C, HW] float32, powers int64 [P], out [P, B, C] float32
        n, c_dim, hw = f.shape
        order = np.argsort(powers)
        fp = np.empty((c_dim, hw), dtype=np.float32)
        s = np.empty(hw, dtype=np.float32)
        for b in range(n):
            fb = f[b]
            prev = 0  # the power fp holds (0: none yet)
            for j in order:
                steps = powers[j] - prev  # products to take (the first power starts from a copy of fb)
                s[:] = 0
                if prev == 0 and steps == 1:  # fp = fb and its column sums, in one sweep
                    for ci in range(c_dim):
                        for k in range(hw):
                            fp[ci, k] = fb[ci, k]
                            s[k] += fb[ci, k]
                    steps = 0
                elif prev == 0:
                    for ci in range(c_dim):
                        for k in range(hw):
                            fp[ci, k] = fb[ci, k]
                    steps -= 1
                for step in range(steps):  # the last product also sums the columns
                    if step < steps - 1:
                        for ci in range(c_dim):
                            for k in range(hw):
                                fp[ci, k] *= fb[ci, k]
                    else:
                        for ci in range(c_dim):
                            for k in range(hw):
                                fp[ci, k] *= fb[ci, k]
                                s[k] += fp[ci, k]
                prev = powers[j]
                for ci in range(c_dim):
                    acc = np.float32(0)
                    for k in range(hw):
                        acc += fp[ci, k] * s[k]
                    out[j, b, ci] = acc

    return row_sums
