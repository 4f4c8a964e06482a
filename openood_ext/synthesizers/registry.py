"""The OUTLIER_SOURCES registry: image-space and feature-space outlier sources, configured under
``trainer.outliers``. ``SYNTHESIZERS`` is its earlier name, kept as an alias; plugins advertising
entry points in the ``openood_ext.synthesizers`` group are still found."""

from ..registry import Registry

OUTLIER_SOURCES = Registry("outlier_sources", home="openood_ext.synthesizers", former_kinds=("synthesizers",))
SYNTHESIZERS = OUTLIER_SOURCES  # earlier name of the same registry
