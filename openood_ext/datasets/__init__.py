"""Image lists, benchmark definitions and the benchmarks themselves: the embedded ``digits``, the named
benchmarks that ``openood-ext data prepare`` builds (:mod:`.openood_benchmarks`) and the anomaly-detection
sets read from folders (:mod:`.anomaly`). Importing the package registers them all in BENCHMARKS."""

from .benchmark import Benchmark, Split
from .registry import BENCHMARKS
from . import anomaly, digits, openood_benchmarks  # noqa: F401  (registration)

__all__ = ["BENCHMARKS", "Benchmark", "Split"]
