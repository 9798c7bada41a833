"""Inference of a detector over a dataset (one process or every rank of a group), scored by :mod:`.coco`."""
from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence, Union

from ..errors import ConfigError
from ..utils import comm
from ..utils.events import progress
from .coco import EvalResult, pick_backend, score_results

if TYPE_CHECKING:
    from ..coco_classes import CategoryMap
    from ..config import CfgNode
    from ..data.catalog import DatasetSpec
    from ..modeling.meta_arch import MaskRCNN

logger = logging.getLogger(__name__)

# a model in eval mode, or any callable like one: batched inputs -> per-image output dicts in original pixels
Predictor = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


def evaluate(model_or_entry: Union[str, Predictor], dataset: Union[str, os.PathLike[str], DatasetSpec] = "shapes",
             *, split: str = "val", device: str = "cpu", output_dir: Optional[Union[str, os.PathLike[str]]] = None,
             backend: str = "auto", max_images: Optional[int] = None, rank: int = 0, world_size: int = 1,
             cfg: Optional[CfgNode] = None, num_workers: int = 0, log: Optional[logging.Logger] = None
             ) -> EvalResult:
    """Run ``model_or_entry`` over ``dataset`` (name, path or DatasetSpec) and score it with COCOeval.

    ``model_or_entry``: a zoo entry name (loaded on ``device``), or a model / callable taking
    batched_inputs and returning per-image ``{"boxes", "scores", "classes"[, "masks"]}`` in original pixels
    (the model's eval-mode output); its ``.cfg`` (or ``cfg``) sets input size and format. ``output_dir``
    receives ``coco_instances_results.json`` and ``metrics.json`` (one detectron2-style JSON line).
    Distributed inference is opt-in: every rank of an initialised process group calls this with its
    ``rank`` and the ``world_size``; each infers on its slice, rank 0 scores, all return the same result.
    The default (0, 1) evaluates everything in this process, so calling it from rank 0 alone is safe.
    ``log`` (default: this module's logger) receives progress lines during inference and the COCOeval tables.
    """
    import torch

    from ..data import DatasetSpec, build_test_loader, check_num_classes, resolve_dataset

    backend = pick_backend(backend)
    if world_size > 1 and not (comm.is_distributed() and comm.get_world_size() == world_size):
        raise ConfigError(f"world_size {world_size} needs an initialised torch.distributed process group of "
                          f"that size (found {comm.get_world_size()} process(es))")
    spec = dataset if isinstance(dataset, DatasetSpec) else resolve_dataset(dataset, split)
    model = _load_model(model_or_entry, device) if isinstance(model_or_entry, str) else model_or_entry
    cfg = cfg if cfg is not None else getattr(model, "cfg", None)
    if cfg is None:
        raise ConfigError("evaluate() needs the model's config for input size and format: pass cfg=, or a model "
                          "with a .cfg attribute")
    check_num_classes(spec, cfg.MODEL.ROI_HEADS.NUM_CLASSES, model=type(model).__name__)
    _check_class_names(getattr(model, "classes", None), spec)
    loader = build_test_loader(cfg, spec, rank=rank, world_size=world_size, max_images=max_images,
                               num_workers=num_workers)
    log = log or logger
    share = f" (process {rank} of {world_size})" if world_size > 1 else ""

    started = time.perf_counter()
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    image_ids: list[int] = []
    results: list[dict[str, Any]] = []
    try:
        with torch.no_grad():
            for batch in progress(loader, len(loader), f"Inference on {spec.name}{share}", log):
                for inputs, outputs in zip(batch, model(batch)):
                    image_ids.append(inputs["image_id"])
                    results.extend(instances_to_coco(inputs["image_id"], outputs, spec.category_ids))
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    image_ids, results, shards = _gather(image_ids, results, world_size)

    outcome = None
    if rank == 0:
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        log.info(f"Scoring {len(results)} detections on {len(image_ids)} images with COCOeval ({backend}, "
                 f"{', '.join(tasks)})")
        outcome = score_results(spec, image_ids, results, tasks, backend, output_dir, log=log)
        outcome.seconds = time.perf_counter() - started
        outcome.shards = shards
    result = comm.broadcast_object(outcome) if world_size > 1 else outcome
    assert result is not None, "rank 0 scores; a single process is rank 0"
    return result


def _check_class_names(classes: Optional[CategoryMap], spec: DatasetSpec) -> None:
    """Warn when a model whose classes have names is scored on a dataset that names them otherwise: classes are
    matched by position, so the AP would measure the wrong pairs."""
    from ..coco_classes import CategoryMap

    if classes is None or classes == CategoryMap.placeholder(len(classes)) or classes.names == spec.category_names:
        return
    logger.warning(f"the model's classes ({', '.join(classes.names[:5])}, ...) are not those of {spec.name} "
                   f"({', '.join(spec.category_names[:5])}, ...); they are scored by position")


def instances_to_coco(image_id: int, outputs: Mapping[str, Any], category_ids: Sequence[int]
                      ) -> list[dict[str, Any]]:
    """One image's predictions -> COCO result dicts (XYWH boxes, dataset category ids, RLE masks).

    Boxes go XYXY -> XYWH in float32 as detectron2 does; masks are encoded one at a time (bool, or
    probabilities thresholded at 0.5).
    """
    import numpy as np
    from pycocotools import mask as mask_util

    boxes = outputs["boxes"].detach().cpu().float().numpy().reshape(-1, 4).copy()
    boxes[:, 2:] -= boxes[:, :2]
    scores = outputs["scores"].detach().cpu().float().numpy().reshape(-1).tolist()
    classes = outputs["classes"].detach().cpu().numpy().reshape(-1).tolist()
    masks = outputs.get("masks")
    if masks is not None:
        masks = masks.detach().cpu()
        masks = (masks >= 0.5 if masks.is_floating_point() else masks.bool()).numpy()
    out = []
    for i, (box, score, cls) in enumerate(zip(boxes.tolist(), scores, classes)):
        result = {"image_id": int(image_id), "category_id": int(category_ids[cls]), "bbox": box, "score": score}
        if masks is not None:
            rle = mask_util.encode(np.asfortranarray(masks[i][:, :, None], dtype=np.uint8))[0]
            result["segmentation"] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
        out.append(result)
    return out


def _load_model(entry: str, device: str) -> MaskRCNN:
    from ..modeling import load

    return load(entry, device=device)


def _gather(image_ids: list[int], results: list[dict[str, Any]], world_size: int
            ) -> tuple[list[int], list[dict[str, Any]], list[int]]:
    """Every rank's image ids and results, concatenated in rank order, and each rank's image count (identity in
    one process)."""
    if world_size == 1:
        return image_ids, results, [len(image_ids)]
    import torch.distributed as dist

    parts: list[Any] = [None] * world_size
    dist.all_gather_object(parts, (image_ids, results))
    return ([i for ids, _ in parts for i in ids], [r for _, res in parts for r in res],
            [len(ids) for ids, _ in parts])


