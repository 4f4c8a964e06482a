"""The POSTPROCESSORS registry (kept in its own module so method files can import it cheaply)."""

from ..registry import Registry

POSTPROCESSORS = Registry("postprocessors")
