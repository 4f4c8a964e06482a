"""Anomaly detection: the class x seed protocol (``ad``), its parameter sweep (``ad_sweep``) and the EOE
outlier-image search (``oe_search``), with the modules they share.

* :mod:`.protocol`: settings, one cell (data -> train -> score -> write) and the cell loop + aggregation;
* :mod:`.jobs` / :mod:`.cell_process`: cells handed to a launcher backend as jobs;
* :mod:`.data`: the benchmark adapted to one normal class (preprocessing, outlier records);
* :mod:`.infer`: scoring unlabeled images with a finished cell (``openood-ext ad-score``);
* :mod:`.heatmaps`, :mod:`.sweep_plot`: figures.
"""

from .protocol import ADPipeline, ADSettings, cell_benchmark, collect_test_set
from . import oe_search, sweep  # noqa: F401  (registration of ad_sweep and oe_search)

__all__ = ["ADPipeline", "ADSettings", "cell_benchmark", "collect_test_set"]
