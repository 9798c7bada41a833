"""``pycontrast-zoo predict``: run a zoo detector (or a config + weights) on images, draw and export.

Writes one PNG per image (boxes, "class score" tags, translucent masks) and one COCO results JSON for
all images. torch is imported only when the command runs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from .. import atomic
from ..errors import ZooError

RESULTS_FILE = "results.json"


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add the ``predict`` subcommand."""
    parser = subparsers.add_parser(
        "predict",
        help="detect objects in images; write annotated PNGs and a COCO results JSON",
        description="Run a zoo detector on images. ENTRY is a zoo entry name (its published weights are "
                    "downloaded unless --weights is given), a training run's checkpoint, or, with --weights, a "
                    "config name/path. "
                    f"Writes <out>/<image stem>.png per image and <out>/{RESULTS_FILE} (COCO results: "
                    "image_id, file_name, category_id, bbox XYWH, score, segmentation RLE). image_id is the file "
                    "stem when every stem is a distinct integer (COCO's file names), else 1..N in order; "
                    "category_id is the dataset's id of each class as stored with the model (COCO's for the zoo "
                    "detectors), else the 0-based class index.",
    )
    parser.add_argument("entry", metavar="ENTRY",
                        help="zoo entry name (see `pycontrast-zoo list`) or a training run's checkpoint (its config "
                             "and class names come with it); with --weights, a config name or path also works")
    parser.add_argument("images", metavar="IMAGE", nargs="+", help="image files (any format PIL reads)")
    parser.add_argument("--weights", metavar="PATH", default=None,
                        help="detector checkpoint to use instead of the entry's published weights "
                             "(detectron2 .pth/.pkl or this project's format)")
    parser.add_argument("--config", metavar="CFG", default=None,
                        help="config name or YAML path to build the model from instead of ENTRY's; the "
                             "weights are --weights, else ENTRY's published detector")
    parser.add_argument("--out", metavar="DIR", default="predictions", help="output folder (default: %(default)s)")
    parser.add_argument("--score-thresh", metavar="X", type=float, default=None,
                        help="keep detections scoring at least X (default: the config's "
                             "MODEL.ROI_HEADS.SCORE_THRESH_TEST)")
    parser.add_argument("--draw-thresh", metavar="X", type=float, default=0.5,
                        help="draw only detections scoring at least X in the PNGs; the JSON keeps all "
                             "(default: %(default)s)")
    parser.add_argument("--device", metavar="D", default="auto",
                        help="torch device: cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    parser.add_argument("--batch-size", metavar="N", type=int, default=1,
                        help="images per forward pass (default: %(default)s)")
    parser.add_argument("--opts", metavar="KEY VALUE", nargs="+", default=[],
                        help="config overrides, detectron2 style, e.g. --opts INPUT.MIN_SIZE_TEST 600")
    parser.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    """Handler: load the model, predict in batches, write PNGs and the results JSON."""
    if args.batch_size < 1:
        raise ZooError(f"predict: --batch-size must be at least 1, got {args.batch_size}")
    if len(args.opts) % 2:
        raise ZooError(f"predict: --opts takes KEY VALUE pairs, got an odd number of items: {args.opts}")
    paths = [Path(p) for p in args.images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ZooError(f"predict: image file(s) not found: {', '.join(missing)}")

    model = _load_model(args)
    category_ids = list(model.classes.ids)
    image_ids = assign_image_ids(paths)
    png_names = _png_names(paths)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    from ..visualize import draw_detections

    results: list[dict[str, Any]] = []
    for start in range(0, len(paths), args.batch_size):
        batch = paths[start:start + args.batch_size]
        arrays = [_read_rgb(path) for path in batch]
        predictions = model.predict(arrays, score_thresh=args.score_thresh, batch_size=len(arrays))
        for offset, (path, array, pred) in enumerate(zip(batch, arrays, predictions)):
            index = start + offset
            results.extend(to_coco_results(pred, image_ids[index], path.name, category_ids))
            keep = pred["scores"].numpy() >= args.draw_thresh
            masks = pred["masks"].numpy()[keep] if "masks" in pred else None
            drawn = draw_detections(array, pred["boxes"].numpy()[keep], pred["labels"].numpy()[keep],
                                    pred["scores"].numpy()[keep], masks, label_names=model.class_names)
            png_path = out_dir / png_names[index]
            drawn.save(png_path)
            print(f"{path}: {len(pred['scores'])} detections ({int(keep.sum())} drawn) -> {png_path}")
    json_path = out_dir / RESULTS_FILE
    atomic.write_text(json_path, json.dumps(results))
    print(f"wrote {len(results)} detections for {len(paths)} image(s) to {json_path}")
    return 0


def _load_model(args: argparse.Namespace) -> Any:
    """The model in eval mode on the chosen device.

    Without --config: ``load(ENTRY, weights=--weights)`` (ENTRY a zoo entry, or a config when --weights is
    given). With --config: that config, and the --weights file or else ENTRY's published detector.
    """
    import pycontrast_det as pcd

    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    weights = args.weights if args.weights is not None or args.config is None else args.entry
    source = args.config if args.config is not None else args.entry
    return pcd.load(source, weights=weights, device=device, overrides=list(args.opts))


def _read_rgb(path: Path) -> Any:
    """HWC uint8 RGB array of an image file."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ZooError(f"predict: cannot read image {path}: {exc}") from exc


def assign_image_ids(paths: Sequence[Path]) -> list[int]:
    """COCO image ids: the file stems when all are distinct integers (COCO's naming), else 1, 2, 3, ..."""
    stems = [p.stem for p in paths]
    if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(paths) + 1))


def _png_names(paths: Sequence[Path]) -> list[str]:
    """``<stem>.png`` per image, made unique with ``_<n>`` where inputs share a stem."""
    names: list[str] = []
    taken: set[str] = set()
    for path in paths:
        name, count = f"{path.stem}.png", 0
        while name in taken:
            count += 1
            name = f"{path.stem}_{count}.png"
        taken.add(name)
        names.append(name)
    return names


def to_coco_results(prediction: dict[str, Any], image_id: int, file_name: str,
                    category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """One image's ``predict`` output as COCO result records (the evaluator's conversion) plus ``file_name``."""
    from ..engine.evaluation import instances_to_coco

    outputs = {"boxes": prediction["boxes"], "scores": prediction["scores"], "classes": prediction["labels"],
               "masks": prediction.get("masks")}
    return [{**record, "file_name": file_name} for record in instances_to_coco(image_id, outputs, category_ids)]
