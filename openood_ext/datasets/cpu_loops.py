"""Compiled CPU loops (numba) for the batched ops whose tensor form is many passes over memory: the
colour jitter of :class:`.batch_transforms.ColorJitter` and the pad-and-crop of :class:`.PadCrop`.

The jitter's tensor kernels run each adjustment as a dozen whole-batch passes (the hue rotation alone as
about twenty, through HSV), so on a CPU one jittered 32x32 image costs about 0.1 ms on one core. Here
each sample is copied once into the output and all its adjustments run on it while it sits in the
core's cache, pixel by pixel, in the sample's own order: about 10x less time. Same arithmetic as the
tensor kernels in float32 (grey weights, clamping, contrast about the mean grey level, the closed-form
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

GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (as batch_transforms.GREY_WEIGHTS)


def available() -> bool:
    """True when numba imports (the loops then compile on first use, or load from numba's cache)."""
    return _kernel() is not None


def load_kernels() -> bool:
    """Compile the loops now for float32 and uint8 batches (or load them from numba's on-disk cache): a
    one-off cost per process, under a second from the cache, several seconds to compile, paid otherwise
    by the first batches. True when numba is available."""
    if _kernel() is None:
        return False
    for dtype in (torch.float32, torch.uint8):
        x = torch.zeros(1, 3, 2, 2, dtype=dtype)
        jitter(x, torch.arange(4).view(1, 4), [torch.ones(1)] * 3 + [torch.zeros(1)], True)
        pad_crop(x, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), 2, 1)
    return True


def pad_crop(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int, padding: int) -> torch.Tensor:
    """``x`` [B, C, H, W] (CPU, any dtype numba takes) zero-padded by ``padding`` on each side, then the
    ``size`` x ``size`` window at (``top[b]``, ``left[b]``) of the padded image b (offsets in the padded frame)."""
    loops = _crop_kernel()
    if loops is None:
        raise RuntimeError("random_crop: the CPU loop needs the numba package (pip install numba)")
    src = x.detach().contiguous()
    out = torch.empty(len(src), src.shape[1], size, size, dtype=src.dtype)
    if len(src):
        n, c, h, w = src.shape
        loops(src.numpy().reshape(n, c, h * w), out.numpy().reshape(n, c, size * size),
              top.to("cpu", torch.int64).numpy(), left.to("cpu", torch.int64).numpy(), int(padding), h, w, int(size))
    return out


def jitter(x: torch.Tensor, order: torch.Tensor, factors: list[torch.Tensor | None],
           eight_bit: bool = False) -> torch.Tensor:
    """The jittered copy of ``x`` (float32 [B, C, H, W] on the CPU, values in [0, 1]; C is 1 or 3), or of
    ``x / 255`` for a uint8 ``x`` (``ToTensor``'s float32 division, done while copying).

    ``order`` is [B, 4] (each row a permutation of 0..3: brightness, contrast, saturation, hue);
    ``factors[op]`` is [B] (a factor, or the hue shift in turns) or None for an op not drawn.
    """
    kernel = _kernel()
    if kernel is None:
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
        kernel(src.numpy().reshape(n, -1), out.numpy().reshape(n, -1), src.shape[1], src.dtype == torch.uint8,
               order.to("cpu", torch.int64).numpy(), table, active, bool(eight_bit))
    return out


@functools.cache
def _crop_kernel():
    """The compiled crop, or None when numba is not installed."""
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(cache=True, nogil=True)
    def run(src, out, top, left, padding, h, w, s):  # src [B, C, H * W], out [B, C, S * S]
        n, c = src.shape[0], src.shape[1]
        zero = src.dtype.type(0)
        for b in range(n):
            y0, x0 = top[b] - padding, left[b] - padding
            lo, hi = max(0, -x0), min(s, w - x0)  # output columns inside the image
            for ch in range(c):
                plane, dest = src[b, ch], out[b, ch]
                for r in range(s):
                    y, base = y0 + r, r * s
                    if y < 0 or y >= h or lo >= hi:
                        for col in range(s):
                            dest[base + col] = zero
                        continue
                    shift = y * w + x0
                    for col in range(lo):
                        dest[base + col] = zero
                    for col in range(lo, hi):
                        dest[base + col] = plane[shift + col]
                    for col in range(hi, s):
                        dest[base + col] = zero

    return run


@functools.cache
def _kernel():
    """The compiled jitter, or None when numba is not installed."""
    try:
        import numba
    except ImportError:
        return None

    f32 = np.float32
    wr, wg, wb = f32(GREY[0]), f32(GREY[1]), f32(GREY[2])
    zero, one, six, levels = f32(0), f32(1), f32(6), f32(255)
    half, tiny = f32(0.5), f32(1e-3)  # tiny: float error of k / 255 times a factor, far below a level

    @numba.njit(cache=True, nogil=True, inline="always")
    def clamp01(v):
        return min(max(v, zero), one)

    @numba.njit(cache=True, nogil=True, inline="always")
    def hue_channel(maxc, chroma, h, k0):  # c_n = V - C * clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6
        k = h + k0
        k = k - six * np.floor(k / six)
        return maxc - chroma * clamp01(min(k, f32(4) - k))

    @numba.njit(cache=True, nogil=True, inline="always")
    def level(v, eight_bit, offset):  # v, or v cast to its 8-bit level (offset: tiny truncates, 0.5 rounds)
        return np.floor(v * levels + offset) / levels if eight_bit else v

    @numba.njit(cache=True, nogil=True)
    def run(src, out, channels, from_uint8, order, factors, active, eight_bit):  # src, out [B, C * HW]; factors [4, B]
        n, size = src.shape
        rgb = channels == 3
        hw = size // channels
        for b in range(n):
            img, pix = out[b], src[b]
            if from_uint8:
                for p in range(size):
                    img[p] = f32(pix[p]) / levels
            else:
                for p in range(size):
                    img[p] = pix[p]
            for slot in range(4):
                op = order[b, slot]
                if not active[op]:
                    continue
                f = factors[op, b]
                if op == 0:  # brightness: f * x
                    for p in range(size):
                        img[p] = level(clamp01(f * img[p]), eight_bit, tiny)
                elif op == 1:  # contrast: blend with the mean grey level
                    total = 0.0
                    if rgb:
                        for p in range(hw):
                            total += wr * img[p] + wg * img[hw + p] + wb * img[2 * hw + p]
                    else:
                        for p in range(hw):
                            total += img[p]
                    mean = level(f32(total / hw), eight_bit, half)
                    rest = (one - f) * mean
                    for p in range(size):
                        img[p] = level(clamp01(f * img[p] + rest), eight_bit, tiny)
                elif not rgb:  # saturation and hue leave one channel as it is (as torchvision)
                    continue
                elif op == 2:  # saturation: blend with the pixel's grey level
                    g = one - f
                    for p in range(hw):
                        r, gr, bl = img[p], img[hw + p], img[2 * hw + p]
                        grey = g * level(wr * r + wg * gr + wb * bl, eight_bit, half)
                        img[p] = level(clamp01(f * r + grey), eight_bit, tiny)
                        img[hw + p] = level(clamp01(f * gr + grey), eight_bit, tiny)
                        img[2 * hw + p] = level(clamp01(f * bl + grey), eight_bit, tiny)
                else:  # hue: rotate H by f turns in HSV, keeping S and V
                    shift = six * f
                    for p in range(hw):
                        r, gr, bl = img[p], img[hw + p], img[2 * hw + p]
                        maxc = max(r, max(gr, bl))
                        chroma = maxc - min(r, min(gr, bl))
                        if chroma > zero:
                            if maxc == r:
                                h = (gr - bl) / chroma
                            elif maxc == gr:
                                h = f32(2) + (bl - r) / chroma
                            else:
                                h = f32(4) + (r - gr) / chroma
                        else:
                            h = zero
                        h = h + shift
                        img[p] = level(hue_channel(maxc, chroma, h, f32(5)), eight_bit, half)
                        img[hw + p] = level(hue_channel(maxc, chroma, h, f32(3)), eight_bit, half)
                        img[2 * hw + p] = level(hue_channel(maxc, chroma, h, f32(1)), eight_bit, half)

    return run
