"""The trainer hook that draws a finished run's curves.png (losses, lr, AP), beside a reference (published) log.

Supplied by the commands that train (``train``, ``reproduce``, ``finetune``), since drawing belongs to reports,
above the training loop.
"""
from __future__ import annotations

import os
from typing import Optional, Union

from ..engine.hooks import HookBase


class CurvesHook(HookBase):
    """After a run that was not stopped early: OUTPUT/curves.png on rank 0 (``reference_log`` drawn dashed)."""

    def __init__(self, reference_log: Optional[Union[str, os.PathLike]] = None) -> None:
        self.reference_log = reference_log

    def after_train(self) -> None:
        from .curves import plot_curves
        from .logs import parse_log

        t = self.trainer
        if t.rank != 0 or t.interrupted:
            return
        summaries = [parse_log(t.output_dir / "metrics.json", label="ours")]
        if self.reference_log is not None:
            summaries.append(parse_log(self.reference_log, label="published"))
        path = plot_curves(summaries, t.output_dir / "curves.png", title=t.output_dir.name)
        t.logger.info(f"Curves: {path}")


__all__ = ["CurvesHook"]
