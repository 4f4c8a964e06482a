"""The numba loops behind :mod:`.cpu_loops` (imported on first use, so that importing the datasets does
not import numba). Module-level functions: numba's on-disk cache finds them again in a new process
(loops defined inside a function, calling each other, are compiled anew every time)."""

from __future__ import annotations

import numba
import numpy as np

GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (as batch_transforms.GREY_WEIGHTS)

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
def jitter(src, out, channels, from_uint8, order, factors, active, eight_bit):  # src, out [B, C * HW]; factors [4, B]
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




@numba.njit(cache=True, nogil=True)
def pad_crop(src, out, top, left, padding, h, w, s):  # src [B, C, H * W], out [B, C, S * S]
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
