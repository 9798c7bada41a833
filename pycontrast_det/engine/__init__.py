"""Evaluation (COCO metrics), training (single process or torch.distributed), reproduce, fine-tuning, and log
parsing."""
from .evaluation import EvalResult, compare_with_published, evaluate
from .curves import plot_curves
from .logs import LogSummary, LossPoint, parse_log
from .finetune import FinetunePlan, finetune, plan_finetune
from .launch import launch
from .reproduce import ReproducePlan, ReproduceResult, plan_reproduction, reproduce
from .train import TrainResult, train

__all__ = [
    "EvalResult", "FinetunePlan", "LogSummary", "LossPoint", "ReproducePlan", "ReproduceResult", "TrainResult",
    "compare_with_published", "evaluate", "finetune", "launch", "parse_log", "plan_finetune", "plan_reproduction",
    "plot_curves", "reproduce", "train",
]
