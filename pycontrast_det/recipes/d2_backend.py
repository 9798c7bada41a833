"""``--engine detectron2``: train a reproduction plan with detectron2's own trainer (imported lazily).

Stock detectron2 lacks the ``Res5ROIHeadsExtraNorm`` ROI head the C4 configs name (it lived in MoCo's
``train_net.py``; PyContrast issue 40), so :func:`register_res5_extra_norm` adds one: detectron2's
``Res5ROIHeads`` with one norm layer (MODEL.RESNETS.NORM) appended to the res5 stage, stored as
``roi_heads.res5.norm.*`` as in MoCo's checkpoints. Datasets that detectron2 does not know (``shapes``,
any COCO json) are registered with ``register_coco_instances``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..errors import Detectron2NotInstalledError

if TYPE_CHECKING:
    from .reproduce import ReproducePlan

INSTALL_HINT = ("install it (https://detectron2.readthedocs.io/en/latest/tutorials/install.html, e.g. "
                "pip install 'git+https://github.com/facebookresearch/detectron2.git') or use --engine native")


def require_detectron2() -> Any:
    """The ``detectron2`` package, or Detectron2NotInstalledError saying how to get it."""
    try:
        import detectron2
    except ImportError as exc:
        raise Detectron2NotInstalledError(f"--engine detectron2 needs detectron2, which cannot be imported here "
                                          f"({exc}); {INSTALL_HINT}") from exc
    return detectron2


def register_res5_extra_norm() -> type:
    """Register (once) and return detectron2's ``Res5ROIHeadsExtraNorm``."""
    require_detectron2()
    from detectron2.layers import get_norm
    from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads

    name = "Res5ROIHeadsExtraNorm"
    if name in ROI_HEADS_REGISTRY:
        return ROI_HEADS_REGISTRY.get(name)

    class Res5ROIHeadsExtraNorm(Res5ROIHeads):
        """Res5ROIHeads whose res5 stage ends with one extra norm layer (the MoCo paper's C4 head)."""

        @classmethod
        def _build_res5_block(cls, cfg: Any) -> tuple[Any, int]:
            stage, out_channels = super()._build_res5_block(cfg)
            stage.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
            return stage, out_channels

    ROI_HEADS_REGISTRY.register(Res5ROIHeadsExtraNorm)
    return Res5ROIHeadsExtraNorm


def _to_detectron2_cfg(cfg: Any, device: str) -> Any:
    """detectron2's CfgNode with every value of ours that detectron2's version knows (others are reported)."""
    from detectron2.config import get_cfg

    d2cfg = get_cfg()
    unknown: list[str] = []

    def copy(src: Any, dst: Any, prefix: str) -> None:
        for key, value in src.items():
            if key not in dst:
                unknown.append(prefix + key)
            elif isinstance(value, dict):
                copy(value, dst[key], f"{prefix}{key}.")
            else:
                dst[key] = list(value) if isinstance(value, tuple) and isinstance(dst[key], list) else value

    copy(cfg, d2cfg, "")
    d2cfg.MODEL.DEVICE = str(device)
    if unknown:
        import logging

        logging.getLogger(__name__).warning("keys this detectron2 does not have (left out): %s", ", ".join(unknown))
    return d2cfg


def _register_datasets(cfg: Any) -> None:
    """Register every DATASETS.TRAIN/TEST name detectron2 does not already know, as COCO-format data."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    from ..data import resolve_dataset

    for name in cfg.DATASETS.TRAIN:
        if name not in DatasetCatalog.list():
            spec = resolve_dataset(name, split="train")
            register_coco_instances(name, {}, str(spec.json_file), str(spec.image_root))
    for name in cfg.DATASETS.TEST:
        if name not in DatasetCatalog.list():
            spec = resolve_dataset(name)
            register_coco_instances(name, {}, str(spec.json_file), str(spec.image_root))


def _d2_main(plan: "ReproducePlan") -> Optional[dict]:
    """One detectron2 training process: prepare (rank 0), register, train, return the final evaluation."""
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator
    from detectron2.utils import comm as d2comm
    from detectron2.utils.env import seed_all_rng

    from ..checkpoints import stage_backbone

    ours = plan.config()
    if d2comm.is_main_process() and plan.weights:  # the converted pretrain, as the native engine trains from it
        stage_backbone(plan.weights_source, plan.weights, input_format=ours.INPUT.FORMAT,
                       stride_in_1x1=ours.MODEL.RESNETS.STRIDE_IN_1X1)
    d2comm.synchronize()
    register_res5_extra_norm()
    cfg = _to_detectron2_cfg(ours, plan.options.device)
    cfg.OUTPUT_DIR = str(Path(plan.output_dir) / "detectron2")
    cfg.freeze()
    # as tools/train_net.py's default_setup: SEED + rank seeds torch, numpy and random (and so the sampler)
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + d2comm.get_rank())
    _register_datasets(cfg)

    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg: Any, dataset_name: str, output_folder: Optional[str] = None) -> Any:
            return COCOEvaluator(dataset_name, output_dir=output_folder or str(Path(cfg.OUTPUT_DIR) / "inference"))

    Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=plan.options.resume)
    trainer.train()
    # DefaultTrainer.train() returns results only when TEST.EXPECTED_RESULTS is set; its eval hook keeps them
    results = getattr(trainer, "_last_eval_results", None) or {}
    return {task: dict(values) for task, values in results.items()}


def train_with_detectron2(plan: "ReproducePlan") -> Optional[dict]:
    """Run ``plan`` with detectron2's DefaultTrainer (and detectron2's launcher); rank 0's metrics
    (task -> metric -> AP in percent), None elsewhere."""
    require_detectron2()
    from detectron2.engine import launch

    options = plan.options
    if options.num_gpus == 1 and options.num_machines == 1:
        return _d2_main(plan)
    launch(_d2_main, options.num_gpus, num_machines=options.num_machines, machine_rank=options.machine_rank,
           dist_url=options.dist_url, args=(plan,))
    if options.machine_rank != 0:
        return None
    from ..reports.logs import parse_log

    summary = parse_log(Path(plan.output_dir) / "detectron2" / "metrics.json")
    return {task: summary.final(task) for task in ("bbox", "segm") if summary.final(task)}
