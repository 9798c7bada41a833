"""``pycontrast-zoo evaluate`` (COCO AP of a zoo entry or a checkpoint) and ``pycontrast-zoo logs`` (published
training logs: final AP and loss curve, side by side with ours). torch is imported only when a command runs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..errors import ZooError
from .options import add_device, add_overrides, add_trust, load_model, run_device

if TYPE_CHECKING:
    from ..export.evaluable import EvaluableExport
    from ..zoo import Zoo


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add the ``evaluate`` and ``logs`` subcommands."""
    ev = subparsers.add_parser(
        "evaluate", help="COCO box/mask AP of a zoo entry or a checkpoint, next to the published numbers",
        description="Run a detector over a dataset and score it with COCOeval (detectron2's numbers). TARGET is "
                    "a zoo entry name (its published weights), a published folder (hf://org/repo/<entry> or its copy "
                    "on disk) or a checkpoint file (its architecture from --config or --entry, else the config a "
                    "training run stored in it or beside it as config.yaml). Datasets: shapes (built in), "
                    "coco_2017_val ($DETECTRON2_DATASETS/coco), path/to/annotations.json[:image_root] or a dataset "
                    "folder.")
    ev.add_argument("target", metavar="ENTRY|CHECKPOINT")
    ev.add_argument("--config", metavar="CFG", default=None,
                    help="config name or YAML for a checkpoint (or to override an entry's config)")
    ev.add_argument("--entry", metavar="NAME", default=None,
                    help="zoo entry a checkpoint belongs to (its config; published AP for comparison)")
    ev.add_argument("--dataset", metavar="NAME|PATH", default=None,
                    help="dataset to evaluate on (default: the config's DATASETS.TEST, else shapes)")
    ev.add_argument("--split", default="val", choices=("train", "val"), help="split (default: %(default)s)")
    add_device(ev)
    ev.add_argument("--output", metavar="DIR", default=None,
                    help="write coco_instances_results.json and metrics.json here")
    ev.add_argument("--max-images", metavar="N", type=int, default=None,
                    help="evaluate the first N images only (not comparable with published numbers)")
    ev.add_argument("--backend", default="auto", choices=("auto", "pycocotools", "faster-coco-eval"),
                    help="COCOeval implementation (default: faster-coco-eval when installed)")
    ev.add_argument("--num-workers", metavar="N", type=int, default=0, help="data loading processes (default: 0)")
    add_trust(ev)
    add_overrides(ev)
    ev.set_defaults(func=run_evaluate)

    lg = subparsers.add_parser(
        "logs", help="training curves: a published log vs the manifest (and vs ours), or our own run alone",
        description="TARGET is a zoo entry (its published detectron2 log.txt, through the cache, or --file) or our "
                    "run's output folder / metrics.json / log.txt. For an entry: its final box/mask AP against the "
                    "manifest and its loss curve; --ours adds our run alongside (plotted alone when the published "
                    "log is not at hand). For a run folder: its curves, written to FOLDER/curves.png unless --plot "
                    "says where. Every curve is labelled by its source.")
    lg.add_argument("entry", metavar="ENTRY|RUN")
    lg.add_argument("--file", metavar="PATH", default=None, help="read this log instead of downloading it")
    lg.add_argument("--ours", metavar="PATH", default=None,
                    help="our run's metrics.json, log.txt or output folder, to compare")
    lg.add_argument("--plot", metavar="OUT.png", default=None, help="write loss, lr and AP curves to this PNG")
    lg.set_defaults(func=run_logs)


def run_evaluate(args: argparse.Namespace) -> int:
    """Handler: load the model, evaluate, print metrics and the published comparison."""
    import pycontrast_det as pcd
    from ..evaluation import METRICS, evaluate
    from ..reports import compare_with_published
    from ..utils.events import setup_logger

    device = run_device(args)
    zoo = pcd.load_manifest()
    entry = zoo.entry(args.entry) if args.entry is not None else None  # a typo fails now, with close names
    if entry is None and args.target in zoo.entries and not Path(args.target).exists():
        entry = zoo.entries[args.target]
    config = args.config or (str(entry.config_path) if args.entry is not None and entry is not None else None)
    model = _exported(args) or load_model(args.target, config=config, weights=None, device=device,
                                          overrides=args.opts, config_options="--config CFG or --entry NAME")
    dataset = args.dataset or (model.cfg.DATASETS.TEST[0] if len(model.cfg.DATASETS.TEST) else "shapes")
    progress = setup_logger(None, 0, name="pycontrast_det.evaluate", stream=sys.stderr)  # progress lines
    result = evaluate(model, dataset, split=args.split, device=device, output_dir=args.output,
                      backend=args.backend, max_images=args.max_images, num_workers=args.num_workers, log=progress)
    print(f"{args.target} on {result.dataset} ({result.num_images} images, {result.backend}, "
          f"{result.seconds:.1f} s)")
    print(f"{'task':6}" + "".join(f"{m:>8}" for m in METRICS))
    for task, values in result.metrics.items():
        print(f"{task:6}" + "".join(f"{values[m]:>8.2f}" for m in METRICS))
    if result.results_json is not None:
        print(f"results: {result.results_json}\nmetrics: {result.metrics_json}")
    if entry is not None:
        print()
        print(compare_with_published(entry, result))
    return 0


def _exported(args: argparse.Namespace) -> Optional["EvaluableExport"]:
    """TARGET as an exported ONNX / TorchScript file, ready for ``evaluate()``; None when it is not one."""
    from ..export.metadata import exported_format

    kind = exported_format(Path(args.target))
    if kind is None:
        return None
    given = [opt for opt, value in (("--config", args.config), ("--entry", args.entry), ("KEY VALUE", args.opts))
             if value]
    if given:
        raise ZooError(f"evaluate: {args.target} is an exported {kind} model, whose config and weights are fixed in "
                       f"it: drop {', '.join(given)}")
    from ..export import load_exported
    from ..export.evaluable import EvaluableExport

    return EvaluableExport(load_exported(args.target, trusted=args.trust))


def run_logs(args: argparse.Namespace) -> int:
    """Handler: a published log against the manifest (and ours beside it), or our run alone; plot."""
    import pycontrast_det as pcd
    from ..reports.compare import describe_log, side_by_side
    from ..reports.curves import plot_curves
    from ..reports.logs import parse_log

    target = Path(args.entry)
    if target.exists():  # our own run: no published log needed
        ours = parse_log(target, label="ours")
        print(f"our run: {ours.source}")
        _print(describe_log(ours))
        out = plot_curves([ours], args.plot or (target if target.is_dir() else target.parent) / "curves.png",
                          title=str(target))
        print(f"\nplot: {out}")
        return 0
    zoo = pcd.load_manifest(args.manifest)
    entry = zoo.entry(args.entry)
    summaries = []
    try:
        path = Path(args.file) if args.file is not None else _published_log(entry.name, zoo)
        published = parse_log(path, label="published")
    except ZooError as exc:
        if args.ours is None:
            raise
        print(f"published log of {entry.name}: not at hand ({str(exc).splitlines()[0]}); our run alone")
    else:
        print(f"published log of {entry.name}: {path}")
        _print(describe_log(published))
        for task, label, expected in (("bbox", "box AP", entry.box_ap), ("segm", "mask AP", entry.mask_ap)):
            found = published.final(task).get("AP")
            if found is None:
                print(f"  {label}: not in the log (manifest {expected:.1f})")
            else:
                agrees = "agrees with" if round(found, 1) == round(expected, 1) else "DIFFERS from"
                print(f"  {label}: {found:.2f} in the log, {agrees} the manifest's {expected:.1f}")
        summaries.append(published)
    if args.ours is not None:
        ours = parse_log(args.ours, label="ours")
        print(f"\nour run: {args.ours}")
        _print(describe_log(ours))
        if summaries:
            _print(side_by_side(summaries[0], ours))
        summaries.insert(0, ours)
    if args.plot is not None:
        out = plot_curves(summaries, args.plot, title=entry.name)
        print(f"\nplot: {out}")
    return 0


def _published_log(entry: str, zoo: "Zoo") -> Path:
    from ..checkpoints.sources import fetch_entry_file

    return fetch_entry_file(entry, "log", zoo=zoo)


def _print(text: str) -> None:
    if text:
        print(text)
