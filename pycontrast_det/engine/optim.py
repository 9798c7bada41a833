"""SGD, learning-rate schedule and gradient clipping exactly as detectron2 (v0.6) builds them from SOLVER.

- Parameter groups: weight decay SOLVER.WEIGHT_DECAY, except WEIGHT_DECAY_NORM on every norm layer's
  parameters; biases then get BASE_LR * BIAS_LR_FACTOR and WEIGHT_DECAY_BIAS when those are set.
- Schedule: linear (or constant) warmup from WARMUP_FACTOR over WARMUP_ITERS, times GAMMA at each of STEPS;
  ``lr_multiplier(cfg.SOLVER, it)`` is the factor after ``it`` completed iterations.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..config import CfgNode


def norm_module_types() -> tuple[type, ...]:
    """Module classes whose parameters count as norm parameters (BN and subclasses, GN, LN, IN, LRN)."""
    import torch.nn as nn
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.instancenorm import _InstanceNorm

    return (_BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, _InstanceNorm)


def param_groups(model: "nn.Module", solver: "CfgNode") -> list[dict[str, Any]]:
    """Trainable parameters grouped by their (``lr``, ``weight_decay``), as detectron2's optimizer sees them."""
    norm_types = norm_module_types()
    groups: dict[tuple[float, float], list[Any]] = {}
    seen: set[int] = set()
    for module in model.modules():
        for key, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr = float(solver.BASE_LR)
            weight_decay = float(solver.WEIGHT_DECAY)
            if isinstance(module, norm_types) and solver.WEIGHT_DECAY_NORM is not None:
                weight_decay = float(solver.WEIGHT_DECAY_NORM)
            if key == "bias":
                lr *= float(solver.BIAS_LR_FACTOR)
                if solver.WEIGHT_DECAY_BIAS is not None:
                    weight_decay = float(solver.WEIGHT_DECAY_BIAS)
            groups.setdefault((lr, weight_decay), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": wd} for (lr, wd), params in groups.items()]


def build_optimizer(cfg: "CfgNode", model: "nn.Module") -> "torch.optim.SGD":
    """torch SGD over :func:`param_groups` with SOLVER.MOMENTUM, NESTEROV and WEIGHT_DECAY as defaults and the
    multi-tensor (foreach) update, as detectron2 builds it."""
    import torch

    groups = param_groups(model, cfg.SOLVER)
    if not groups:
        raise ConfigError("the model has no trainable parameters (MODEL.BACKBONE.FREEZE_AT too high?)")
    return torch.optim.SGD(groups, lr=float(cfg.SOLVER.BASE_LR), momentum=float(cfg.SOLVER.MOMENTUM),
                           nesterov=bool(cfg.SOLVER.NESTEROV), weight_decay=float(cfg.SOLVER.WEIGHT_DECAY),
                           foreach=True)


def _check_schedule(solver: "CfgNode") -> None:
    if solver.LR_SCHEDULER_NAME != "WarmupMultiStepLR":
        raise ConfigError(f"SOLVER.LR_SCHEDULER_NAME {solver.LR_SCHEDULER_NAME!r} is not supported; "
                          "the PyContrast configs use 'WarmupMultiStepLR'")
    if solver.WARMUP_METHOD not in ("linear", "constant"):
        raise ConfigError(f"SOLVER.WARMUP_METHOD must be 'linear' or 'constant', got {solver.WARMUP_METHOD!r}")
    if list(solver.STEPS) != sorted(solver.STEPS):
        raise ConfigError(f"SOLVER.STEPS must be increasing, got {list(solver.STEPS)}")


@dataclass(frozen=True)
class Schedule:
    """The lr factor after ``iteration`` completed iterations: warmup times GAMMA per passed step."""

    steps: tuple[int, ...]
    max_iter: int
    gamma: float
    warmup_iters: int
    warmup_factor: float
    warmup_method: str

    @classmethod
    def from_solver(cls, solver: "CfgNode") -> "Schedule":
        _check_schedule(solver)
        return cls(tuple(int(s) for s in solver.STEPS if s <= solver.MAX_ITER), int(solver.MAX_ITER),
                   float(solver.GAMMA), int(solver.WARMUP_ITERS), float(solver.WARMUP_FACTOR),
                   str(solver.WARMUP_METHOD))

    def __call__(self, iteration: int) -> float:
        decay = self.gamma ** bisect.bisect_right(self.steps, iteration)
        warmup_iters = min(self.warmup_iters, self.max_iter)
        if iteration >= warmup_iters:
            return decay
        if self.warmup_method == "constant":
            return decay * self.warmup_factor
        alpha = iteration / warmup_iters
        return decay * (self.warmup_factor * (1.0 - alpha) + alpha)


def lr_multiplier(solver: "CfgNode", iteration: int) -> float:
    """Factor on each group's base lr after ``iteration`` completed iterations."""
    return Schedule.from_solver(solver)(iteration)


def build_lr_scheduler(cfg: "CfgNode", optimizer: "torch.optim.Optimizer") -> "torch.optim.lr_scheduler.LambdaLR":
    """A LambdaLR stepping once per iteration with :func:`lr_multiplier`; its state_dict is plain data."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, Schedule.from_solver(cfg.SOLVER))


def gradient_clipper(cfg: "CfgNode") -> Optional[Callable[["torch.optim.Optimizer"], None]]:
    """``clip(optimizer)`` per SOLVER.CLIP_GRADIENTS (detectron2: 'value' or 'norm' per parameter group,
    'full_model' over all parameters together), or None when disabled."""
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not clip.ENABLED:
        return None
    import torch

    value, norm_type, kind = float(clip.CLIP_VALUE), float(clip.NORM_TYPE), clip.CLIP_TYPE
    if kind not in ("value", "norm", "full_model"):
        raise ConfigError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be value, norm or full_model, got {kind!r}")

    def _clip(optimizer: "torch.optim.Optimizer") -> None:
        if kind == "full_model":
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, value, norm_type)
            return
        for group in optimizer.param_groups:
            if kind == "value":
                torch.nn.utils.clip_grad_value_(group["params"], value)
            else:
                torch.nn.utils.clip_grad_norm_(group["params"], value, norm_type)

    return _clip


def describe_schedule(solver: "CfgNode") -> str:
    """BASE_LR, warmup, lr steps and the lr of the last iteration, one line (the plans print it: a warmup longer
    than a shortened run shows as a tiny final lr)."""
    last = float(solver.BASE_LR) * lr_multiplier(solver, int(solver.MAX_ITER) - 1)
    steps = ", ".join(str(s) for s in solver.STEPS if s < solver.MAX_ITER) or "no step"
    return (f"{solver.BASE_LR:g}, warmup {solver.WARMUP_ITERS} iterations, x{solver.GAMMA:g} at {steps}; "
            f"{last:.3g} at the last iteration")
