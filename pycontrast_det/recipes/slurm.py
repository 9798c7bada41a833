"""Run a ``train`` or ``reproduce`` command as a SLURM job through submitit (``--launcher slurm``), or as
submitit's local job (``--launcher submitit-local``: real processes on this machine, CPU ranks on gloo).

Every task of the job runs the same command with ``--launcher local``; submitit's environment gives each its rank,
world size and master address, which :func:`~pycontrast_det.engine.launch.launch` joins as under torchrun. A task
that fails exits non-zero and the others are stopped at once: by srun (``--kill-on-bad-exit``) under SLURM, by
:func:`wait` for submitit-local; its one-line error is in its log and, for submitit-local, printed by the waiting
command. On preemption or timeout, SLURM sends submitit's signal (``SIGUSR2`` by default, ``--signal`` 90 s before
the time limit) or ``SIGTERM``: the trainer stops after the iteration it is in, saves a checkpoint
(:mod:`pycontrast_det.engine.preempt`) and the job is requeued with ``--resume``, so it goes on from that
checkpoint. submitit's files (sbatch script, pickles, one log per task) go to ``OUTPUT/slurm/``. submitit is an
optional dependency (``pip install 'pycontrast-det[slurm]'``).
"""
from __future__ import annotations

import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..engine import preempt
from ..engine.output import LAUNCHER_DIR
from ..engine.run_options import LAUNCHERS, RunOptions
from ..errors import ConfigError, MissingDependencyError, RankFailedError

SIGNAL_DELAY_S = 120  # the preemption signal comes this long before the time limit: time for one step and a save
SRUN_ARGS = ("--kill-on-bad-exit=1",)  # a task that exits non-zero ends the job's other tasks at once
_POLL_S = 0.5  # how often the submitit-local wait looks at the tasks


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
                                  "ntasks_per_node": self.gpus_per_node, "signal_delay_s": SIGNAL_DELAY_S,
                                  "srun_args": list(SRUN_ARGS)}
        if self.cuda:
            params["gpus_per_node"] = self.gpus_per_node
        if self.partition:
            params["partition"] = self.partition
        if self.extra:
            params["additional_parameters"] = dict(self.extra)
        return params


def request(options: RunOptions, output_dir: Path, job_name: str) -> SlurmRequest:
    """Check the launcher options and describe the job (nothing is submitted)."""
    launcher, nodes, tasks = options.launcher, options.nodes, options.processes_per_machine
    if launcher not in LAUNCHERS[1:]:
        raise ConfigError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if nodes < 1 or tasks < 1:
        raise ConfigError(f"--nodes and --gpus-per-node must be >= 1, got {nodes} and {tasks}")
    if launcher == "submitit-local" and nodes != 1:
        raise ConfigError("--launcher submitit-local runs on this machine: use --nodes 1")
    return SlurmRequest(launcher=launcher, folder=Path(output_dir).resolve() / LAUNCHER_DIR, job_name=job_name,
                        nodes=nodes, gpus_per_node=tasks, cuda=not str(options.device).startswith("cpu"),
                        partition=options.partition, time_min=parse_time(options.time),
                        extra=parse_slurm_args(options.slurm_args))


def task_argv(argv: Sequence[str]) -> list[str]:
    """The command each task runs: ``argv`` with its launcher replaced by ``--launcher local``."""
    words: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word == "--launcher":
            skip = True
        elif not word.startswith("--launcher="):
            words.append(word)
    return words + ["--launcher", "local"]


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
        code = self.main(task_argv(self.argv))
        if preempt.stopped():
            _requeue(environment, started)
        if code:  # the command printed its error: exit non-zero, so that the launcher stops the other tasks
            raise RankFailedError(f"task {environment.global_rank} ended with exit code {code}")
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
    task = shlex.join(["pycontrast-zoo", *task_argv(argv)])
    lines = [f"submission ({req.launcher}): {req.nodes} node(s) x {req.gpus_per_node} task(s), "
             f"{req.time_min} min, files in {req.folder}"]
    if req.launcher == "slurm":
        lines += ["sbatch script:", _sbatch_text(req).rstrip()]
    lines += [f"each task runs: {task}", "on SIGUSR2/SIGTERM: checkpoint, then requeue with: "
              + shlex.join(["pycontrast-zoo", *task_argv(with_resume(argv))])]
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
    job = executor.submit(Job(main, argv))
    _drop_pattern_folder(req)
    return job


def _drop_pattern_folder(req: SlurmRequest) -> None:
    """Remove the empty ``slurm/%j`` folder submitit makes under the pattern's own name (the job's files are in
    ``slurm/<job id>``)."""
    pattern = req.job_folder
    if pattern.is_dir() and not any(pattern.iterdir()):
        pattern.rmdir()


def wait(req: SlurmRequest, job: Any) -> int:
    """Wait for a submitit-local job; as soon as one task has failed, stop the others and raise its error
    (RankFailedError with the one line it printed). Returns rank 0's exit code."""
    try:
        return _wait(job, req.nodes * req.gpus_per_node)
    finally:
        _drop_pattern_folder(req)


def _wait(job: Any, tasks: int) -> int:
    while not job.done():
        failed = [job.task(k) for k in range(tasks) if _failed(job.task(k))]
        if failed:
            first = min(failed, key=lambda task: task.paths.result_pickle.stat().st_mtime)  # the cause, not a peer
            job.cancel()  # the controller stops every task
            deadline = time.monotonic() + 30
            while not job.done() and time.monotonic() < deadline:
                time.sleep(_POLL_S)
            raise RankFailedError(f"{_task_error(first)} (task {first.task_id} of job {job.job_id}; log: "
                                  f"{first.paths.stderr})")
        time.sleep(_POLL_S)
    return int(job.results()[0] or 0)


def _failed(task: Any) -> bool:
    """Whether a submitit task has ended with an exception (its result file says so)."""
    from submitit.core.utils import pickle_load

    path = task.paths.result_pickle
    try:
        return path.exists() and pickle_load(path)[0] == "error"
    except (OSError, EOFError):  # being written
        return False


def _task_error(task: Any) -> str:
    """The one-line error a task's command printed (``pycontrast-zoo CMD: error: ...``), else a pointer to its log."""
    try:
        lines = task.paths.stderr.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):
        if line.startswith("pycontrast-zoo ") and ": error: " in line:
            return line.split(": error: ", 1)[1]
    return "a task failed"


__all__ = ["Job", "LAUNCHERS", "SlurmRequest", "describe", "parse_slurm_args", "parse_time", "request", "submit",
           "task_argv", "wait", "with_resume"]
