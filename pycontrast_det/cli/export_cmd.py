"""``pycontrast-zoo export``: write a detector (a zoo entry, a checkpoint, a published folder, a config + weights) as
one ONNX or TorchScript file.

torch is imported only when the command runs.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Optional

from .. import atomic
from ..errors import ZooError
from ..export import FORMATS
from ..zoo import load_manifest
from .options import add_device, add_overrides, load_model, run_device


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add the ``export`` subcommand."""
    parser = subparsers.add_parser(
        "export", usage="pycontrast-zoo export [options] [ENTRY|CHECKPOINT] --format FORMAT --out FILE "
                        "[KEY VALUE ...]",
        help="write a detector as one ONNX or TorchScript file (image in, boxes/scores/labels/masks out)",
        description="Export a detector to one self-contained file that takes one HxWx3 uint8 RGB image of any "
                    "size and returns boxes (XYXY, image pixels), scores, labels and masks pasted at image size; "
                    "the class names and category ids are in its metadata. Run it with "
                    "pycontrast_det.load_exported(FILE), or directly with onnxruntime / torch.jit.load. "
                    "ENTRY|CHECKPOINT is what predict takes: a zoo entry with a published detector, a training "
                    "run's checkpoint (its config comes with it), a published folder, or, with --weights, a config; "
                    "with --config and --weights there is none. Config overrides (e.g. INPUT.MIN_SIZE_TEST 600 "
                    "MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.3) are baked into the file.",
    )
    parser.add_argument("source", metavar="ENTRY|CHECKPOINT", nargs="?", default=None,
                        help="zoo entry name (see `pycontrast-zoo list`), detector checkpoint (detectron2 .pth/.pkl "
                             "or this project's), or published folder")
    parser.add_argument("--weights", metavar="PATH", default=None,
                        help="weights instead of ENTRY's: a detector checkpoint, a URL, a published folder, an entry")
    parser.add_argument("--config", metavar="CFG", default=None,
                        help="config name or YAML path to build the model from instead of ENTRY's (needed for a "
                             "checkpoint that has no config in it or beside it)")
    parser.add_argument("--format", metavar="FORMAT", required=True,
                        help=f"{' or '.join(FORMATS)}: ONNX runs on onnxruntime (pip install "
                             "'pycontrast-det[export]'), TorchScript on torch")
    parser.add_argument("--out", metavar="FILE", required=True, help="file to write (replaced if it exists)")
    add_device(parser)
    add_overrides(parser)
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Handler: check the arguments, load the model, trace it into --out, say what was written."""
    if args.format not in FORMATS:
        raise ZooError(f"export: unknown --format {args.format!r}: use {' or '.join(FORMATS)}")
    device = run_device(args)  # where the model is loaded; the file is traced on the CPU and runs anywhere
    source = _source(args)
    out = _writable(Path(args.out))

    from ..export.exporter import export

    model = load_model(source, config=args.config, weights=args.weights, device=device, overrides=args.opts)
    path = export(model, out, format=args.format)
    size_mib = path.stat().st_size / 2**20
    print(f"wrote {path} ({args.format}, {size_mib:.0f} MiB, {len(model.class_names)} classes, input size "
          f"{model.cfg.INPUT.MIN_SIZE_TEST}/{model.cfg.INPUT.MAX_SIZE_TEST}, score threshold "
          f"{model.roi_heads.score_thresh})")
    return 0


def _source(args: argparse.Namespace) -> Optional[str]:
    """ENTRY|CHECKPOINT, checked for what would export an untrained detector or nothing at all."""
    if args.source is None:
        if args.config is None or args.weights is None:
            raise ZooError("export: give ENTRY|CHECKPOINT, or --config and --weights")
        return None
    if args.weights is None and not Path(args.source).exists():
        entry = load_manifest().entries.get(args.source)
        if entry is not None and not entry.published:
            raise ZooError(f"export: {entry.name} has no published detector (its heads would be untrained); train "
                           "it (pycontrast-zoo train) and export the checkpoint, or give --weights")
    return args.source


def _writable(out: Path) -> Path:
    """``out``, once its folder exists and takes a file (checked before the model is loaded: minutes earlier)."""
    if out.is_dir():
        raise ZooError(f"export: --out {out} is a folder; give a file name, e.g. {out / 'model.onnx'}")
    try:
        folder = atomic.make_dirs(out.parent)
        with atomic.guard(out):
            tempfile.TemporaryFile(dir=folder).close()
    except (FileExistsError, NotADirectoryError) as exc:
        raise ZooError(f"export: cannot write --out {out}: {exc.filename} is a file, not a folder") from None
    return out
