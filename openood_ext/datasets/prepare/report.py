"""What one ``openood-ext data prepare`` call did: images ingested, lists written, sets left absent."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class PrepareReport:
    benchmark: str
    root: Path
    ingested: dict[str, int] = field(default_factory=dict)
    lists: dict[str, int | None] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)  # list file -> why / where to get it
    seconds: float = 0.0
