"""The BENCHMARKS registry: named benchmark definitions (image lists + preprocessing + data preparation)."""

from ..registry import Registry

BENCHMARKS = Registry("benchmarks", home="openood_ext.datasets")
