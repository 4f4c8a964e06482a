"""Anomaly-detection benchmarks read from folders in place: any class-per-folder tree (``ad_folder``),
MVTec-AD (``mvtec``) and ImageNet-30 (``imagenet30``). Each registers itself in BENCHMARKS."""

from . import folder, imagenet30, mvtec  # noqa: F401  (registration)
