"""What the commands that train (``train``, ``reproduce``, ``finetune``) share: one option set (where, on what, how
many processes, SLURM) read into one :class:`~pycontrast_det.engine.run_options.RunOptions`, the submission of the
command as a SLURM job, the end of a run as printed, and the CPU thread policy.

No torch at import.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
import sys
from typing import TYPE_CHECKING, Optional

from ..engine.run_options import LAUNCHERS, RunOptions
from .options import add_device, add_overrides, planned_device, run_device

if TYPE_CHECKING:
    from ..engine.train import TrainResult


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``train``, ``reproduce`` and ``finetune``, and trailing ``KEY VALUE`` overrides."""
    parser.add_argument("--output", metavar="DIR", default=None, help="output folder (checkpoints, logs, metrics)")
    add_device(parser)
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
    cluster.add_argument("--launcher", choices=LAUNCHERS, default="local",
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
    add_overrides(parser)


def passive_cpu_threads() -> None:
    """Let idle OpenMP threads sleep rather than spin (unless the user chose otherwise). On a shared or busy
    CPU, spinning threads of a 2-thread step fight the other processes: on a 2-core machine at load ~6,
    3.3 s/iteration spinning vs 1.7 s sleeping; idle, 0.83 vs 1.03 s (benchmarks/train.py). The bounded cost
    buys robustness for the CPU runs (the shapes protocol). Must run before torch loads."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run_options(args: argparse.Namespace) -> RunOptions:
    """The run options of the command line, once. The device is checked against this machine unless the command
    only plans (--dry-run) or runs elsewhere (--launcher slurm: each task checks it where it runs)."""
    device = planned_device(args) if args.dry_run or args.launcher != "local" else run_device(args)
    return RunOptions(output_dir=Path(args.output) if args.output else None, device=device, num_gpus=args.num_gpus,
                      num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url,
                      resume=args.resume, overwrite=args.overwrite, amp=args.amp, scale_to_batch=args.scale_to_batch,
                      export_detectron2=args.export_detectron2, launcher=args.launcher, nodes=args.nodes,
                      gpus_per_node=args.gpus_per_node, partition=args.partition, time=args.time,
                      slurm_args=tuple(args.slurm_args))


def print_result(result: Optional["TrainResult"], output_dir: Path, verb: str) -> int:
    """What a run prints at the end: where the model is and its AP, or where it stopped; the exit code (130 after
    Ctrl-C). Nothing for None (a process other than global rank 0)."""
    if result is None:
        return 0
    if result.interrupted:
        print(f"{result.interrupted}: stopped with a checkpoint in {output_dir}; --resume goes on from iteration "
              f"{result.next_iter}", file=sys.stderr)
        return 130 if result.interrupted == "SIGINT" else 0
    print(f"{verb} to iteration {result.max_iter}: {output_dir / 'model_final.pth'}")
    for task, values in result.metrics.items():
        print(f"{task}: " + "  ".join(f"{k} {v:.2f}" for k, v in values.items()))
    return 0


def submit(args: argparse.Namespace, options: RunOptions, output_dir: Path, job_name: str) -> int:
    """--launcher slurm|submitit-local: print (--dry-run) or submit this command as a job; submitit-local waits,
    stopping every task as soon as one fails (its error raised here)."""
    from .. import cli
    from ..engine.output import claim_output_dir
    from ..recipes import slurm

    req = slurm.request(options, output_dir, job_name)
    argv = list(args.argv)
    if args.dry_run:
        print(slurm.describe(req, [w for w in argv if w != "--dry-run"]))
        return 0
    claim_output_dir(output_dir, resume=options.resume, overwrite=options.overwrite)  # refused now, not in the queue
    job = slurm.submit(req, cli.main, argv)
    print(f"submitted job {job.job_id} ({options.launcher}: {req.nodes} node(s) x {req.gpus_per_node} task(s)); "
          f"log: {job.paths.stdout}", flush=True)
    if options.launcher != "submitit-local":
        return 0
    code = slurm.wait(req, job)
    print(f"job {job.job_id} finished with exit code {code}; log: {job.paths.stdout}")
    return code


__all__ = ["add_run_options", "passive_cpu_threads", "print_result", "run_options", "submit"]
