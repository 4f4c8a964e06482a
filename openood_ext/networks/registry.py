"""The NETWORKS registry."""

from ..registry import Registry

NETWORKS = Registry("networks", home="openood_ext.networks")
