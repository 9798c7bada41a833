"""``pycontrast-zoo reproduce`` (a table row end to end) and ``pycontrast-zoo train`` (any config).

Both take detectron2-style ``KEY VALUE`` config overrides at the end (:mod:`.options`) and the run options of
:mod:`.runs`. torch is imported only when a command runs.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Optional

from ..engine.run_options import RunOptions
from ..errors import ConfigError
from .runs import add_run_options, passive_cpu_threads, print_result, run_options, submit

if TYPE_CHECKING:
    from ..engine.train import TrainResult


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add the ``reproduce`` and ``train`` subcommands."""
    rp = subparsers.add_parser(
        "reproduce", help="train and evaluate a row of the table (or your own pretrain) and compare",
        description="Plan, fetch and convert the pre-trained backbone, write the effective config, train, "
                    "evaluate and print the measured AP beside the published one. On COCO the entry's config is "
                    "followed exactly; on --dataset shapes a small documented protocol runs on a laptop CPU. "
                    "--dry-run prints the plan and the equivalent commands (ours and detectron2's) only.")
    rp.add_argument("entry", metavar="ENTRY", help="zoo entry, e.g. mask_rcnn_fpn_1x_rand")
    rp.add_argument("--engine", choices=("native", "detectron2"), default="native",
                    help="our trainer (default) or detectron2's DefaultTrainer (needs detectron2)")
    rp.add_argument("--dataset", metavar="NAME|PATH", default=None,
                    help="coco (default: the published protocol), shapes, or a COCO-format dataset")
    rp.add_argument("--max-iter", metavar="N", type=int, default=None, help="stop after N iterations")
    rp.add_argument("--dry-run", action="store_true", help="print the plan and commands; fetch and train nothing")
    rp.add_argument("--pretrain", metavar="PATH", default=None,
                    help="your own pre-trained ResNet-50 instead of the entry's, in any self-supervised codebase's "
                         "layout (found by structure); PATH#key=K or PATH#prefix=P picks one of several encoders")
    rp.add_argument("--config", metavar="CFG", default=None, help="a config instead of the entry's")
    rp.add_argument("--schedule", metavar="1x|2x|6x", default=None, help="the same row with another schedule")
    rp.add_argument("--seeds", metavar="N", type=int, default=1,
                    help="run the protocol N times (SEED, SEED+1, ...) into OUTPUT/seed_<s>/ and print each AP's "
                         "mean and standard deviation beside the published row")
    add_run_options(rp)
    rp.set_defaults(func=run_reproduce)

    tr = subparsers.add_parser(
        "train", help="train a Mask R-CNN from a config (detectron2's protocol, our trainer)",
        description="Train the config's model as detectron2 does (SGD, warmup + steps, PreciseBN, checkpoints "
                    "model_NNNNNNN.pth / model_final.pth, log.txt, metrics.json) and evaluate it on "
                    "DATASETS.TEST. MODEL.WEIGHTS may be a pre-trained ResNet-50 in any supported format.")
    tr.add_argument("--config", metavar="CFG", required=True, help="config file or name under configs/")
    tr.add_argument("--dataset", metavar="NAME|PATH", default=None,
                    help="train on this dataset's train split, evaluate on its val split (default: DATASETS); "
                         "MODEL.ROI_HEADS.NUM_CLASSES is set from its categories")
    tr.add_argument("--dry-run", action="store_true",
                    help="check the config and print what would run (with --launcher slurm: the exact submission)")
    add_run_options(tr)
    tr.set_defaults(func=run_train)


def run_reproduce(args: argparse.Namespace) -> int:
    """Handler: plan (and unless --dry-run: fetch, convert, train, evaluate, compare), here or as a SLURM job."""
    passive_cpu_threads()
    from ..recipes.reproduce import plan_reproduction, reproduce

    options = run_options(args)
    if args.launcher != "local" and args.engine != "native":
        raise ConfigError("--launcher slurm / submitit-local runs the native engine (it checkpoints and requeues "
                          "on preemption); for --engine detectron2 use detectron2's own SLURM scripts")
    plan = plan_reproduction(args.entry, options, engine=args.engine, dataset=args.dataset, max_iter=args.max_iter,
                             overrides=args.opts, pretrain=args.pretrain, config=args.config, schedule=args.schedule)
    if args.launcher != "local":
        if args.dry_run:
            print(plan.render())
        return submit(args, options, plan.output_dir, plan.entry)
    result = reproduce(plan, seeds=args.seeds, dry_run=args.dry_run)
    return 130 if result.train_result is not None and result.train_result.interrupted == "SIGINT" else 0


def _train_main(config: str, opts: list[str], options: RunOptions, dataset: Optional[str]) -> "TrainResult":
    """One training process of ``pycontrast-zoo train`` (module level: spawned processes import it)."""
    from ..config import load_config
    from ..engine.train import train
    from ..recipes.scaling import scale_to_batch
    from ..reports.curves_hook import CurvesHook

    cfg = load_config(config, opts)
    note = None
    if options.scale_to_batch:
        cfg, note = scale_to_batch(cfg, options.scale_to_batch)
    return train(cfg, options, dataset=dataset, notes=(note,) if note else (), hooks=[CurvesHook()])


def run_train(args: argparse.Namespace) -> int:
    """Handler: train (in --num-gpus processes, or as a SLURM job), print where the results are and the final AP."""
    passive_cpu_threads()
    from pathlib import Path

    from ..config import load_config

    options = run_options(args)
    opts = list(args.opts) + (["OUTPUT_DIR", args.output] if args.output else [])
    if args.dataset is not None:  # its categories set the number of classes (another explicit one is an error)
        from ..recipes.finetune import dataset_classes

        opts = dataset_classes(args.dataset, opts)[1] + opts
    cfg = load_config(args.config, opts)  # a bad config fails here, before any process starts
    output = Path(cfg.OUTPUT_DIR)
    options = options.replace(output_dir=output)
    if args.launcher != "local":
        return submit(args, options, output, Path(args.config).stem)
    if args.dry_run:
        print(f"train {args.config} on {options.describe()} into {output.resolve()} (SEED {cfg.SEED}); nothing was "
              "run")
        return 0
    result = options.launch(_train_main, args.config, opts, options, args.dataset)
    return print_result(result, output, "trained")
