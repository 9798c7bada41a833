"""Evaluation (COCO metrics), training (single process or torch.distributed), reproduce, and log parsing."""
from .evaluation import EvalResult, compare_with_published, evaluate
from .curves import plot_curves
from .logs import LogSummary, LossPoint, parse_log
from .launch import launch
from .reproduce import ReproducePlan, ReproduceResult, plan_reproduction, reproduce
from .train import TrainResult, train

__all__ = [
    "EvalResult", "LogSummary", "LossPoint", "ReproducePlan", "ReproduceResult", "TrainResult",
    "compare_with_published", "evaluate", "launch", "parse_log", "plan_reproduction", "plot_curves",
    "reproduce", "train",
]
