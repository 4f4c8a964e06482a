"""Image lists, benchmark definitions and the embedded ``digits`` benchmark."""

from .benchmark import Benchmark, Split
from .registry import BENCHMARKS
from . import digits  # noqa: F401  (registration)

__all__ = ["BENCHMARKS", "Benchmark", "Split"]
