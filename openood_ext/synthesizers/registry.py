"""The SYNTHESIZERS registry (outlier sources)."""

from ..registry import Registry

SYNTHESIZERS = Registry("synthesizers", home="openood_ext.synthesizers")
