from .evaluation import EvalResult, compare_with_published, evaluate
from .logs import LogSummary, LossPoint, parse_log, plot_curves
