"""The NETWORKS registry."""

from ..registry import Registry

NETWORKS = Registry("networks")
