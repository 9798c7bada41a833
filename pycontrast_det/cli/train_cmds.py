"""``pycontrast-zoo reproduce`` (a table row end to end) and ``pycontrast-zoo train`` (any config).

Both take detectron2-style ``KEY VALUE`` config overrides at the end. torch is imported only when a command
runs.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

from ..errors import ConfigError


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``reproduce``: where, on what, how many processes."""
    parser.add_argument("--output", metavar="DIR", default=None, help="output folder (checkpoints, logs, metrics)")
    parser.add_argument("--device", metavar="D", default="auto",
                        help="cpu, cuda, ... (default: cuda when available, else cpu)")
    parser.add_argument("--num-gpus", metavar="N", type=int, default=1,
                        help="processes per machine, one per GPU (with --device cpu: N CPU processes on gloo)")
    parser.add_argument("--num-machines", metavar="N", type=int, default=1, help="machines (default: 1)")
    parser.add_argument("--machine-rank", metavar="R", type=int, default=0, help="this machine's rank")
    parser.add_argument("--dist-url", metavar="URL", default="auto",
                        help="tcp://HOST:PORT of machine 0 for several machines (default: a free local port)")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/last_checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the previous run in OUTPUT (a non-empty folder is refused otherwise)")
    parser.add_argument("--amp", action="store_true", default=None, help="mixed precision (CUDA only)")
    parser.add_argument("--export-detectron2", action="store_true",
                        help="also write model_final_detectron2.pth (the weights under detectron2's names, for "
                             "stock detectron2's MODEL.WEIGHTS; about 180 MB for R50-FPN)")
    parser.add_argument("--scale-to-batch", metavar="N", type=int, default=None,
                        help="apply the linear-scaling rule for N images per iteration (lr x N/16, iterations "
                             "x 16/N), e.g. when fewer GPUs than the recipe's 8 hold the batch")
    cluster = parser.add_argument_group("cluster (SLURM through submitit: pip install 'pycontrast-det[slurm]')")
    cluster.add_argument("--launcher", choices=("local", "slurm", "submitit-local"), default="local",
                         help="local: processes here (default); slurm: submit a SLURM job and print its id and log; "
                              "submitit-local: the same job as local processes, waited for. On preemption or "
                              "timeout the job checkpoints and requeues itself with --resume")
    cluster.add_argument("--nodes", metavar="N", type=int, default=1, help="SLURM nodes (default: 1)")
    cluster.add_argument("--gpus-per-node", metavar="G", type=int, default=None,
                         help="tasks (one per GPU) per node (default: --num-gpus)")
    cluster.add_argument("--partition", metavar="P", default=None, help="SLURM partition")
    cluster.add_argument("--time", metavar="HH:MM", default="72:00", help="time limit per job (default: 72:00)")
    cluster.add_argument("--slurm-args", metavar="KEY=VALUE[,...]", action="append", default=[],
                         help="extra #SBATCH settings, e.g. account=proj,cpus-per-task=10 (repeatable)")
    parser.set_defaults(opts=[])
    parser.__class__ = _OverridesParser  # KEY VALUE pairs may follow the options (see the class)
    parser.epilog = ("Config overrides go last, detectron2 style: KEY VALUE ... (e.g. SOLVER.BASE_LR 0.01 "
                     "SOLVER.MAX_ITER 1000)")


class _OverridesParser(argparse.ArgumentParser):
    """A subcommand parser that collects the words no option claims as ``KEY VALUE`` overrides, wherever they
    stand after the positional argument (argparse alone only takes positionals given together)."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        namespace, extras = super().parse_known_args(args, namespace)
        unknown = [word for word in extras if word.startswith("--")]
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        namespace.opts = list(namespace.opts) + list(extras)
        return namespace, []


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
                    help="your own pre-trained ResNet-50 (PyContrast, MoCo, torchvision) instead of the entry's")
    rp.add_argument("--config", metavar="CFG", default=None, help="a config instead of the entry's")
    rp.add_argument("--schedule", metavar="1x|2x|6x", default=None, help="the same row with another schedule")
    rp.add_argument("--seeds", metavar="N", type=int, default=1,
                    help="run the protocol N times (SEED, SEED+1, ...) into OUTPUT/seed_<s>/ and print each AP's "
                         "mean and standard deviation beside the published row")
    _add_run_options(rp)
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
    _add_run_options(tr)
    tr.set_defaults(func=run_train)


def _passive_cpu_threads() -> None:
    """Let idle OpenMP threads sleep rather than spin (unless the user chose otherwise). On a shared or busy
    CPU, spinning threads of a 2-thread step fight the other processes: on a 2-core machine at load ~6,
    3.3 s/iteration spinning vs 1.7 s sleeping; idle, 0.83 vs 1.03 s (benchmarks/train.py). The bounded cost
    buys robustness for the CPU runs (the shapes protocol). Must run before torch loads."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_opts(opts: list[str]) -> None:
    if len(opts) % 2:
        raise ConfigError(f"config overrides come as KEY VALUE pairs; got an odd number of items: {opts}")


def run_reproduce(args: argparse.Namespace) -> int:
    """Handler: plan (and unless --dry-run: fetch, convert, train, evaluate, compare), here or as a SLURM job."""
    _passive_cpu_threads()
    from ..engine.reproduce import plan_reproduction, reproduce

    _check_opts(args.opts)
    if args.launcher != "local":
        if args.engine != "native":
            raise ConfigError("--launcher slurm / submitit-local runs the native engine (it checkpoints and requeues "
                              "on preemption); for --engine detectron2 use detectron2's own SLURM scripts")
        plan = plan_reproduction(args.entry, engine=args.engine, dataset=args.dataset, max_iter=args.max_iter,
                                 overrides=args.opts, pretrain=args.pretrain, config=args.config,
                                 schedule=args.schedule, output_dir=args.output, device=args.device)
        if args.dry_run:
            print(plan.render())
        return _submit(args, plan.output_dir, plan.entry)
    reproduce(args.entry, engine=args.engine, dataset=args.dataset, max_iter=args.max_iter, dry_run=args.dry_run,
              overrides=args.opts, pretrain=args.pretrain, config=args.config, schedule=args.schedule,
              output_dir=args.output, device=args.device if args.dry_run else _device(args.device),
              num_gpus=args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
              dist_url=args.dist_url, resume=args.resume, overwrite=args.overwrite, amp=args.amp,
              scale_to_batch=args.scale_to_batch, seeds=args.seeds, export_detectron2=args.export_detectron2)
    return 0


def _train_main(config: str, opts: list[str], scale: Any, kwargs: dict) -> Any:
    """One training process of ``pycontrast-zoo train`` (module level: spawned processes import it)."""
    from ..config import load_config
    from ..engine.scaling import scale_to_batch
    from ..engine.train import train

    cfg = load_config(config, opts)
    note = None
    if scale:
        cfg, note = scale_to_batch(cfg, scale)
    result = train(cfg, notes=(note,) if note else (), **kwargs)
    result.model = None  # returned across processes: results only
    return result


def run_train(args: argparse.Namespace) -> int:
    """Handler: train (in --num-gpus processes, or as a SLURM job), print where the results are and the final AP."""
    _passive_cpu_threads()
    from pathlib import Path

    from ..config import load_config
    from ..engine.launch import launch

    _check_opts(args.opts)
    opts = list(args.opts) + (["OUTPUT_DIR", args.output] if args.output else [])
    if args.dataset is not None:  # its categories set the number of classes (another explicit one is an error)
        from ..engine.finetune import dataset_classes

        opts = dataset_classes(args.dataset, opts)[1] + opts
    cfg = load_config(args.config, opts)  # a bad config fails here, before any process starts
    output = cfg.OUTPUT_DIR
    if args.launcher != "local":
        return _submit(args, Path(output), Path(args.config).stem)
    if args.dry_run:
        print(f"train {args.config} on {args.device} x {args.num_gpus} process(es) x {args.num_machines} machine(s) "
              f"into {Path(output).resolve()} (SEED {cfg.SEED}); nothing was run")
        return 0
    device = _device(args.device)
    kwargs = {"output_dir": output, "resume": args.resume, "overwrite": args.overwrite, "dataset": args.dataset,
              "device": device, "amp": args.amp, "export_detectron2": args.export_detectron2}
    result = launch(_train_main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                    dist_url=args.dist_url, args=(args.config, opts, args.scale_to_batch, kwargs), device=device)
    if result is not None and result.interrupted:
        print(f"stopped by a signal with a checkpoint in {output}; --resume goes on from it")
    elif result is not None:
        print(f"trained to iteration {result.max_iter}: {Path(output) / 'model_final.pth'}")
        for task, values in result.metrics.items():
            print(f"{task}: " + "  ".join(f"{k} {v:.2f}" for k, v in values.items()))
    return 0


def _submit(args: argparse.Namespace, output_dir: Any, job_name: str) -> int:
    """--launcher slurm|submitit-local: print (--dry-run) or submit this command as a job; submitit-local waits."""
    from .. import cli
    from ..engine import slurm
    from ..engine.output import claim_output_dir

    req = slurm.request(args.launcher, output_dir, job_name, nodes=args.nodes,
                        gpus_per_node=args.gpus_per_node or args.num_gpus, device=args.device,
                        partition=args.partition, time=args.time, slurm_args=args.slurm_args)
    argv = list(args.argv)
    if args.dry_run:
        print(slurm.describe(req, [w for w in argv if w != "--dry-run"]))
        return 0
    claim_output_dir(output_dir, resume=args.resume, overwrite=args.overwrite)  # refused now, not in the queue
    job = slurm.submit(req, cli.main, argv)
    print(f"submitted job {job.job_id} ({args.launcher}: {req.nodes} node(s) x {req.gpus_per_node} task(s)); "
          f"log: {job.paths.stdout}")
    if args.launcher != "submitit-local":
        return 0
    job.wait()
    code = job.results()[0]
    print(f"job {job.job_id} finished with exit code {code}; log: {job.paths.stdout}")
    return int(code or 0)
