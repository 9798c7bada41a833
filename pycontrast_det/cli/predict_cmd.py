"""``pycontrast-zoo predict``: run a detector (a zoo entry, a checkpoint, a published folder, a config + weights, or
an exported ONNX / TorchScript file) on image files, folders and globs, streaming what it finds.

Each image is read as the Python API reads it (EXIF orientation applied), predicted, drawn (unless ``--no-draw``)
and written as soon as its batch is done: one PNG, one JSON line in ``predictions.jsonl``, its records in the COCO
results file; nothing is held for the end, so memory does not grow with the number of images. torch is imported
only when the command runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterable, Iterator, Optional, Sequence, Union

from .. import atomic
from ..checkpoints.published import is_published_folder
from ..errors import DatasetError, ZooError
from ..export.metadata import exported_format
from ..zoo import load_manifest
from .options import add_device, add_overrides, add_trust, load_model, run_device
from .predict_inputs import IMAGE_EXTENSIONS, assign_image_ids, dataset_image_ids, expand_inputs, png_names

if TYPE_CHECKING:
    import numpy as np

    from ..export import ExportedModel
    from ..modeling import MaskRCNN

RESULTS_FILE = "results.json"
LINES_FILE = "predictions.jsonl"
__all__ = ["LINES_FILE", "RESULTS_FILE", "assign_image_ids", "register", "run_predict", "to_coco_results"]


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add the ``predict`` subcommand."""
    parser = subparsers.add_parser(
        "predict", usage="pycontrast-zoo predict [options] [ENTRY] INPUT [INPUT ...] [KEY VALUE ...]",
        help="detect objects in images, folders or globs; write annotated PNGs, JSON lines and COCO results",
        description="Run a detector on images. ENTRY is a zoo entry name (its published weights are downloaded "
                    "unless --weights is given), a training run's checkpoint (OUTPUT/model_final.pth: its config "
                    "and class names come with it), a published folder (hf://org/repo[/<entry>] or its copy on "
                    "disk), an exported model (model.onnx, or a TorchScript file from `pycontrast-zoo export`), or, "
                    "with --weights, a config name/path; with --config and --weights there is no ENTRY. INPUTs are "
                    "image files, folders (searched at every depth for "
                    f"{', '.join(sorted(IMAGE_EXTENSIONS))}) and glob patterns (quoted; ** crosses folders). Images "
                    "are read with their EXIF orientation applied, as the Python API reads them. As each image is "
                    f"done: <out>/<image stem>.png (unless --no-draw), one line in <out>/{LINES_FILE} (the image, "
                    f"its id, its detections) and its records in <out>/{RESULTS_FILE} (COCO results: image_id, "
                    "file_name, category_id, bbox XYWH, score, segmentation RLE; the file is complete when the "
                    "command ends). image_id is the dataset's with --dataset, else the file stem when every stem "
                    "is a distinct integer (COCO's file names), else 1..N in order; category_id is the dataset's id "
                    "of each class as stored with the model, else the 0-based class index. An image that cannot "
                    "be read is reported and skipped, the others are written, and the exit status is 2.",
    )
    parser.add_argument("inputs", metavar="[ENTRY] INPUT", nargs="+",
                        help="ENTRY (see above; none with --config and --weights), then images, folders, globs")
    parser.add_argument("--weights", metavar="PATH", default=None,
                        help="weights instead of ENTRY's: a detector checkpoint (detectron2 .pth/.pkl or this "
                             "project's), a URL, a published folder, a zoo entry")
    parser.add_argument("--config", metavar="CFG", default=None,
                        help="config name or YAML path to build the model from instead of ENTRY's; the "
                             "weights are --weights, else ENTRY's")
    parser.add_argument("--out", metavar="DIR", default="predictions", help="output folder (default: %(default)s)")
    parser.add_argument("--dataset", metavar="NAME|PATH", default=None,
                        help="take image ids from this COCO-format dataset (annotations.json[:image_root] or a "
                             "dataset folder), matching each image by its path under the image root, else by name")
    parser.add_argument("--split", default="val", help="the --dataset split (default: %(default)s)")
    parser.add_argument("--score-thresh", metavar="X", type=float, default=None,
                        help="keep detections scoring at least X (default: the config's "
                             "MODEL.ROI_HEADS.SCORE_THRESH_TEST, or the exported file's)")
    parser.add_argument("--draw-thresh", metavar="X", type=float, default=0.5,
                        help="draw only detections scoring at least X in the PNGs; the JSON keeps all "
                             "(default: %(default)s)")
    parser.add_argument("--no-draw", action="store_true", help="write no PNGs (results only)")
    add_device(parser)
    parser.add_argument("--batch-size", metavar="N", type=int, default=None,
                        help="images per forward pass (default: as model.predict: 4 on an accelerator, 1 on the "
                             "CPU; an exported model takes one at a time)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                        help="inference precision: fp32, or autocast to fp16 (CUDA only) or bf16 "
                             "(default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no line per image")
    add_trust(parser)
    add_overrides(parser)
    parser.set_defaults(func=run_predict)


@dataclass(frozen=True)
class _Image:
    """One input image: where it is, its COCO id and the PNG name it gets."""

    path: Path
    image_id: int
    png: str


def run_predict(args: argparse.Namespace) -> int:
    """Handler: load the model, predict in batches, stream PNGs, JSON lines and COCO results; 2 when images were
    skipped."""
    if args.batch_size is not None and args.batch_size < 1:
        raise ZooError(f"predict: --batch-size must be at least 1, got {args.batch_size}")
    entry, inputs = _split_inputs(args)
    paths, skipped = expand_inputs(inputs)
    total = len(paths) + len(skipped)
    if not paths:
        raise ZooError(f"predict: no image to read: {'; '.join(skipped)}")
    for line in skipped:
        print(f"{line}: skipped", file=sys.stderr)
    images = _images(paths, args, skipped)
    model = _load(entry, args)
    out_dir = Path(args.out)
    atomic.make_dirs(out_dir)
    batch_size = args.batch_size or (model.default_batch_size() if hasattr(model, "default_batch_size") else 1)
    written, detections = _stream(model, images, out_dir, args, batch_size, skipped)
    print(f"wrote {detections} detections for {written} image(s) to {out_dir / RESULTS_FILE} and "
          f"{out_dir / LINES_FILE}" + ("" if args.no_draw else f", and {written} PNG(s)"))
    if skipped:
        print(f"pycontrast-zoo predict: {len(skipped)} of {total} image(s) skipped: " + "; ".join(skipped),
              file=sys.stderr)
        return 2
    return 0


def _split_inputs(args: argparse.Namespace) -> tuple[Optional[str], list[str]]:
    """(ENTRY, inputs): with --config and --weights every positional word is an input, else the first is ENTRY."""
    if args.config is not None and args.weights is not None:
        first = args.inputs[0]
        if not Path(first).is_file() and (first in load_manifest().entries or is_published_folder(first)):
            raise ZooError(f"predict: {first} is a model, and --config with --weights is one too: give ENTRY, or "
                           "--config and --weights, not both")
        return None, list(args.inputs)
    if len(args.inputs) < 2:
        raise ZooError(f"predict: give ENTRY and at least one image, folder or glob (got only {args.inputs[0]!r}); "
                       "with --config and --weights, inputs alone")
    return args.inputs[0], list(args.inputs[1:])


def _images(paths: list[Path], args: argparse.Namespace, skipped: list[str]) -> list[_Image]:
    """Each image with its id (the dataset's with --dataset: an image it does not list is skipped) and PNG name."""
    names = png_names(paths)
    if args.dataset is None:
        return [_Image(p, i, n) for p, i, n in zip(paths, assign_image_ids(paths), names)]
    from ..data.catalog import resolve_dataset

    spec = resolve_dataset(args.dataset, args.split)
    out = []
    for path, image_id, name in zip(paths, dataset_image_ids(spec.json_file, spec.image_root, paths), names):
        if image_id is None:
            skipped.append(f"{path}: not an image of {spec.json_file} (neither its path under {spec.image_root} "
                           "nor its file name is listed)")
            print(f"{skipped[-1]}: skipped", file=sys.stderr)
            continue
        out.append(_Image(path, image_id, name))
    if not out:
        raise DatasetError(f"predict: none of the images is listed in {spec.json_file}")
    return out


def _load(entry: Optional[str], args: argparse.Namespace) -> Union["MaskRCNN", "ExportedModel"]:
    """The model: an exported file as it is (its settings are fixed in it), else through ``load_model``."""
    exported = exported_format(Path(entry)) if entry is not None else None
    if exported is None:
        device = run_device(args)
        if args.precision == "fp16" and not device.startswith("cuda"):
            raise ZooError(f"predict: --precision fp16 needs a CUDA device (the device is {device}); use bf16 on "
                           "the CPU")
        return load_model(entry, config=args.config, weights=args.weights, device=device, overrides=args.opts)
    given = [opt for opt, value in (("--config", args.config), ("--weights", args.weights), ("KEY VALUE", args.opts),
                                    ("--precision", args.precision != "fp32")) if value]
    if given:
        raise ZooError(f"predict: {entry} is an exported {exported} model, whose config and weights are fixed in "
                       f"it: drop {', '.join(given)}")
    from ..export import load_exported

    assert entry is not None
    print(f"model: {entry} (exported, {exported})")
    return load_exported(entry, trusted=args.trust)


def _readable(images: Sequence[_Image], skipped: list[str]) -> Iterator[tuple[_Image, "np.ndarray"]]:
    """Each image that can be read (as ``read_image`` reads it: EXIF orientation applied); the others are
    reported on stderr and added to ``skipped``."""
    from ..images import read_image

    for image in images:
        try:
            array = read_image(image.path)
        except (DatasetError, ValueError) as exc:
            skipped.append(f"{image.path}: cannot read image ({exc})")
            print(f"{skipped[-1]}: skipped", file=sys.stderr)
            continue
        yield image, array


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


def _predict(model: Union["MaskRCNN", "ExportedModel"], arrays: list, args: argparse.Namespace) -> list:
    """One prediction per array (a list in, a list out, from either kind of model)."""
    if hasattr(model, "default_batch_size"):  # a MaskRCNN
        found = model.predict(arrays, score_thresh=args.score_thresh, batch_size=len(arrays),
                              precision=args.precision)
    else:
        found = model.predict(arrays, score_thresh=args.score_thresh)
    assert isinstance(found, list)
    return found


def _stream(model: Union["MaskRCNN", "ExportedModel"], images: Sequence[_Image], out_dir: Path,
            args: argparse.Namespace, batch_size: int, skipped: list[str]) -> tuple[int, int]:
    """Predict and write image by image; (images written, detections)."""
    from tqdm import tqdm

    from ..visualize import draw

    category_ids = list(model.classes.ids)
    bar = tqdm(total=len(images), unit="image", disable=args.quiet or not sys.stderr.isatty(), file=sys.stderr)
    written = detections = 0
    with atomic.atomic_path(out_dir / RESULTS_FILE) as tmp, open(tmp, "w", encoding="utf-8") as results, \
            open(out_dir / LINES_FILE, "w", encoding="utf-8") as lines:
        results.write("[")
        for batch in _batches(_readable(images, skipped), batch_size):
            for (image, array), pred in zip(batch, _predict(model, [a for _, a in batch], args)):
                records = to_coco_results(pred, image.image_id, image.path.name, category_ids)
                _write_results(results, records, first=detections == 0)
                lines.write(json.dumps({"image": str(image.path), "image_id": image.image_id,
                                        "height": int(array.shape[0]), "width": int(array.shape[1]),
                                        "detections": records}) + "\n")
                lines.flush()
                drawn = int((pred["scores"] >= args.draw_thresh).sum())
                if not args.no_draw:
                    draw(array, pred, score_thresh=args.draw_thresh).save(out_dir / image.png)
                written, detections = written + 1, detections + len(records)
                bar.update(1)
                if bar.disable and not args.quiet:
                    shown = "(not drawn)" if args.no_draw else f"({drawn} drawn) -> {out_dir / image.png}"
                    print(f"{image.path}: {len(records)} detections {shown}", flush=True)
        results.write("]\n")
    bar.close()
    return written, detections


def _write_results(stream: IO[str], records: list[dict[str, Any]], first: bool) -> None:
    """Append records to a JSON list being written (``[`` already, ``]`` at the end)."""
    for index, record in enumerate(records):
        stream.write(("" if first and index == 0 else ",") + json.dumps(record))


def to_coco_results(prediction: dict[str, Any], image_id: int, file_name: str,
                    category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """One image's ``predict`` output as COCO result records (the evaluator's conversion) plus ``file_name``."""
    from ..evaluation import instances_to_coco

    outputs = {"boxes": prediction["boxes"], "scores": prediction["scores"], "classes": prediction["labels"],
               "masks": prediction.get("masks")}
    return [{**record, "file_name": file_name} for record in instances_to_coco(image_id, outputs, category_ids)]
