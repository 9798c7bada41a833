"""COCO scoring of detections: COCOeval for boxes and masks, per-category AP, the results and metrics files.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

from .. import atomic
from ..errors import ConfigError
from ..utils.events import strict_json

if TYPE_CHECKING:
    import numpy as np

    from ..data.catalog import DatasetSpec

logger = logging.getLogger(__name__)

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
BACKENDS = ("auto", "pycocotools", "faster-coco-eval")


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


def pick_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown evaluation backend {backend!r}; use one of {', '.join(BACKENDS)}")
    available = importlib.util.find_spec("faster_coco_eval") is not None
    if backend == "auto":
        return "faster-coco-eval" if available else "pycocotools"
    if backend == "faster-coco-eval" and not available:
        raise ConfigError("backend 'faster-coco-eval' is not installed: pip install faster-coco-eval "
                          "(or use backend='pycocotools')")
    return backend


def score_results(spec: DatasetSpec, image_ids: list[int], results: list[dict[str, Any]], tasks: Sequence[str],
                  backend: str, output_dir: Optional[Union[str, os.PathLike[str]]],
                  log: Optional[logging.Logger] = None) -> EvalResult:
    """COCOeval per task (``bbox``, ``segm``) of COCO ``results`` on ``image_ids`` of ``spec``; writes the results
    and metrics files (strict JSON: NaN as null) to ``output_dir`` when given. The scoring half of :func:`evaluate`."""
    log = log or logger
    backend = pick_backend(backend)
    gt = _load_gt(spec, backend)
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


def _load_gt(spec: DatasetSpec, backend: str) -> Any:  # a COCO object of the untyped backend
    """The dataset's ground truth for COCOeval; VOC's ``difficult`` objects become crowd regions, which COCOeval
    ignores as VOC's evaluation ignores them (a detection on one is neither a true nor a false positive)."""
    if backend == "faster-coco-eval":
        from faster_coco_eval import COCO
    else:
        from pycocotools.coco import COCO
    from ..data.coco import build_coco, ground_truth

    data = ground_truth(spec)
    data["annotations"] = [{**a, "iscrowd": 1} if a.get("difficult") else a for a in data["annotations"]]
    return build_coco(COCO, data, spec.json_file)


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


def _coco_eval(gt: Any, results: list[dict[str, Any]], iou_type: str, image_ids: list[int], backend: str,
               log: logging.Logger) -> tuple[list[float], np.ndarray, str]:
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


def _per_category_ap(precision: np.ndarray, category_ids: Sequence[int], names: Mapping[int, str]) -> dict[str, float]:
    """AP (percent, IoU .50:.95, all areas, 100 dets) per category name; NaN where a category has no gt."""
    out = {}
    for k, cid in enumerate(category_ids):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        out[names[cid]] = float(values.mean() * 100) if values.size else float("nan")
    return out
