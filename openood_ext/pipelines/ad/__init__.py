"""Anomaly detection: the class x seed protocol (``ad``), its parameter sweep (``ad_sweep``) and the EOE
outlier-image search (``oe_search``), with the modules they share.

* :mod:`.settings`: the ``ad:`` section (:class:`ADSettings`) and the per-cell benchmark helpers;
* :mod:`.cell`: one cell (data -> train -> score -> write), the only class x seed body, and its context;
* :mod:`.protocol`: the ``ad`` pipeline: the cell loop + aggregation;
* :mod:`.jobs` / :mod:`.cell_process`: cells handed to a launcher backend as jobs;
* :mod:`.sweep`, :mod:`.oe_search`: ``ad_sweep`` and ``oe_search``, calling the protocol directly;
* :mod:`.data`: the benchmark adapted to one normal class (preprocessing, outlier records);
* :mod:`.infer`: scoring unlabeled images with a finished cell (``openood-ext ad-score``);
* :mod:`.heatmaps`, :mod:`.sweep_plot`: figures.
"""

from .cell import ADContext, run_cell
from .protocol import ADPipeline, run_protocol
from .settings import ADSettings, cell_benchmark, collect_test_set
from . import oe_search, sweep  # noqa: F401  (registration of ad_sweep and oe_search)

__all__ = ["ADContext", "ADPipeline", "ADSettings", "cell_benchmark", "collect_test_set", "run_cell", "run_protocol"]
