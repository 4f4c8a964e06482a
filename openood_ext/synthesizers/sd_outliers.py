"""OUTLIER_SOURCES ``sd_text_outliers`` and ``sd_latent_outliers`` (feature-space sources for OAML).

Both read one generation folder ``root`` (see :mod:`.sd_pipeline`, which writes it once and resumes):

* ``sd_text_outliers``: the Dream-OOD text-space outlier pool [C, M, D] (D = 768 for SD v1.4); it also
  owns the generation: with ``generate: true`` (default) whatever is missing under ``root`` (pool,
  images, latents, image list) is generated at set-up, before training; with ``generate: false`` a
  missing or incomplete folder is a DataError naming it.
* ``sd_latent_outliers``: the latents behind the generated images, flattened (4 x 64 x 64 = 16384 for
  512-px SD v1.4). ``mode: denoised`` (default, the OAML code: the final PLMS latents z_0) or
  ``forward_noised`` (the paper's wording: z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps with SD's
  scaled-linear schedule at ``timestep``, fresh noise per draw).

The trainer draws rows with ``draw_features(n, generator)`` -> [n, D] (uniform over the pool, with
replacement only when n exceeds the pool). A pool smaller than the ID batch is a ConfigError: CLUB pairs
outliers and ID features row by row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal, get_args

import numpy as np
import torch

from .. import distributed
from ..errors import ConfigError, DataError
from ..schema import Range
from .base import OutlierSource
from .registry import OUTLIER_SOURCES
from .sd_pipeline import SDConfig, ensure_generated, entry_paths, expected_entries, status

Mode = Literal["denoised", "forward_noised"]
MODES = get_args(Mode)


def _draw(pool: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` rows of ``pool`` (on its device), chosen with the CPU ``generator`` (the same rows on every device)."""
    if n <= len(pool):
        idx = torch.randperm(len(pool), generator=generator)[:n]
    else:
        idx = torch.randint(len(pool), (n,), generator=generator)
    return pool[idx.to(pool.device, non_blocking=True)]


def _on_run_device(source, pool: torch.Tensor) -> torch.Tensor:
    """The pool on the run's device (once, at check time): drawing then copies no rows from the host at
    every step (the copy of unpinned host rows waits for the device)."""
    device = getattr(getattr(source, "ctx", None), "device", None)
    return pool.to(device) if device is not None else pool


def _require_batch(source, n: int, what: str, fix: str) -> None:
    """ConfigError when a pool of ``n`` outlier rows cannot fill one image batch of the run."""
    bs = getattr(getattr(source, "ctx", None), "batch_size", None)
    if bs is not None and n < bs:
        raise ConfigError(f"{what.format(n=n)}, fewer than the image batch ({bs}); {fix} or lower the batch size")


@OUTLIER_SOURCES.register("sd_text_outliers")
class SDTextOutliers(OutlierSource):
    """Text-embedding outliers (module docstring). Keys: ``root`` (folder), ``generate`` (bool), ``device``
    (for generation; default the run's device) and the :class:`~.sd_pipeline.SDConfig` fields
    (``model``, ``classes``, ``id_features``, ``K``, ``select``, ``candidates``, ``keep``, ``sigma``,
    ``repeats``, ``batches``, ``images_per_class``, ``chunk``, ``steps``, ``guidance``, ``size``, ``save_size``, ``seed``)."""

    kind = "features"

    def __init__(self, root: str = "outliers/sd_cifar10", generate: bool = True, device: str | None = None,
                 **sd: object):
        unknown = set(sd) - set(SDConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; expected root, generate, device or "
                             f"{', '.join(SDConfig.__dataclass_fields__)}")
        from ..config import to_plain

        self.root, self.generate, self.device = Path(root), bool(generate), device
        self.cfg = SDConfig(**{k: to_plain(v) for k, v in sd.items()}).check()
        self.pool: torch.Tensor | None = None

    def setup(self, ctx) -> None:
        super().setup(ctx)
        classes = getattr(ctx.benchmark, "num_classes", None)
        if isinstance(classes, int) and classes != len(self.cfg.classes):
            raise ConfigError(f"trainer.outliers.classes: {len(self.cfg.classes)} class names, the benchmark "
                              f"has {classes} classes")
        if self.generate:  # torchrun: rank 0 generates into the shared folder, the others wait, then read
            import logging
            log = logging.getLogger("openood_ext")
            distributed.run_on_main(lambda: ensure_generated(self.root, self.cfg, self.device or ctx.device, log))

    def check(self) -> None:
        ok, problems = status(self.root, self.cfg)
        if not ok:
            raise DataError(f"sd outliers under {self.root} are incomplete ({problems[0]}); generate them with "
                            f"trainer.outliers.generate=true")
        self.pool = _on_run_device(self, torch.load(self.root / "text_outliers.pt", map_location="cpu",
                                                    weights_only=True)["outliers"].float())
        self.pool_flat = self.pool.reshape(-1, self.pool.shape[-1])
        _require_batch(self, len(self.pool_flat), "trainer.outliers: the text outlier pool has {n} rows",
                       "raise repeats/keep")

    @property
    def dim(self) -> int:
        return int(self.pool.shape[-1])

    def draw_features(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return _draw(self.pool_flat, n, generator)

    def describe(self) -> str:
        return f"sd_text_outliers: {tuple(self.pool.shape) if self.pool is not None else '?'} from {self.root}"


@OUTLIER_SOURCES.register("sd_latent_outliers")
class SDLatentOutliers(OutlierSource):
    """Latent outliers (module docstring): ``root`` (the generation folder), ``mode``, ``timestep``."""

    kind = "features"

    def __init__(self, root: str = "outliers/sd_cifar10", mode: Mode = "denoised",
                 timestep: Annotated[int, Range(0, 999)] = 500):
        self.root, self.mode, self.timestep = Path(root), mode, int(timestep)
        self.pool: torch.Tensor | None = None

    def check(self) -> None:
        meta = self.root / "meta.json"
        if not meta.is_file():
            raise DataError(f"sd_latent_outliers: {meta} not found; generate the outliers first "
                            f"(sd_text_outliers with generate=true)")
        cfg = SDConfig(**json.loads(meta.read_text())["config"])
        ok, problems = status(self.root, cfg)
        if not ok:
            raise DataError(f"sd_latent_outliers: {problems[0]}; regenerate with sd_text_outliers generate=true")
        rows = [np.load(entry_paths(self.root, cfg, c, k)[1]).reshape(-1) for c, k in expected_entries(cfg)]
        self.pool = _on_run_device(self, torch.from_numpy(np.stack(rows)).float())
        _require_batch(self, len(self.pool), "sd_latent_outliers: {n} latents", "raise batches (or images_per_class)")

    @property
    def dim(self) -> int:
        return int(self.pool.shape[-1])

    def draw_features(self, n: int, generator: torch.Generator) -> torch.Tensor:
        z = _draw(self.pool, n, generator)
        if self.mode == "forward_noised":
            betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
            abar = torch.cumprod(1 - betas, 0)[self.timestep].float()
            noise = torch.randn(z.shape, generator=generator).to(z.device, non_blocking=True)
            z = abar.sqrt() * z + (1 - abar).sqrt() * noise
        return z

    def describe(self) -> str:
        return f"sd_latent_outliers ({self.mode}): {tuple(self.pool.shape) if self.pool is not None else '?'}"
