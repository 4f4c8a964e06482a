"""The PIPELINES registry: each entry takes the resolved config and has ``run() -> dict``."""

from ..registry import Registry

PIPELINES = Registry("pipelines", home="openood_ext.pipelines")
