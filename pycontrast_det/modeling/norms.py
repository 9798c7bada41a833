"""Normalisation layers named as detectron2 configs name them ("", BN, SyncBN, naiveSyncBN, FrozenBN, GN).

At inference BN, SyncBN and naiveSyncBN all act as ``BatchNorm2d(eps=1e-5)`` in eval mode, which is what gives
bit-level parity with detectron2; the variants differ only in how training statistics are gathered.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import ConfigError

NORM_NAMES = ("", "BN", "SyncBN", "naiveSyncBN", "FrozenBN", "GN")


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce_mean(x: Tensor) -> Tensor:
    """Mean over processes with a gradient (the sum of gradients flows back to every process)."""
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(x) / _world_size()


def _synced_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """Batch norm whose batch statistics are averaged over all processes (each process weighs equally)."""
    # both synced norms are built with running statistics, affine parameters and a fixed momentum
    assert bn.running_mean is not None and bn.running_var is not None and bn.num_batches_tracked is not None
    assert bn.momentum is not None
    channels = x.shape[1]
    x32 = x.float()
    mean = x32.mean(dim=(0, 2, 3))
    meansqr = (x32 * x32).mean(dim=(0, 2, 3))
    stats = _all_reduce_mean(torch.cat([mean, meansqr]))
    mean, meansqr = stats[:channels], stats[channels:]
    var = meansqr - mean * mean
    with torch.no_grad():
        bn.running_mean.mul_(1 - bn.momentum).add_(bn.momentum * mean.detach())
        bn.running_var.mul_(1 - bn.momentum).add_(bn.momentum * var.detach())
        bn.num_batches_tracked.add_(1)
    invstd = torch.rsqrt(var + bn.eps)
    scale = bn.weight * invstd
    shift = bn.bias - mean * scale
    return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)


class NaiveSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that all-reduces batch mean and mean-square across processes in training.

    Plain BatchNorm2d when torch.distributed is not initialised (or in eval mode).
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or _world_size() == 1:
            return super().forward(x)
        return _synced_batch_norm(self, x)


class SyncBatchNorm(nn.SyncBatchNorm):
    """torch's SyncBatchNorm, falling back to the all-reduce path on CPU (which torch's kernel refuses)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and _world_size() > 1 and x.device.type == "cpu":
            return _synced_batch_norm(self, x)
        return super().forward(x)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (detectron2's FrozenBN; eps 1e-5).

    Buffers only (no gradients); loads checkpoints that carry ``num_batches_tracked`` by ignoring it.
    """

    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Return ``module`` with every BatchNorm inside replaced by a FrozenBatchNorm2d holding its values."""
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            frozen = cls(module.num_features, module.eps)
            if module.affine:
                frozen.weight.copy_(module.weight.detach())
                frozen.bias.copy_(module.bias.detach())
            if module.running_mean is not None and module.running_var is not None:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            new = cls.convert(child)
            if new is not child:
                setattr(module, name, new)
        return module


_FACTORIES: dict[str, Callable[[int], nn.Module]] = {
    "BN": nn.BatchNorm2d,
    "SyncBN": SyncBatchNorm,
    "naiveSyncBN": NaiveSyncBatchNorm,
    "FrozenBN": FrozenBatchNorm2d,
    "GN": lambda channels: nn.GroupNorm(32, channels),
}


def check_norm(name: str, key: str) -> None:
    """Raise ConfigError naming ``key`` when ``name`` is not a supported norm."""
    if name not in NORM_NAMES:
        raise ConfigError(f"{key} = {name!r} is not supported; use one of {list(NORM_NAMES)}")


def get_norm(name: str, channels: int) -> nn.Module | None:
    """The norm layer for ``channels`` channels, or None for "" (no norm; the conv then has a bias)."""
    check_norm(name, "norm")
    if not name:
        return None
    return _FACTORIES[name](channels)
