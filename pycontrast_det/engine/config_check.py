"""The config keys the trainer does not implement, refused by name before anything runs (the model's own keys
are checked by ``modeling.build``).

A key is either implemented or refused, never accepted and ignored. The sub-settings of a feature that is
switched off (``TEST.AUG.MIN_SIZES`` while ``TEST.AUG.ENABLED`` is False, ``DATALOADER.REPEAT_THRESHOLD`` under
the ``TrainingSampler``, ``SOLVER.BASE_LR_END`` under ``WarmupMultiStepLR``) change nothing, as in detectron2.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import CfgNode

# key -> (the values the trainer implements, what is missing / what to do instead)
_UNSUPPORTED: dict[str, tuple[tuple[Any, ...], str]] = {
    "DATALOADER.SAMPLER_TRAIN": (("TrainingSampler",), "only detectron2's TrainingSampler (an endless "
                                 "reshuffled stream) is implemented"),
    "DATASETS.PROPOSAL_FILES_TRAIN": (([],), "precomputed proposals are not supported"),
    "DATASETS.PROPOSAL_FILES_TEST": (([],), "precomputed proposals are not supported"),
    "INPUT.CROP.ENABLED": ((False,), "random cropping (INPUT.CROP.*) is not implemented"),
    "INPUT.MASK_FORMAT": (("polygon", "bitmask"), "masks are polygons or bitmaps (RLE)"),
    "TEST.AUG.ENABLED": ((False,), "test-time augmentation (TEST.AUG.*) is not implemented"),
    "TEST.EXPECTED_RESULTS": (([],), "results are not checked against expected values; reproduce prints them "
                              "beside the published ones"),
    "VIS_PERIOD": ((0,), "training visualisations are not written"),
    "FLOAT32_PRECISION": (("",), "the float32 matmul precision is not set by the trainer; call "
                          "torch.set_float32_matmul_precision yourself"),
    "GLOBAL.HACK": ((1.0,), "a detectron2 internal with no effect"),
}


def _get(cfg: "CfgNode", key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return list(node) if isinstance(node, tuple) else node


def check_engine_config(cfg: "CfgNode", world_size: int) -> None:
    """Raise ConfigError naming the first key the trainer would not honour for ``world_size`` processes."""
    for key, (allowed, why) in _UNSUPPORTED.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key} = {value!r} is not supported by this trainer: {why} (supported: "
                              f"{', '.join(repr(a) for a in allowed)})")
    reference = int(cfg.SOLVER.REFERENCE_WORLD_SIZE)
    if reference not in (0, world_size):
        raise ConfigError(f"SOLVER.REFERENCE_WORLD_SIZE = {reference} with {world_size} process(es): detectron2 would "
                          "rescale the schedule; here set it to 0 and pass --scale-to-batch N "
                          "(the linear-scaling rule)")
    if not len(cfg.DATASETS.TRAIN):
        raise ConfigError("DATASETS.TRAIN names no dataset; name one (or several, trained on as one)")
    if len(cfg.DATASETS.TEST) > 1:
        raise ConfigError(f"DATASETS.TEST names {len(cfg.DATASETS.TEST)} datasets; the trainer evaluates one: "
                          "keep one and evaluate the others with pycontrast-zoo evaluate")
    batch = int(cfg.SOLVER.IMS_PER_BATCH)
    if batch < world_size or batch % world_size:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH {batch} is not a positive multiple of the {world_size} "
                          "processes; change it (or --scale-to-batch) or the number of processes")
    if int(cfg.SOLVER.MAX_ITER) < 1:
        raise ConfigError(f"SOLVER.MAX_ITER must be >= 1, got {cfg.SOLVER.MAX_ITER}")
    for key in ("SOLVER.CHECKPOINT_PERIOD", "TEST.EVAL_PERIOD", "SOLVER.CHECKPOINTS_KEPT"):
        if int(_get(cfg, key)) < 0:
            raise ConfigError(f"{key} must be >= 0, got {_get(cfg, key)}")


__all__ = ["check_engine_config"]
