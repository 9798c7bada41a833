"""COCO scoring time: pycocotools vs faster-coco-eval on the same detections, and whether their APs agree.

The ground truth is the synthetic ``shapes`` val split scaled up (``--images``, default 3000 images with
1-3 instances each); the detections are synthetic too: every ground-truth polygon jittered (so IoUs spread
over COCO's thresholds), a share of them dropped, plus random false positives, each with a mask. Each task
(bbox, segm) is scored by both backends through ``pycontrast_det.evaluation.score_results`` (what
``evaluate`` runs after inference: load the annotations, loadRes, evaluate, accumulate, summarize).

    python benchmarks/eval.py [--images 3000] [--fp-per-image 5] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pycontrast_det.data import ShapesParams, resolve_dataset, shapes_root  # noqa: E402
from pycontrast_det.evaluation import score_results  # noqa: E402


def synthetic_detections(json_file: Path, fp_per_image: int, seed: int = 0) -> list[dict]:
    """Jittered copies of the ground truth (80% kept, scores 0.3-1) and random false positives (scores 0-0.6),
    as COCO results with RLE masks."""
    from pycocotools import mask as mask_util

    data = json.loads(json_file.read_text())
    rng = np.random.default_rng(seed)
    sizes = {img["id"]: (img["height"], img["width"]) for img in data["images"]}
    polygons: list[tuple[int, int, list[float], float]] = []  # image, category, polygon, score
    for ann in data["annotations"]:
        if rng.random() < 0.8:
            poly = np.asarray(ann["segmentation"][0]).reshape(-1, 2)
            x0, y0 = poly.min(0)
            extent = max(poly.max(0) - poly.min(0))
            shift = rng.normal(0, 0.08 * extent, size=2)
            scale = rng.uniform(0.85, 1.15)
            centre = poly.mean(0)
            moved = (poly - centre) * scale + centre + shift
            polygons.append((ann["image_id"], ann["category_id"], moved.reshape(-1).tolist(), rng.uniform(0.3, 1)))
    for image_id, (h, w) in sizes.items():
        for _ in range(fp_per_image):
            x, y = rng.uniform(0, w - 20), rng.uniform(0, h - 20)
            bw, bh = rng.uniform(10, min(60, w - x)), rng.uniform(10, min(60, h - y))
            polygons.append((image_id, int(rng.integers(1, 4)), [x, y, x + bw, y, x + bw, y + bh, x, y + bh],
                             rng.uniform(0, 0.6)))
    results = []
    for image_id, category_id, poly, score in polygons:
        h, w = sizes[image_id]
        clipped = np.clip(np.asarray(poly).reshape(-1, 2), 0, [w, h]).reshape(-1).tolist()
        rle = mask_util.merge(mask_util.frPyObjects([clipped], h, w))
        results.append({"image_id": image_id, "category_id": category_id, "score": float(score),
                        "bbox": [float(v) for v in mask_util.toBbox(rle)],
                        "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")}})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--fp-per-image", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = shapes_root(ShapesParams(seed=2024, num_train=0, num_val=args.images), root=Path(tmp))
        spec = resolve_dataset(root, "val")
        results = synthetic_detections(spec.json_file, args.fp_per_image)
        gt = json.loads(spec.json_file.read_text())
        image_ids = [img["id"] for img in gt["images"]]
        print(f"ground truth: {len(image_ids)} images, {len(gt['annotations'])} instances; "
              f"{len(results)} detections with masks (prepared in {time.perf_counter() - t0:.1f} s)")
        print(f"median of {args.repeats} runs, each: load annotations + loadRes + evaluate + accumulate + summarize\n")
        print(f"{'task':6}{'pycocotools':>14}{'faster-coco-eval':>18}{'speed-up':>10}   AP / AP50 / AP75 (both)")
        for task in ("bbox", "segm"):
            times, metrics = {}, {}
            for backend in ("pycocotools", "faster-coco-eval"):
                runs = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    outcome = score_results(spec, image_ids, results, (task,), backend, None)
                    runs.append(time.perf_counter() - start)
                times[backend], metrics[backend] = statistics.median(runs), outcome.metrics[task]
            ref, fast = metrics["pycocotools"], metrics["faster-coco-eval"]
            agree = all((math.isnan(ref[k]) and math.isnan(fast[k])) or abs(ref[k] - fast[k]) < 1e-6 for k in ref)
            print(f"{task:6}{times['pycocotools']:>12.2f} s{times['faster-coco-eval']:>16.2f} s"
                  f"{times['pycocotools'] / times['faster-coco-eval']:>9.1f}x   "
                  f"{ref['AP']:.3f} / {ref['AP50']:.3f} / {ref['AP75']:.3f} vs "
                  f"{fast['AP']:.3f} / {fast['AP50']:.3f} / {fast['AP75']:.3f}: "
                  + ("agree (all six metrics within 1e-6)" if agree else "DISAGREE"))


if __name__ == "__main__":
    main()
