"""Every image mode Pillow can hand a loader, brought to a benchmark's ``L`` or ``RGB`` without silent
clipping or invented pixels.

Pillow's own ``convert`` is right for 8-bit modes (``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``) but
not for the rest:

* 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, and ``I``, the mode older Pillows give 16-bit PNGs):
  ``convert("L")`` clips every value above 255 to 255. Here a value v becomes round(v * 255 / 65535),
  i.e. ``(v + 128) // 257``; values outside 0..65535 (a signed or 32-bit image) are refused.
* an alpha channel (``RGBA``, ``LA``, ``PA``, a palette with a transparent entry): ``convert`` drops the
  alpha and keeps whatever colour lies under a transparent pixel. A fully opaque image loses its alpha
  unchanged; an image with any transparent pixel is refused (there is no right background to assume).
* floating-point images (``F``) have no agreed range and are refused.

A refusal is a DataError naming the file and the mode.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from ..errors import DataError

SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def convert_image(img: Image.Image, mode: str, path: str | os.PathLike) -> Image.Image:
    """``img`` (any Pillow mode) as ``mode`` (``L`` or ``RGB``); DataError naming ``path`` when its
    pixels cannot be brought to 8 bits without guessing (module doc)."""
    src = img.mode
    if src in SIXTEEN_BIT:
        a = np.asarray(img).astype(np.int64)
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise DataError(f"{path}: {src} image with values {lo}..{hi}, outside the 16-bit range 0..65535 "
                            f"(convert it to an 8- or 16-bit image)")
        img = Image.fromarray(((a + 128) // 257).astype(np.uint8), "L")
    elif src == "F" or src.startswith("I;"):
        raise DataError(f"{path}: image mode {src} (floating-point or signed pixels) has no defined 8-bit "
                        f"scaling; convert it to an 8- or 16-bit image")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "PA":
        img = img.convert("RGBA")
    if "A" in img.getbands():
        if img.getchannel("A").getextrema()[0] < 255:
            raise DataError(f"{path}: image mode {src} has transparent pixels; flatten it onto a background "
                            f"first (the colour under a transparent pixel is undefined)")
        img = img.convert("L" if img.mode in ("LA", "La") else "RGB")
    if img.mode == "CMYK" and mode == "L":
        img = img.convert("RGB")
    return img if img.mode == mode else img.convert(mode)
