"""The TRAINERS registry."""

from ..registry import Registry

TRAINERS = Registry("trainers")
