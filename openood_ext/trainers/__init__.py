"""Trainers: fit a network on a benchmark's ID training split."""

from .registry import TRAINERS
from . import base  # noqa: F401  (registration)

__all__ = ["TRAINERS"]
