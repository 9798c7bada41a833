"""``pycontrast-zoo predict``: run a zoo detector (or a checkpoint, a published folder, a config + weights) on
images, draw and export.

Writes one PNG per image (boxes, "class score" tags, translucent masks) and one COCO results JSON for all images
that could be read (the others are reported and skipped). torch is imported only when the command runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from .. import atomic
from ..checkpoints.published import is_published_folder
from ..errors import ZooError
from ..zoo import load_manifest
from .options import add_device, add_overrides, load_model, run_device

RESULTS_FILE = "results.json"


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add the ``predict`` subcommand."""
    parser = subparsers.add_parser(
        "predict", usage="pycontrast-zoo predict [options] [ENTRY] IMAGE [IMAGE ...] [KEY VALUE ...]",
        help="detect objects in images; write annotated PNGs and a COCO results JSON",
        description="Run a detector on images. ENTRY is a zoo entry name (its published weights are downloaded "
                    "unless --weights is given), a training run's checkpoint (OUTPUT/model_final.pth: its config "
                    "and class names come with it), a published folder (hf://org/repo/<entry> or its copy on "
                    "disk), or, with --weights, a config name/path; with --config and --weights there is no ENTRY. "
                    f"Writes <out>/<image stem>.png per image and <out>/{RESULTS_FILE} (COCO results: "
                    "image_id, file_name, category_id, bbox XYWH, score, segmentation RLE). image_id is the file "
                    "stem when every stem is a distinct integer (COCO's file names), else 1..N in order; "
                    "category_id is the dataset's id of each class as stored with the model (COCO's for the zoo "
                    "detectors), else the 0-based class index. An image that cannot be read is reported and "
                    "skipped, the others are written, and the exit status is 2.",
    )
    parser.add_argument("inputs", metavar="[ENTRY] IMAGE", nargs="+",
                        help="ENTRY (see above; none with --config and --weights), then image files (any format "
                             "PIL reads)")
    parser.add_argument("--weights", metavar="PATH", default=None,
                        help="weights instead of ENTRY's: a detector checkpoint (detectron2 .pth/.pkl or this "
                             "project's), a URL, a published folder, a zoo entry")
    parser.add_argument("--config", metavar="CFG", default=None,
                        help="config name or YAML path to build the model from instead of ENTRY's; the "
                             "weights are --weights, else ENTRY's")
    parser.add_argument("--out", metavar="DIR", default="predictions", help="output folder (default: %(default)s)")
    parser.add_argument("--score-thresh", metavar="X", type=float, default=None,
                        help="keep detections scoring at least X (default: the config's "
                             "MODEL.ROI_HEADS.SCORE_THRESH_TEST)")
    parser.add_argument("--draw-thresh", metavar="X", type=float, default=0.5,
                        help="draw only detections scoring at least X in the PNGs; the JSON keeps all "
                             "(default: %(default)s)")
    add_device(parser)
    parser.add_argument("--batch-size", metavar="N", type=int, default=1,
                        help="images per forward pass (default: %(default)s)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                        help="inference precision: fp32, or autocast to fp16 (CUDA only) or bf16 "
                             "(default: %(default)s)")
    add_overrides(parser)
    parser.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    """Handler: load the model, predict in batches, write PNGs and the results JSON; 2 when images were skipped."""
    if args.batch_size < 1:
        raise ZooError(f"predict: --batch-size must be at least 1, got {args.batch_size}")
    entry, images = _split_inputs(args)
    paths = [Path(p) for p in images]
    skipped = [f"{p}: no such file" for p in paths if not p.is_file()]
    if len(skipped) == len(paths):
        raise ZooError(f"predict: no image to read: {'; '.join(skipped)}")
    for line in skipped:
        print(f"{line}: skipped", file=sys.stderr)

    device = run_device(args)
    if args.precision == "fp16" and not device.startswith("cuda"):
        raise ZooError(f"predict: --precision fp16 needs a CUDA device (the device is {device}); use bf16 on the CPU")
    model = load_model(entry, config=args.config, weights=args.weights, device=device, overrides=args.opts)
    category_ids = list(model.classes.ids)
    image_ids = assign_image_ids(paths)
    png_names = _png_names(paths)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    from ..visualize import draw_detections

    results: list[dict[str, Any]] = []
    for batch in _batches(_readable(paths, skipped), args.batch_size):
        predictions = model.predict([array for _, _, array in batch], score_thresh=args.score_thresh,
                                    batch_size=len(batch), precision=args.precision)
        for (index, path, array), pred in zip(batch, predictions):
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
    done = len(paths) - len(skipped)
    print(f"wrote {len(results)} detections for {done} image(s) to {json_path}")
    if skipped:
        print(f"pycontrast-zoo predict: {len(skipped)} of {len(paths)} image(s) skipped: "
              + "; ".join(skipped), file=sys.stderr)
        return 2
    return 0


def _split_inputs(args: argparse.Namespace) -> tuple[Optional[str], list[str]]:
    """(ENTRY, images): with --config and --weights every positional word is an image, else the first is ENTRY."""
    if args.config is not None and args.weights is not None:
        first = args.inputs[0]
        if not Path(first).is_file() and (first in load_manifest().entries or is_published_folder(first)):
            raise ZooError(f"predict: {first} is a model, and --config with --weights is one too: give ENTRY, or "
                           "--config and --weights, not both")
        return None, list(args.inputs)
    if len(args.inputs) < 2:
        raise ZooError(f"predict: give ENTRY and at least one IMAGE (got only {args.inputs[0]!r}); with --config "
                       "and --weights, images alone")
    return args.inputs[0], list(args.inputs[1:])


def _readable(paths: Sequence[Path], skipped: list[str]) -> Iterator[tuple[int, Path, Any]]:
    """(index, path, HWC uint8 RGB array) of each image that can be read; the others are reported on stderr and
    added to ``skipped``."""
    import numpy as np
    from PIL import Image

    for index, path in enumerate(paths):
        if not path.is_file():
            continue
        try:
            with Image.open(path) as image:
                array = np.array(image.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
            skipped.append(f"{path}: cannot read image ({exc})")
            print(f"{skipped[-1]}: skipped", file=sys.stderr)
            continue
        yield index, path, array


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


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
    from ..evaluation import instances_to_coco

    outputs = {"boxes": prediction["boxes"], "scores": prediction["scores"], "classes": prediction["labels"],
               "masks": prediction.get("masks")}
    return [{**record, "file_name": file_name} for record in instances_to_coco(image_id, outputs, category_ids)]
