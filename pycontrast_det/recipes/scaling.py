"""The linear-scaling rule, applied only on request (``--scale-to-batch N``).

The published recipes use 16 images per iteration (8 GPUs x 2). With fewer images per iteration, the
equivalent schedule multiplies IMS_PER_BATCH and BASE_LR by N/16 and divides STEPS, MAX_ITER,
WARMUP_ITERS, CHECKPOINT_PERIOD and TEST.EVAL_PERIOD by it (the same number of epochs at the same
lr-per-image), as detectron2's ``auto_scale_workers`` does.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import CfgNode


def scale_to_batch(cfg: "CfgNode", ims_per_batch: int) -> tuple["CfgNode", str]:
    """A clone of ``cfg`` rescaled to ``ims_per_batch`` images per iteration, and a sentence saying what
    changed (for the log). ``cfg`` itself is not modified."""
    old = int(cfg.SOLVER.IMS_PER_BATCH)
    if ims_per_batch < 1:
        raise ConfigError(f"--scale-to-batch must be a positive number of images, got {ims_per_batch}")
    scale = ims_per_batch / old
    out = cfg.clone()
    out.defrost()
    solver = out.SOLVER

    def _iters(value: int) -> int:
        return int(round(value / scale))

    solver.IMS_PER_BATCH = int(ims_per_batch)
    solver.BASE_LR = float(cfg.SOLVER.BASE_LR) * scale
    solver.MAX_ITER = _iters(cfg.SOLVER.MAX_ITER)
    solver.WARMUP_ITERS = _iters(cfg.SOLVER.WARMUP_ITERS)
    solver.STEPS = tuple(_iters(s) for s in cfg.SOLVER.STEPS)
    solver.CHECKPOINT_PERIOD = max(1, _iters(cfg.SOLVER.CHECKPOINT_PERIOD))
    out.TEST.EVAL_PERIOD = _iters(cfg.TEST.EVAL_PERIOD)
    out.freeze()
    message = (f"linear scaling rule applied (--scale-to-batch {ims_per_batch}): IMS_PER_BATCH {old} -> "
               f"{ims_per_batch}, BASE_LR {cfg.SOLVER.BASE_LR:g} -> {solver.BASE_LR:g}, MAX_ITER "
               f"{cfg.SOLVER.MAX_ITER} -> {solver.MAX_ITER}, STEPS {tuple(cfg.SOLVER.STEPS)} -> {solver.STEPS}, "
               f"WARMUP_ITERS {cfg.SOLVER.WARMUP_ITERS} -> {solver.WARMUP_ITERS}, CHECKPOINT_PERIOD "
               f"{cfg.SOLVER.CHECKPOINT_PERIOD} -> {solver.CHECKPOINT_PERIOD}")
    return out, message
