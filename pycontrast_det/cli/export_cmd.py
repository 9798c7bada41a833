"""``pycontrast-zoo export``: write a zoo detector (or a checkpoint with its config) as one ONNX or TorchScript file.

torch is imported only when the command runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ZooError


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add the ``export`` subcommand."""
    parser = subparsers.add_parser(
        "export",
        help="write a detector as one ONNX or TorchScript file (image in, boxes/scores/labels/masks out)",
        description="Export a detector to one self-contained file that takes one HxWx3 uint8 RGB image of any "
                    "size and returns boxes (XYXY, image pixels), scores, labels and masks pasted at image size; "
                    "the class names are in its metadata. Run it with pycontrast_det.load_exported(FILE) or "
                    "directly with onnxruntime / torch.jit.load. SOURCE is a zoo entry name (its published "
                    "detector) or a checkpoint file (then --config is required).",
    )
    parser.add_argument("source", metavar="ENTRY|CHECKPOINT",
                        help="zoo entry name (see `pycontrast-zoo list`) or a detector checkpoint file "
                             "(detectron2 .pth/.pkl or this project's)")
    parser.add_argument("--config", metavar="CFG", default=None,
                        help="config name or YAML path to build the model from (required with a checkpoint; with "
                             "an entry it replaces the entry's config)")
    parser.add_argument("--format", choices=("onnx", "torchscript"), required=True,
                        help="onnx (run with onnxruntime; needs pip install 'pycontrast-det[export]') or "
                             "torchscript (run with torch)")
    parser.add_argument("--out", metavar="FILE", required=True, help="file to write")
    parser.add_argument("--opts", metavar="KEY VALUE", nargs="+", default=[],
                        help="config overrides baked into the file, e.g. --opts INPUT.MIN_SIZE_TEST 600 "
                             "MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.3")
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Handler: load the model on the CPU, trace it into --out, say what was written."""
    if len(args.opts) % 2:
        raise ZooError(f"export: --opts takes KEY VALUE pairs, got an odd number of items: {args.opts}")
    source = Path(args.source)
    if source.is_file():
        if args.config is None:
            raise ZooError(f"export: {source} is a checkpoint; give the config it was trained with (--config CFG)")
        config, weights = args.config, str(source)
    else:
        from ..store import fetch_entry_file
        from ..zoo import get_entry

        entry = get_entry(args.source)  # UnknownEntryError (close matches) for a typo
        if not entry.published:
            raise ZooError(f"export: {entry.name} has no published detector weights; train it "
                           "(pycontrast-zoo train) and export the checkpoint with --config")
        config = args.config if args.config is not None else args.source
        weights = str(fetch_entry_file(entry.name, "model")) if args.config is not None else None

    import pycontrast_det as pcd

    model = pcd.load(config, weights=weights, device="cpu", overrides=list(args.opts))
    path = pcd.export(model, args.out, format=args.format)
    size_mib = path.stat().st_size / 2**20
    print(f"wrote {path} ({args.format}, {size_mib:.0f} MiB, {len(model.class_names)} classes, input size "
          f"{model.cfg.INPUT.MIN_SIZE_TEST}/{model.cfg.INPUT.MAX_SIZE_TEST}, score threshold "
          f"{model.roi_heads.score_thresh})")
    return 0
