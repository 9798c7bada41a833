"""``pycontrast-zoo finetune``: a zoo detector, a checkpoint or a pretrain fine-tuned on your own dataset.

torch is imported only when the command runs.
"""
from __future__ import annotations

import argparse

from .train_cmds import _OverridesParser, _check_opts, _device, _passive_cpu_threads


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
    ft.add_argument("--dataset", metavar="PATH", required=True,
                    help="COCO-format dataset: a folder (annotations/instances_{train,val}.json + train/, val/), "
                         "annotations.json[:image_root], or a built-in name")
    ft.add_argument("--schedule", metavar="1x|short|ITERS", default=None,
                    help="1x or short (epochs of the dataset's images, as the plan prints) or a number of iterations "
                         "(default: short); 2 images per process, the config's lr scaled linearly")
    ft.add_argument("--config", metavar="CFG", default=None, help="a config instead of the source's")
    ft.add_argument("--output", metavar="DIR", default=None,
                    help="output folder (default: output/finetune_<source>_<dataset>)")
    ft.add_argument("--device", metavar="D", default="auto",
                    help="cpu, cuda, ... (default: cuda when available, else cpu)")
    ft.add_argument("--num-gpus", metavar="N", type=int, default=1, help="processes per machine, one per GPU")
    ft.add_argument("--num-machines", metavar="N", type=int, default=1, help="machines (default: 1)")
    ft.add_argument("--machine-rank", metavar="R", type=int, default=0, help="this machine's rank")
    ft.add_argument("--dist-url", metavar="URL", default="auto", help="tcp://HOST:PORT of machine 0")
    ft.add_argument("--resume", action="store_true", help="continue from OUTPUT/last_checkpoint")
    ft.add_argument("--dry-run", action="store_true", help="print the plan; train nothing")
    ft.set_defaults(func=run_finetune, opts=[])
    ft.__class__ = _OverridesParser  # KEY VALUE pairs may follow the options
    ft.epilog = "Config overrides go last, detectron2 style: KEY VALUE ... (e.g. SOLVER.BASE_LR 0.005)"


def run_finetune(args: argparse.Namespace) -> int:
    """Handler: plan, print, and unless --dry-run train; print where the model is and its AP."""
    _passive_cpu_threads()
    from ..engine.finetune import finetune, plan_finetune

    _check_opts(args.opts)
    plan = plan_finetune(args.source, args.dataset, schedule=args.schedule, config=args.config, overrides=args.opts,
                         output_dir=args.output, device=args.device if args.dry_run else _device(args.device),
                         num_gpus=args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                         dist_url=args.dist_url, resume=args.resume)
    if args.dry_run:
        print(plan.render())
        return 0
    result = finetune(plan)
    if result is not None:
        print(f"fine-tuned to iteration {result.max_iter}: {plan.output_dir / 'model_final.pth'}")
        for task, values in result.metrics.items():
            print(f"{task}: " + "  ".join(f"{k} {v:.2f}" for k, v in values.items()))
    return 0
