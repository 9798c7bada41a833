"""The training loop and what it needs: checkpoints, optimiser, PreciseBN, launch, preemption, the output folder."""
from .launch import launch
from .train import TrainResult, train

__all__ = ["TrainResult", "launch", "train"]
