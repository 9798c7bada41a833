"""How and where a run runs, decided once (from the command line or Python) and passed whole to ``train``,
``reproduce`` and ``finetune``: the output folder, the device and process counts, resume / overwrite, mixed
precision, batch scaling, the detectron2 export, and the launcher with its SLURM settings.

:meth:`RunOptions.launch` starts a function in the run's processes (here, or joining the group torchrun or a
SLURM / submitit task set up); :meth:`RunOptions.train_words` is the ``pycontrast-zoo train`` command with the same
options. No torch at import.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union

T = TypeVar("T")
LAUNCHERS = ("local", "slurm", "submitit-local")


def torchrun_group() -> Optional[tuple[int, int, int, int]]:
    """(global rank, local rank, processes on this machine, processes in all) when torchrun, a SLURM task or any
    env:// launcher started this process (RANK / WORLD_SIZE / LOCAL_RANK set), else None. The one place that reads
    these variables."""
    env = os.environ
    if not all(key in env for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return None
    world = int(env["WORLD_SIZE"])
    return int(env["RANK"]), int(env["LOCAL_RANK"]), int(env.get("LOCAL_WORLD_SIZE", world)), world


@dataclass(frozen=True)
class RunOptions:
    """Where and how a run runs; frozen, built once (:func:`pycontrast_det.cli.runs.run_options` from the CLI)."""

    output_dir: Optional[Path] = None       # None: the config's OUTPUT_DIR, or the recipe's default folder
    device: str = "cpu"
    num_gpus: int = 1                       # processes per machine (with --device cpu: CPU processes on gloo)
    num_machines: int = 1
    machine_rank: int = 0
    dist_url: str = "auto"                  # tcp://HOST:PORT of machine 0 ("auto": a free local port)
    resume: bool = False                    # continue from OUTPUT/last_checkpoint
    overwrite: bool = False                 # replace the previous run's files in OUTPUT
    amp: Optional[bool] = None              # None: SOLVER.AMP.ENABLED
    scale_to_batch: Optional[int] = None    # the linear-scaling rule for this many images per iteration
    export_detectron2: bool = False         # also write model_final_detectron2.pth
    launcher: str = "local"                 # local (here, or under torchrun), slurm, submitit-local
    nodes: int = 1                          # SLURM nodes
    gpus_per_node: Optional[int] = None     # SLURM tasks per node (default num_gpus)
    partition: Optional[str] = None
    time: str = "72:00"                     # SLURM time limit
    slurm_args: tuple[str, ...] = ()        # extra #SBATCH KEY=VALUE settings

    def __post_init__(self) -> None:
        if self.output_dir is not None and not isinstance(self.output_dir, Path):
            object.__setattr__(self, "output_dir", Path(self.output_dir))
        object.__setattr__(self, "slurm_args", tuple(self.slurm_args))

    def replace(self, **changes: Any) -> "RunOptions":
        """A copy with ``changes`` (e.g. another output folder for one seed of ``--seeds``)."""
        return dataclasses.replace(self, **changes)

    def output(self, default: Union[str, os.PathLike]) -> Path:
        """The output folder, absolute: ``output_dir``, else ``default``."""
        return Path(self.output_dir if self.output_dir is not None else default).resolve()

    @property
    def processes_per_machine(self) -> int:
        """Processes on each machine: SLURM's tasks per node, torchrun's local world, else ``num_gpus``."""
        if self.launcher != "local":
            return int(self.gpus_per_node or self.num_gpus)
        group = torchrun_group()
        return group[2] if group is not None else int(self.num_gpus)

    @property
    def machines(self) -> int:
        if self.launcher != "local":
            return int(self.nodes)
        group = torchrun_group()
        return max(1, group[3] // group[2]) if group is not None else int(self.num_machines)

    @property
    def world_size(self) -> int:
        return self.processes_per_machine * self.machines

    def starts_rank_0(self) -> bool:
        """Whether global rank 0 is this process or one it spawns: the process that prints and claims."""
        group = torchrun_group()
        return group[0] == 0 if group is not None else self.machine_rank == 0

    def describe(self) -> str:
        """``cpu x 2 process(es)`` (``x N machines`` when several), as the plans print it."""
        return (f"{self.device} x {self.processes_per_machine} process(es)"
                + (f" x {self.machines} machines" if self.machines > 1 else ""))

    def launch(self, main: Callable[..., T], *args: Any) -> Optional[T]:
        """``main(*args)`` in every process of the run (spawned here, or this process joining torchrun's or a SLURM
        task's group); global rank 0's value on the machine that started it, None elsewhere. A failing process
        stops the others and raises its error here (:func:`pycontrast_det.engine.launch.launch`). The SLURM
        launchers submit the command line instead (``pycontrast-zoo ... --launcher slurm``): each task then runs
        with ``launcher="local"``."""
        from ..errors import ConfigError
        from .launch import launch

        if self.launcher != "local":
            raise ConfigError(f"launcher {self.launcher!r} submits a pycontrast-zoo command as a job (pycontrast-zoo "
                              f"train/reproduce/finetune ... --launcher {self.launcher}); in Python use "
                              "RunOptions(launcher='local') here, or torchrun")

        return launch(main, self.num_gpus, num_machines=self.num_machines, machine_rank=self.machine_rank,
                      dist_url=self.dist_url, args=args, device=self.device)

    def train_words(self, config: Union[str, os.PathLike]) -> list[str]:
        """The program and options of the equivalent ``pycontrast-zoo train`` command (its KEY VALUE pairs go
        after)."""
        words = ["pycontrast-zoo", "train", "--config", str(config), "--device", self.device,
                 "--num-gpus", str(self.processes_per_machine)]
        if self.machines > 1:
            words += ["--num-machines", str(self.machines), "--machine-rank", str(self.machine_rank),
                      "--dist-url", self.dist_url]
        if self.resume:
            words.append("--resume")
        if self.amp:
            words.append("--amp")
        if self.scale_to_batch:
            words += ["--scale-to-batch", str(self.scale_to_batch)]
        if self.export_detectron2:
            words.append("--export-detectron2")
        return words


__all__ = ["LAUNCHERS", "RunOptions", "torchrun_group"]
