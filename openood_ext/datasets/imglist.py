"""Image lists in OpenOOD's format and the dataset that reads them.

An image list is a text file with one ``<relative/path> <label>`` per line; paths are relative to a
data root. Blank lines and lines starting with ``#`` are ignored; a UTF-8 byte-order mark and CRLF
line endings are accepted. OpenOOD's own imglist files read unchanged (``cifar10/test/airplane/0001.png 0``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .image_modes import convert_image


@dataclass(frozen=True)
class ImglistEntry:
    path: str
    label: int
    line: int  # 1-based line number in the image list


def read_imglist(imglist: str | os.PathLike, num_classes: int | None = None) -> list[ImglistEntry]:
    """Parse an image list; a malformed line raises DataError naming the file and line.

    With ``num_classes``, a label outside ``0 .. num_classes - 1`` is a DataError naming file:line too.
    """
    imglist = Path(imglist)
    if not imglist.is_file():
        raise DataError(f"{imglist}: image list not found")
    entries = []
    with open(imglist, encoding="utf-8-sig", newline=None) as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2:
                raise DataError(f"{imglist}:{lineno}: expected '<path> <label>', got {line!r}")
            path, label = parts
            try:
                entries.append(ImglistEntry(path, int(label), lineno))
            except ValueError:
                raise DataError(f"{imglist}:{lineno}: label must be an integer, got {label!r}") from None
            if num_classes is not None and not 0 <= entries[-1].label < num_classes:
                raise DataError(f"{imglist}:{lineno}: label {entries[-1].label} is outside 0..{num_classes - 1} "
                                f"(benchmark.num_classes: {num_classes})")
    return entries


class ImglistDataset(torch.utils.data.Dataset):
    """Images named by an image list, loaded with PIL and transformed.

    Args:
        imglist: path of the image list.
        data_root: directory the list's paths are relative to.
        transform: callable PIL image -> tensor.
        mode: PIL mode images are converted to (``RGB`` or ``L``); grayscale into an RGB network is
            converted, never an error.
        on_bad_image: ``error`` (raise DataError naming the file and list line) or ``skip`` (the item is
            returned as None and dropped by :func:`collate_skipping`, which counts it).
        label_override: if given, every item gets this label (e.g. -1 for OOD sets).
        num_classes: if given, a label outside ``0 .. num_classes - 1`` is a DataError naming file:line.
    Items are ``(image_tensor, label)``.
    """

    def __init__(self, imglist: str | os.PathLike, data_root: str | os.PathLike,
                 transform: Callable, mode: str = "RGB", on_bad_image: str = "error",
                 label_override: int | None = None, num_classes: int | None = None):
        if on_bad_image not in ("error", "skip"):
            raise DataError(f"dataset.on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
        self.imglist, self.data_root = Path(imglist), Path(data_root)
        self.entries = read_imglist(self.imglist, num_classes)
        self.transform, self.mode = transform, mode
        self.on_bad_image, self.label_override = on_bad_image, label_override

    def __len__(self) -> int:
        return len(self.entries)

    def labels(self) -> torch.Tensor:
        if self.label_override is not None:
            return torch.full((len(self.entries),), self.label_override, dtype=torch.long)
        return torch.tensor([e.label for e in self.entries], dtype=torch.long)

    def load_image(self, entry: ImglistEntry) -> Image.Image:
        path = self.data_root / entry.path
        try:
            with Image.open(path) as img:
                img.load()
                return convert_image(img, self.mode, path)
        except DataError as exc:  # a mode that cannot be brought to 8 bits (image_modes)
            raise DataError(f"{exc} (listed at {self.imglist}:{entry.line})") from None
        except FileNotFoundError:
            problem = "missing image"
        except Image.DecompressionBombError as exc:  # not an OSError: would otherwise be a traceback
            problem = f"image too large to decode safely ({exc})".replace("\n", " ")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            problem = f"unreadable image ({exc})"
        raise DataError(f"{path}: {problem} (listed at {self.imglist}:{entry.line})")

    def image_or_skip(self, entry: ImglistEntry):
        """:meth:`load_image`, or None for an unreadable image under ``on_bad_image: skip`` (else its
        DataError)."""
        try:
            return self.load_image(entry)
        except DataError:
            if self.on_bad_image == "skip":
                return None
            raise

    def __getitem__(self, index: int):
        entry = self.entries[index]
        image = self.image_or_skip(entry)
        if image is None:
            return None
        label = entry.label if self.label_override is None else self.label_override
        return self.transform(image), label


class SkipCounter:
    """Collate function that drops skipped (None) items and counts them in ``self.skipped``.

    The count is exact with ``num_workers=0``; with worker processes each batch also carries it.
    """

    def __init__(self):
        self.skipped = 0

    def __call__(self, batch):
        kept = [item for item in batch if item is not None]
        self.skipped += len(batch) - len(kept)
        if not kept:
            return torch.empty(0), torch.empty(0, dtype=torch.long), len(batch)
        images = torch.stack([k[0] for k in kept])
        labels = torch.as_tensor([k[1] for k in kept], dtype=torch.long)
        return images, labels, len(batch) - len(kept)


def write_imglist_if_changed(path, rows) -> None:
    """Write ``(relative_path, label)`` rows as an image list at ``path`` unless it already holds exactly
    them (so reruns do not touch the file); DataError naming the file when it cannot be written."""
    from ..utils.io import write_text
    path = Path(path)
    text = "".join(f"{p} {lab}\n" for p, lab in rows)
    if not (path.is_file() and path.read_text() == text):
        try:
            write_text(path, text)
        except OSError as exc:
            raise DataError(f"{path}: cannot write the image list ({exc}); set benchmark.derived_dir") from None
