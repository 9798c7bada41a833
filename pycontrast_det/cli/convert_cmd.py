"""``pycontrast-zoo convert``: a pre-trained ResNet-50 -> detectron2 backbone file, with a key-by-key report."""
from __future__ import annotations

import argparse
import json

_TARGETS = ("d2-pkl", "safetensors")


def register(subparsers: "argparse._SubParsersAction") -> None:
    from ..checkpoints.readers import FORMATS  # torch-free

    parser = subparsers.add_parser(
        "convert",
        help="convert a pre-trained ResNet-50 (any self-supervised codebase's checkpoint) for detectron2",
        description="Convert a pre-trained ResNet-50 checkpoint to a detectron2 backbone state dict (318 keys), "
                    "as PyContrast's convert_pretrained.py does, refusing anything that cannot initialise an "
                    "RGB ResNet-50. The ResNet-50 is found by structure at any depth of the file (torchvision, "
                    "detectron2, MSRA caffe2 or nn.Sequential names); of several, the evaluated one is taken "
                    "(teacher over student, base/query/online over momentum/key/target, EMA only with --ema). "
                    "Formats (--from): " + "; ".join(f"{k}: {v}" for k, v in FORMATS.items()),
    )
    parser.add_argument("input", metavar="IN", help="checkpoint to convert (.pth, .pth.tar, .ckpt, .pkl, "
                                                    ".safetensors), a URL, or a zoo pretrain name (fetched through "
                                                    "the cache); FILE#key=K&prefix=P also chooses the encoder")
    parser.add_argument("output", metavar="OUT", help="file to write")
    parser.add_argument("--from", dest="source_format", choices=sorted(FORMATS), default=None,
                        help="input format (default: detected from the file)")
    parser.add_argument("--ema", action="store_true",
                        help="take the EMA copy of the encoder (PyContrast's 'model_ema', any path part 'ema')")
    parser.add_argument("--key", metavar="PATH.IN.FILE", default=None,
                        help="take the encoder at this dotted path into the file (a tensor set, e.g. teacher or "
                             "state_dict, or one and the start of a prefix, e.g. state_dict.module.base_encoder)")
    parser.add_argument("--prefix", metavar="STR", default=None,
                        help="take the encoder whose keys start with STR (e.g. module.momentum_encoder.)")
    parser.add_argument("--to", dest="target", choices=_TARGETS, default=None,
                        help="output format (default: safetensors for *.safetensors, else d2-pkl)")
    parser.add_argument("--author", default="pycontrast-det", help="__author__ written into a d2-pkl")
    parser.add_argument("--json-report", action="store_true", help="print the report as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="print counts only, not every key")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert and write OUT; a partial ResNet-50, another network or an ambiguous choice is a one-line error
    (exit 2) and nothing is written."""
    from ..checkpoints import convert_to_detectron2, resolve_weights, write_d2_pkl, write_safetensors
    from ..checkpoints.encoders import EncoderChoice
    from ..errors import ZooError

    source = resolve_weights(args.input)  # a file, a URL or a zoo pretrain, fetched through the cache
    if source is None:
        raise ZooError(f"{args.input} is random initialisation: there are no weights to convert")
    given = source.choice
    choice = EncoderChoice(key=args.key if args.key is not None else given.key,
                           prefix=args.prefix if args.prefix is not None else given.prefix, ema=args.ema or given.ema)
    state, report = convert_to_detectron2(source.path, format=args.source_format or source.format, choice=choice)
    target = args.target or ("safetensors" if args.output.endswith(".safetensors") else "d2-pkl")
    if target == "safetensors":
        meta = {"format": "detectron2", "source_format": report.format,
                "stride_in_1x1": str(report.stride_in_1x1), "input_format": str(report.input_format)}
        write_safetensors(state, args.output, metadata=meta)
    else:
        write_d2_pkl(state, args.output, author=args.author)
    if args.json_report:
        print(json.dumps({**report.to_dict(), "output": args.output, "to": target}, indent=2))
    else:
        print(report.summary(verbose=not args.quiet))
        print(f"wrote {args.output} ({target}, {len(report.kept)} keys)")
    return 0
