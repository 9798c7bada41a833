"""Evaluation: a detector's inference over a dataset (:mod:`.evaluator`) and its COCO scoring (:mod:`.coco`)."""
from .coco import BACKENDS, METRICS, EvalResult, score_results
from .evaluator import evaluate, instances_to_coco

__all__ = ["BACKENDS", "METRICS", "EvalResult", "evaluate", "instances_to_coco", "score_results"]
