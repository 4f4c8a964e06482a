"""``openood-ext sweep``: a grid of runs on a launcher backend (see :mod:`.command`)."""

from .command import main, parse_grid, plan_sweep, point_name

__all__ = ["main", "parse_grid", "plan_sweep", "point_name"]
