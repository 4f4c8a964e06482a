"""Pictures and the HTML report (one page; plots as PNG files beside it) of a run directory."""

from .html import write_report
from .plots import ad_class_roc_plot, heatmap_grid, histogram_plot, roc_plot, roc_points

__all__ = ["write_report", "roc_plot", "roc_points", "histogram_plot", "ad_class_roc_plot", "heatmap_grid"]
