"""The training loop and what it needs: run options, hooks, checkpoints, optimiser, PreciseBN, launch, preemption,
the output folder."""
from .hooks import HookBase
from .launch import launch
from .run_options import RunOptions
from .train import Trainer, TrainResult, train

__all__ = ["HookBase", "RunOptions", "TrainResult", "Trainer", "launch", "train"]
