"""Compiled CPU loops (numba) for the batched ops whose tensor form is many passes over memory: the
colour jitter of :class:`.batch_transforms.ColorJitter` and the pad-and-crop of :class:`.PadCrop`.

The jitter's tensor kernels run the four adjustments as about 50 whole-batch ops (half of them the hue
rotation, through HSV), so on a CPU one jittered 32x32 image costs about 0.1 ms on one core. Here
each sample is copied once into the output and all its adjustments run on it while it sits in the
core's cache, pixel by pixel, in the sample's own order: 15-20x less time (BENCHMARKS.md). Same
arithmetic as the tensor kernels in float32 (grey weights, clamping, contrast about the mean grey level, the closed-form
HSV hue rotation), so the two agree to float rounding (tested); the tensor kernels stay the GPU's path
and the fallback without numba.

``eight_bit`` mirrors what the PIL path's 8-bit images do between the adjustments: the grey image
(saturation's blend target) and contrast's mean grey level are whole 8-bit levels, a blend's result is
truncated to its 8-bit level (PIL's ``Image.blend``) and the hue rotation's result is rounded to the
nearest one.

The crop writes each output row from the source (zeros where the window leaves the image) instead of
padding the batch and gathering from the padded copy.
"""

from __future__ import annotations

import functools

import numpy as np
import torch


def available() -> bool:
    """True when numba imports (the loops then compile on first use, or load from numba's cache)."""
    return _loops() is not None


def load_kernels() -> bool:
    """Compile the loops now for float32 and uint8 batches (or load them from numba's on-disk cache): a
    one-off cost per process, under a second from the cache, several seconds to compile, paid otherwise
    by the first batches. True when numba is available."""
    if _loops() is None:
        return False
    for dtype in (torch.float32, torch.uint8):
        x = torch.zeros(1, 3, 2, 2, dtype=dtype)
        jitter(x, torch.arange(4).view(1, 4), [torch.ones(1)] * 3 + [torch.zeros(1)], True)
        pad_crop(x, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), 2, 1)
    return True


def pad_crop(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int, padding: int) -> torch.Tensor:
    """``x`` [B, C, H, W] (CPU, any dtype numba takes) zero-padded by ``padding`` on each side, then the
    ``size`` x ``size`` window at (``top[b]``, ``left[b]``) of the padded image b (offsets in the padded frame)."""
    loops = _loops()
    if loops is None:
        raise RuntimeError("random_crop: the CPU loop needs the numba package (pip install numba)")
    src = x.detach().contiguous()
    out = torch.empty(len(src), src.shape[1], size, size, dtype=src.dtype)
    if len(src):
        n, c, h, w = src.shape
        loops.pad_crop(src.numpy().reshape(n, c, h * w), out.numpy().reshape(n, c, size * size),
              top.to("cpu", torch.int64).numpy(), left.to("cpu", torch.int64).numpy(), int(padding), h, w, int(size))
    return out


def jitter(x: torch.Tensor, order: torch.Tensor, factors: list[torch.Tensor | None],
           eight_bit: bool = False) -> torch.Tensor:
    """The jittered copy of ``x`` (float32 [B, C, H, W] on the CPU, values in [0, 1]; C is 1 or 3), or of
    ``x / 255`` for a uint8 ``x`` (``ToTensor``'s float32 division, done while copying).

    ``order`` is [B, 4] (each row a permutation of 0..3: brightness, contrast, saturation, hue);
    ``factors[op]`` is [B] (a factor, or the hue shift in turns) or None for an op not drawn.
    """
    loops = _loops()
    if loops is None:
        raise RuntimeError("color_jitter: the CPU kernel needs the numba package (pip install numba)")
    n = len(x)
    src = x.detach().contiguous()
    out = torch.empty(src.shape, dtype=torch.float32)
    active = np.array([f is not None for f in factors], dtype=np.bool_)
    table = np.ones((4, n), dtype=np.float32)
    for op, f in enumerate(factors):
        if f is not None:
            table[op] = f.detach().to("cpu", torch.float32).numpy()
    if n:
        loops.jitter(src.numpy().reshape(n, -1), out.numpy().reshape(n, -1), src.shape[1], src.dtype == torch.uint8,
               order.to("cpu", torch.int64).numpy(), table, active, bool(eight_bit))
    return out


@functools.cache
def _loops():
    """The compiled loops' module, or None when numba is not installed."""
    try:
        from . import _cpu_loops_numba
    except ImportError:
        return None
    return _cpu_loops_numba
