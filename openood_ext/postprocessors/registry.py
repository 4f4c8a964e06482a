"""The POSTPROCESSORS registry (kept in its own module so method files can import it cheaply).

Every entry must have ``score``; the other methods of the contract have defaults (see ``base.py``).
"""

from ..registry import Registry

POSTPROCESSORS = Registry("postprocessors", required=("score",), home="openood_ext.postprocessors")
