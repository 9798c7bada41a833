"""Reports on runs: training logs read back (metrics, losses), loss curves, and the published row beside the
measured one."""
from .compare import compare_with_published
from .curves import plot_curves
from .logs import LogSummary, LossPoint, parse_log

__all__ = ["LogSummary", "LossPoint", "compare_with_published", "parse_log", "plot_curves"]
