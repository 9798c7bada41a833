"""COCO evaluation of a detector on a dataset: inference, COCO results file, COCOeval for boxes and masks.

The numbers are detectron2's ``COCOEvaluator`` numbers: AP, AP50, AP75, APs, APm, APl in percent, with
masks scored by mask area (the box is left out of segm results, as detectron2 does). ``backend`` picks
pycocotools (the reference) or faster-coco-eval (same numbers, faster; ``benchmarks/eval.py``).
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from .. import atomic
from ..errors import ConfigError
from . import comm
from .events import progress, strict_json

logger = logging.getLogger(__name__)

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
BACKENDS = ("auto", "pycocotools", "faster-coco-eval")
COCO_VAL2017_IMAGES = 5000
NOISE_AP = 0.3  # run-to-run spread of R50-FPN 1x on COCO (MoCo maintainers)


@dataclass
class EvalResult:
    """COCO metrics (percent) per task (``bbox``, ``segm``): METRICS and, as detectron2 reports them, ``AP-<class
    name>`` per category (also in ``per_category``); where the files went, and what was evaluated."""

    dataset: str
    split: str
    num_images: int
    metrics: dict[str, dict[str, float]]
    per_category: dict[str, dict[str, float]] = field(default_factory=dict)
    summary: dict[str, str] = field(default_factory=dict)  # COCOeval's printed table per task
    backend: str = "pycocotools"
    results_json: Optional[Path] = None
    metrics_json: Optional[Path] = None
    seconds: float = 0.0
    is_coco_val2017: bool = False
    shards: list[int] = field(default_factory=list)  # images inferred by each process, in rank order

    @property
    def bbox(self) -> dict[str, float]:
        return self.metrics.get("bbox", {})

    @property
    def segm(self) -> dict[str, float]:
        return self.metrics.get("segm", {})


def evaluate(model_or_entry: Union[str, Callable[[list[dict]], list[dict]]], dataset: Any = "shapes", *,
             split: str = "val", device: str = "cpu", output_dir: Optional[Union[str, os.PathLike]] = None,
             backend: str = "auto", max_images: Optional[int] = None, rank: int = 0, world_size: int = 1,
             cfg: Any = None, num_workers: int = 0, log: Optional[logging.Logger] = None) -> EvalResult:
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

    from ..data import build_test_loader, check_num_classes, resolve_dataset

    backend = _pick_backend(backend)
    if world_size > 1 and not (comm.is_distributed() and comm.get_world_size() == world_size):
        raise ConfigError(f"world_size {world_size} needs an initialised torch.distributed process group of "
                          f"that size (found {comm.get_world_size()} process(es))")
    spec = dataset if hasattr(dataset, "json_file") else resolve_dataset(dataset, split)
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
    results: list[dict] = []
    try:
        with torch.no_grad():
            for batch in progress(loader, len(loader), f"Inference on {spec.name}{share}", log):
                for inputs, outputs in zip(batch, model(batch)):
                    image_ids.append(inputs["image_id"])
                    results.extend(instances_to_coco(inputs["image_id"], outputs, spec.category_ids))
    finally:
        if was_training:
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
    return comm.broadcast_object(outcome) if world_size > 1 else outcome


def _check_class_names(classes: Any, spec: Any) -> None:
    """Warn when a model whose classes have names is scored on a dataset that names them otherwise: classes are
    matched by position, so the AP would measure the wrong pairs."""
    from ..coco_classes import CategoryMap

    if classes is None or classes == CategoryMap.placeholder(len(classes)) or classes.names == spec.category_names:
        return
    logger.warning(f"the model's classes ({', '.join(classes.names[:5])}, ...) are not those of {spec.name} "
                   f"({', '.join(spec.category_names[:5])}, ...); they are scored by position")


def instances_to_coco(image_id: int, outputs: Mapping[str, Any], category_ids: Sequence[int]) -> list[dict]:
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


def compare_with_published(entry: Any, metrics: Union[EvalResult, Mapping[str, Mapping[str, float]]], *,
                           dataset: Optional[str] = None) -> str:
    """A small table of the entry's published box/mask AP next to the measured ones, with the difference."""
    from ..zoo import get_entry

    entry = get_entry(entry) if isinstance(entry, str) else entry
    if isinstance(metrics, EvalResult):
        like_for_like = metrics.is_coco_val2017 and metrics.num_images == COCO_VAL2017_IMAGES
        where = f"{metrics.dataset} ({metrics.num_images} images)"
        values = metrics.metrics
    else:
        like_for_like, where, values = dataset == "coco_2017_val", dataset or "an unnamed dataset", metrics
    lines = [f"{entry.name} on {where}", f"{'':8}{'published':>10}{'measured':>10}{'diff':>8}"]
    for task, label, published in (("bbox", "box AP", entry.box_ap), ("segm", "mask AP", entry.mask_ap)):
        measured = values.get(task, {}).get("AP")
        if measured is None:
            lines.append(f"{label:8}{published:>10.1f}{'-':>10}{'-':>8}")
        else:
            lines.append(f"{label:8}{published:>10.1f}{measured:>10.1f}{measured - published:>+8.1f}")
    if like_for_like:
        lines.append(f"Differences within about {NOISE_AP} AP are run-to-run noise on COCO val2017.")
    else:
        lines.append(f"Not like-for-like: the published numbers are on all {COCO_VAL2017_IMAGES} COCO val2017 "
                     f"images; this was measured on {where}.")
    return "\n".join(lines)


def _pick_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown evaluation backend {backend!r}; use one of {', '.join(BACKENDS)}")
    available = importlib.util.find_spec("faster_coco_eval") is not None
    if backend == "auto":
        return "faster-coco-eval" if available else "pycocotools"
    if backend == "faster-coco-eval" and not available:
        raise ConfigError("backend 'faster-coco-eval' is not installed: pip install faster-coco-eval "
                          "(or use backend='pycocotools')")
    return backend


def _load_model(entry: str, device: str) -> Any:
    from ..modeling import load

    return load(entry, device=device)


def _gather(image_ids: list[int], results: list[dict], world_size: int) -> tuple[list[int], list[dict], list[int]]:
    """Every rank's image ids and results, concatenated in rank order, and each rank's image count (identity in
    one process)."""
    if world_size == 1:
        return image_ids, results, [len(image_ids)]
    import torch.distributed as dist

    parts: list[Any] = [None] * world_size
    dist.all_gather_object(parts, (image_ids, results))
    return ([i for ids, _ in parts for i in ids], [r for _, res in parts for r in res],
            [len(ids) for ids, _ in parts])


def score_results(spec: Any, image_ids: list[int], results: list[dict], tasks: Sequence[str], backend: str,
                  output_dir: Optional[Union[str, os.PathLike]], log: Optional[logging.Logger] = None) -> EvalResult:
    """COCOeval per task (``bbox``, ``segm``) of COCO ``results`` on ``image_ids`` of ``spec``; writes the results
    and metrics files (strict JSON: NaN as null) to ``output_dir`` when given. The scoring half of :func:`evaluate`."""
    log = log or logger
    backend = _pick_backend(backend)
    gt = _load_gt(spec.json_file, backend)
    if not all("segmentation" in r for r in results) or not any(
            "segmentation" in a for a in gt.dataset.get("annotations", [])):
        tasks = [t for t in tasks if t != "segm"]  # no masks predicted, or none annotated
    result = EvalResult(dataset=spec.name, split=spec.split, num_images=len(image_ids), metrics={},
                        backend=backend, is_coco_val2017=spec.is_coco_val2017)
    names = dict(zip(spec.category_ids, spec.category_names))
    for task in tasks:
        drop = "segmentation" if task == "bbox" else "bbox"  # segm: score sizes by mask area, as detectron2
        task_results = [{k: v for k, v in r.items() if k != drop} for r in results]
        stats, precision, text = _coco_eval(gt, task_results, task, sorted(set(image_ids)), backend, log)
        result.metrics[task] = {m: (float(s) * 100 if s >= 0 else float("nan")) for m, s in zip(METRICS, stats)}
        result.per_category[task] = _per_category_ap(precision, spec.category_ids, names)
        result.metrics[task].update({f"AP-{n}": v for n, v in result.per_category[task].items()})  # as detectron2
        result.summary[task] = text
        log.info(f"Evaluation results for {task} on {spec.name}:\n{text}")
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        result.results_json = out / "coco_instances_results.json"
        atomic.write_text(result.results_json, json.dumps(results))
        row = {f"{task}/{m}": v for task, values in result.metrics.items() for m, v in values.items()}
        result.metrics_json = out / "metrics.json"
        atomic.write_text(result.metrics_json, strict_json(row) + "\n")
    return result


def _load_gt(json_file: Path, backend: str) -> Any:
    if backend == "faster-coco-eval":
        from faster_coco_eval import COCO
    else:
        from pycocotools.coco import COCO
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(json_file))


class _LogLines(io.TextIOBase):
    """A text stream that logs each complete line (COCOeval's progress prints: evaluating, accumulating, DONE)."""

    def __init__(self, log: logging.Logger) -> None:
        super().__init__()
        self.log, self.pending = log, ""

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in filter(None, (line.strip() for line in lines)):
            self.log.info(f"COCOeval: {line}")
        return len(text)


def _coco_eval(gt: Any, results: list[dict], iou_type: str, image_ids: list[int], backend: str,
               log: logging.Logger) -> tuple:
    """(stats[:6], precision array [T,R,K,A,M], printed summary) of COCOeval on ``image_ids``; its progress
    prints go to ``log``."""
    if backend == "faster-coco-eval":
        from faster_coco_eval import COCOeval_faster

        def make(dt: Any) -> Any:
            return COCOeval_faster(gt, dt, iou_type, print_function=print)
    else:
        from pycocotools.cocoeval import COCOeval

        def make(dt: Any) -> Any:
            return COCOeval(gt, dt, iou_type)
    with contextlib.redirect_stdout(_LogLines(log)):
        coco_eval = make(gt.loadRes(results) if results else _empty_results(gt))
        coco_eval.params.imgIds = image_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        coco_eval.summarize()
    return list(coco_eval.stats[:6]), coco_eval.eval["precision"], summary.getvalue().rstrip()


def _empty_results(gt: Any) -> Any:
    """A results set with no detections (``loadRes`` refuses an empty list): every AP is 0."""
    empty = type(gt)()
    empty.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]),
                     "annotations": []}
    empty.createIndex()
    return empty


def _per_category_ap(precision: Any, category_ids: Sequence[int], names: Mapping[int, str]) -> dict[str, float]:
    """AP (percent, IoU .50:.95, all areas, 100 dets) per category name; NaN where a category has no gt."""
    out = {}
    for k, cid in enumerate(category_ids):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        out[names[cid]] = float(values.mean() * 100) if values.size else float("nan")
    return out
