"""Run a ``train`` or ``reproduce`` command as a SLURM job through submitit (``--launcher slurm``), or as
submitit's local job (``--launcher submitit-local``: real processes on this machine, CPU ranks on gloo).

Every task of the job runs the same command with ``--launcher local``; submitit's environment gives each its
rank, world size and master address, which :func:`~pycontrast_det.engine.launch.launch` joins as under
torchrun. On preemption or timeout, SLURM sends submitit's signal (``SIGUSR2`` by default, ``--signal``
90 s before the time limit) or ``SIGTERM``: the trainer stops after the iteration it is in, saves a checkpoint
(:mod:`pycontrast_det.engine.preempt`) and the job is requeued with ``--resume``, so it goes on from that
checkpoint. submitit's files (sbatch script, pickles, one log per task) go to ``OUTPUT/slurm/``.
submitit is an optional dependency (``pip install 'pycontrast-det[slurm]'``).
"""
from __future__ import annotations

import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..errors import ConfigError, MissingDependencyError
from ..engine import preempt
from ..engine.output import LAUNCHER_DIR

LAUNCHERS = ("local", "slurm", "submitit-local")
SIGNAL_DELAY_S = 120  # the preemption signal comes this long before the time limit: time for one step and a save


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise MissingDependencyError("--launcher slurm / submitit-local needs submitit: pip install submitit "
                                     "(or pip install 'pycontrast-det[slurm]')") from None
    return submitit


def parse_time(text: str) -> int:
    """SLURM's time limit ``HH:MM`` (or ``D-HH:MM``, or minutes) -> minutes."""
    days, _, clock = text.rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
        if len(parts) > 2 or any(p < 0 for p in parts):
            raise ValueError(text)
        minutes = parts[0] * 60 + parts[1] if len(parts) == 2 else parts[0]
        return int(days or 0) * 24 * 60 + minutes
    except ValueError:
        raise ConfigError(f"--time {text!r}: give HH:MM (e.g. 04:00), D-HH:MM or minutes") from None


def parse_slurm_args(items: Sequence[str]) -> dict[str, str]:
    """``--slurm-args`` values (``KEY=VALUE``, comma-separated or repeated) -> extra ``#SBATCH --KEY=VALUE`` lines."""
    out: dict[str, str] = {}
    for item in items:
        for pair in filter(None, (p.strip() for p in item.split(","))):
            key, sep, value = pair.lstrip("-").partition("=")
            if not sep or not key:
                raise ConfigError(f"--slurm-args {pair!r}: give KEY=VALUE pairs, e.g. account=myproject,qos=high")
            out[key] = value
    return out


@dataclass(frozen=True)
class SlurmRequest:
    """What to ask SLURM (or submitit's local executor) for."""

    launcher: str                    # "slurm" or "submitit-local"
    folder: Path                     # OUTPUT/slurm: submitit's scripts, pickles and logs
    job_name: str
    nodes: int = 1
    gpus_per_node: int = 1           # one task per GPU (with --device cpu: CPU processes per node)
    cuda: bool = True                # ask for GPUs (--gres) for the tasks
    partition: Optional[str] = None
    time_min: int = 60
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def job_folder(self) -> Path:
        """submitit's folder pattern: one folder per job id."""
        return self.folder / "%j"

    def parameters(self) -> dict[str, Any]:
        """submitit's SLURM parameters (the keyword names of its sbatch writer)."""
        params: dict[str, Any] = {"job_name": self.job_name, "time": self.time_min, "nodes": self.nodes,
                                  "ntasks_per_node": self.gpus_per_node, "signal_delay_s": SIGNAL_DELAY_S}
        if self.cuda:
            params["gpus_per_node"] = self.gpus_per_node
        if self.partition:
            params["partition"] = self.partition
        if self.extra:
            params["additional_parameters"] = dict(self.extra)
        return params


def request(launcher: str, output_dir: Path, job_name: str, *, nodes: int, gpus_per_node: int, device: str,
            partition: Optional[str], time: str, slurm_args: Sequence[str]) -> SlurmRequest:
    """Check the launcher options and describe the job (nothing is submitted)."""
    if launcher not in LAUNCHERS[1:]:
        raise ConfigError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if nodes < 1 or gpus_per_node < 1:
        raise ConfigError(f"--nodes and --gpus-per-node must be >= 1, got {nodes} and {gpus_per_node}")
    if launcher == "submitit-local" and nodes != 1:
        raise ConfigError("--launcher submitit-local runs on this machine: use --nodes 1")
    return SlurmRequest(launcher=launcher, folder=Path(output_dir).resolve() / LAUNCHER_DIR, job_name=job_name,
                        nodes=nodes, gpus_per_node=gpus_per_node, cuda=not str(device).startswith("cpu"),
                        partition=partition, time_min=parse_time(time), extra=parse_slurm_args(slurm_args))


def with_resume(argv: Sequence[str]) -> list[str]:
    """The command line of a requeued job: the same, continuing from the last checkpoint (``--resume``)."""
    words = [w for w in argv if w != "--overwrite"]
    return words if "--resume" in words else words + ["--resume"]


class Job:
    """The callable each task runs: the command, with submitit's ranks exported for torch.distributed and the
    preemption signals turned into a checkpoint and a requeue with ``--resume``."""

    def __init__(self, main: Callable[[list[str]], int], argv: Sequence[str]) -> None:
        self.main, self.argv = main, list(argv)

    def __call__(self) -> int:
        started = time.time()
        submitit = _submitit()
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        environment = submitit.JobEnvironment()
        preempt.install([environment._usr_sig(), signal.SIGTERM])
        code = self.main(self.argv + ["--launcher", "local"])
        if preempt.stopped():
            _requeue(environment, started)
        return code

    def checkpoint(self) -> Any:
        """submitit's hook: the job to run after the requeue (the same command with ``--resume``)."""
        return _submitit().helpers.DelayedSubmission(Job(self.main, with_resume(self.argv)))


def _requeue(environment: Any, started: float) -> None:
    """After the trainer saved its checkpoint: submitit's own handler dumps the ``--resume`` job and requeues it
    (rank 0; the other ranks just end, and the requeue restarts every task). ``started``: when this task began,
    for submitit's count of timeouts."""
    from submitit.core.job_environment import SignalHandler
    from submitit.core.utils import DelayedSubmission

    paths = environment.paths
    handler = SignalHandler(environment, paths, DelayedSubmission.load(paths.submitted_pickle))
    handler._start_time = started
    handler.checkpoint_and_try_requeue(environment._usr_sig())


def _sbatch_text(req: SlurmRequest) -> str:
    """The sbatch script SlurmExecutor writes for ``req`` (its own writer, with its own job command)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(req.job_folder))])
    return _make_sbatch_string(command=command, folder=req.job_folder, **req.parameters())


def describe(req: SlurmRequest, argv: Sequence[str]) -> str:
    """The exact submission (``--dry-run``): the sbatch script and the command every task runs."""
    _submitit()
    task = shlex.join(["pycontrast-zoo", *argv, "--launcher", "local"])
    lines = [f"submission ({req.launcher}): {req.nodes} node(s) x {req.gpus_per_node} task(s), "
             f"{req.time_min} min, files in {req.folder}"]
    if req.launcher == "slurm":
        lines += ["sbatch script:", _sbatch_text(req).rstrip()]
    lines += [f"each task runs: {task}", "on SIGUSR2/SIGTERM: checkpoint, then requeue with: "
              + shlex.join(["pycontrast-zoo", *with_resume(argv), "--launcher", "local"])]
    return "\n".join(lines)


def submit(req: SlurmRequest, main: Callable[[list[str]], int], argv: Sequence[str]) -> Any:
    """Submit ``main(argv)`` as the job of ``req``; returns the submitit Job (``job_id``, ``paths.stdout``)."""
    submitit = _submitit()
    req.folder.mkdir(parents=True, exist_ok=True)
    if req.launcher == "submitit-local":
        executor = submitit.LocalExecutor(folder=req.job_folder)
        executor.update_parameters(timeout_min=req.time_min, tasks_per_node=req.gpus_per_node,
                                   gpus_per_node=req.gpus_per_node if req.cuda else 0,
                                   signal_delay_s=SIGNAL_DELAY_S)
    else:
        try:
            executor = submitit.SlurmExecutor(folder=req.job_folder)
        except RuntimeError as exc:  # submitit checks for srun
            raise ConfigError(f"--launcher slurm: {exc} (--dry-run prints the submission; --launcher "
                              "submitit-local runs it here)") from None
        executor.update_parameters(**req.parameters())
    return executor.submit(Job(main, argv))


__all__ = ["Job", "LAUNCHERS", "SlurmRequest", "describe", "parse_slurm_args", "parse_time", "request", "submit",
           "with_resume"]
