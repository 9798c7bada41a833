"""``pycontrast-zoo finetune``: a zoo detector, a checkpoint or a pretrain fine-tuned on your own dataset.

torch is imported only when the command runs.
"""
from __future__ import annotations

import argparse

from .runs import add_run_options, passive_cpu_threads, print_result, run_options, submit


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add the ``finetune`` subcommand."""
    ft = subparsers.add_parser(
        "finetune", help="fine-tune a zoo detector (or a checkpoint, or a pretrain) on your COCO-format dataset",
        description="Train SOURCE on DATASET: NUM_CLASSES from the dataset's categories (whose names and ids are "
                    "stored with the checkpoints, for predict and evaluate), the class-dependent layers "
                    "re-initialised when their shapes differ (a warning lists them), every other weight loaded, "
                    "and a fine-tuning schedule (printed; SOLVER.* overrides win). SOURCE is a zoo entry, a "
                    "checkpoint (its config is stored in it or in the config.yaml beside it; else give --config) "
                    "or a pretrain name with --config.")
    ft.add_argument("source", metavar="ENTRY|CHECKPOINT", help="zoo entry, checkpoint file, or pretrain name")
    ft.add_argument("--dataset", metavar="PATH", required=True, action="append",
                    help="the dataset: a folder in one of the layouts the README lists (this package's COCO folder, "
                         "Roboflow, CVAT, Label Studio, Pascal VOC), annotations.json[:image_root], or a built-in "
                         "name; repeat it to train on several datasets as one (one class list)")
    ft.add_argument("--val", metavar="PATH", default=None,
                    help="the validation set (default: the first dataset's val split, else a held-out fraction "
                         "of its images)")
    ft.add_argument("--holdout", metavar="F", type=float, default=None,
                    help="for a dataset without a val split, the fraction of its images held out for validation, "
                         "chosen by SEED (default 0.1)")
    ft.add_argument("--schedule", metavar="1x|short|ITERS", default=None,
                    help="1x or short (epochs of the dataset's images, as the plan prints) or a number of iterations "
                         "(default: short); 2 images per process, the config's lr scaled linearly")
    ft.add_argument("--config", metavar="CFG", default=None, help="a config instead of the source's")
    ft.add_argument("--dry-run", action="store_true",
                    help="print the plan (with --launcher slurm: also the exact submission); train nothing")
    add_run_options(ft)  # --output default: output/finetune_<source>_<dataset>
    ft.set_defaults(func=run_finetune)


def run_finetune(args: argparse.Namespace) -> int:
    """Handler: plan, print, and unless --dry-run train (here, or as a SLURM job); print where the model is and its
    AP."""
    passive_cpu_threads()
    from ..recipes.finetune import finetune, plan_finetune

    options = run_options(args)
    plan = plan_finetune(args.source, args.dataset, options, val=args.val, holdout=args.holdout,
                         schedule=args.schedule, config=args.config, overrides=args.opts)
    if args.launcher != "local":
        if args.dry_run:
            print(plan.render())
        return submit(args, plan.options, plan.output_dir, plan.output_dir.name)
    if args.dry_run:
        print(plan.render())
        return 0
    return print_result(finetune(plan), plan.output_dir, "fine-tuned")
