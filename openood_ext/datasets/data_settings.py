"""The ``data:`` section of a run: how training images (and, decoded the same way, evaluation images:
:mod:`.eval_batches`) reach the network.

    data:
      backend: auto      # tensor: decode once (decoded-image cache), augment whole batches on the device;
                         # pil: per-image PIL transforms in a DataLoader; auto: tensor wherever every
                         # transform of the recipe is supported, else pil with one log line naming it
      cache: true        # keep the decoded images on disk between runs (false: decode into memory each run)
      cache_dir: null    # null: <cache_dir>/decoded (the run's cache_dir); with no cache_dir either,
                         # the images are decoded into memory each run and nothing is written
      max_side: 64       # the tensor backend decodes lists of images no larger than this (else pil)
      on_device: true    # hold the decoded set on the training device (false: in host memory)

The backend changes the random streams of augmentation and shuffling (not their distributions), so
it is part of a run's identity.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Mapping

from ..errors import ConfigError
from ..schema import PositiveInt, check_section

Backend = Literal["auto", "tensor", "pil"]


@dataclass(frozen=True)
class DataSettings:
    backend: Backend = "auto"
    cache: bool = True
    cache_dir: str | None = None
    max_side: PositiveInt = 64
    on_device: bool = True

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> "DataSettings":
        """From a run config (its ``data:`` section, checked: one ConfigError line naming the key)."""
        section = cfg.get("data") if cfg is not None else None
        if section is not None and not isinstance(section, Mapping):
            raise ConfigError(f"data: expected a mapping such as {{backend: pil}}, got {section!r}")
        section = dict(section or {})
        check_section("data", cls, section)
        settings = cls(**section)
        base = cfg.get("cache_dir") if cfg is not None else None
        if settings.cache_dir is None and base:
            settings = cls(**{**{f.name: getattr(settings, f.name) for f in fields(cls)},
                              "cache_dir": str(Path(str(base)) / "decoded")})
        return settings

    def cache_root(self) -> Path | None:
        """Where decoded lists live (checked: a file or unwritable directory is a ConfigError), or None."""
        if not self.cache or self.cache_dir is None:
            return None
        from .decoded_cache import check_cache_dir
        return check_cache_dir(self.cache_dir)
