"""The inference fast path: affine norms folded into the convolution before them, and channels_last activations.

A model in eval mode runs its convolutions with the norm folded in (``w * s``, ``(b - mean) * s + beta``, with
``s = gamma / sqrt(var + eps)``): detectron2's test-time norms (FrozenBN, and BN / SyncBN / naiveSyncBN in eval)
are per-channel affine maps, so the fold changes outputs only by float rounding. Folded weights are cached on
the convolution and rebuilt when any source tensor changes (a new tensor, a moved one, or an in-place update
such as ``load_state_dict`` or an optimizer step, which bump the version counter). In training only frozen
pairs fold: a FrozenBN after a convolution that gets no gradient. Which optimisations are on is a
:class:`FastPath`, one per model (``MaskRCNN.fast_path``), made active for the duration of its forward pass.
"""
from __future__ import annotations

import contextlib
import functools
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator, Optional, cast

import torch
from torch import Tensor, nn

from .norms import FrozenBatchNorm2d

_Signature = tuple[tuple[int, int], ...]


@dataclass
class FastPath:
    """The optimisations a MaskRCNN uses (each can be switched off; training uses only the fold of frozen pairs
    and the per-image RoIAlign threads, neither of which changes its numbers).

    Attributes:
        fold_norms: fold affine norms into the preceding convolution (eval), and frozen FrozenBN pairs (training).
        channels_last: run the convolutions on NHWC activations (oneDNN's and cuDNN's preferred layout).
        fuse_activations: on CPU, compute a convolution's residual sum and ReLU inside it (oneDNN post-ops).
        parallel_roi_align: on CPU, run RoIAlign (torchvision's kernel is single-threaded) on the intra-op
            threads: without gradients its boxes are split in chunks; with gradients (training) each image
            gets a thread, forward and backward, which keeps outputs and gradients bit-identical.
    """

    fold_norms: bool = True
    channels_last: bool = True
    fuse_activations: bool = True
    parallel_roi_align: bool = True

    @contextlib.contextmanager
    def active(self) -> Iterator["FastPath"]:
        """Make these settings the ones that :func:`conv_norm` and the model's layers follow, until exit."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)


_ACTIVE: ContextVar[Optional[FastPath]] = ContextVar("pycontrast_det_fast_path", default=None)


def active_fast_path() -> FastPath:
    """The settings in force: the running model's, else the defaults (everything on)."""
    path = _ACTIVE.get()
    return path if path is not None else FastPath()


def _is_affine(norm: nn.Module) -> bool:
    """Whether ``norm`` is a fixed per-channel affine map now: FrozenBN, or a BatchNorm in eval with statistics."""
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return (isinstance(norm, nn.modules.batchnorm._BatchNorm) and not norm.training
            and norm.running_mean is not None and norm.running_var is not None)


def _foldable(conv: nn.Conv2d, norm: nn.Module) -> bool:
    """Fold only where it cannot change a gradient: eval without gradients to the conv, or a frozen pair."""
    if not _is_affine(norm):
        return False
    if conv.training:
        return isinstance(norm, FrozenBatchNorm2d) and not conv.weight.requires_grad
    return not (torch.is_grad_enabled() and conv.weight.requires_grad)


def _statistics(norm: nn.Module) -> tuple[Tensor, Tensor, float]:
    """(running mean, running variance, eps) of a norm that :func:`_is_affine` accepts."""
    if isinstance(norm, FrozenBatchNorm2d):
        return norm.running_mean, norm.running_var, norm.eps
    assert isinstance(norm, nn.modules.batchnorm._BatchNorm)
    assert norm.running_mean is not None and norm.running_var is not None
    return norm.running_mean, norm.running_var, norm.eps


def _sources(conv: nn.Conv2d, norm: nn.Module) -> list[Optional[Tensor]]:
    weight = getattr(norm, "weight", None)
    bias = getattr(norm, "bias", None)
    mean, var, _ = _statistics(norm)
    return [conv.weight, conv.bias, weight, bias, mean, var]


def _signature(tensors: list[Optional[Tensor]], channels_last: bool) -> Optional[_Signature]:
    """What identifies the source values (address and version of each tensor); None when a tensor has no
    version counter (made under inference_mode), so the fold cannot be cached safely."""
    key = [(int(channels_last), 0)]
    for t in tensors:
        if t is None:
            key.append((0, -1))
            continue
        if t.is_inference():
            return None
        key.append((t.data_ptr(), t._version))
    return tuple(key)


def _affine64(norm: nn.Module) -> tuple[Tensor, Tensor]:
    """(scale, shift) in float64 of an affine norm: ``norm(x) = x * scale + shift`` per channel."""
    mean, var, eps = _statistics(norm)
    weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
    gamma = weight if weight is not None else torch.ones_like(var)
    beta = bias if bias is not None else torch.zeros_like(var)
    scale = gamma.detach().double() / torch.sqrt(var.double() + eps)
    return scale, beta.detach().double() - mean.double() * scale


def foldable_affine(norm: nn.Module) -> bool:
    """Whether the active fast path folds ``norm`` (an affine norm now, with no gradient asked of it)."""
    return (active_fast_path().fold_norms and _is_affine(norm)
            and not (torch.is_grad_enabled() and any(p.requires_grad for p in norm.parameters())))


def affine_of(norm: nn.Module) -> tuple[Tensor, Tensor]:
    """(scale, shift) of an affine norm, in its dtype, for applying it to a (N, C) tensor."""
    with torch.inference_mode(False), torch.no_grad():
        scale, shift = _affine64(norm)
        dtype = _statistics(norm)[1].dtype
        return scale.to(dtype), shift.to(dtype)


def fold(conv: nn.Conv2d, norm: nn.Module, channels_last: bool = False) -> tuple[Tensor, Tensor]:
    """(weight, bias) of one convolution equal to ``norm(conv(x))`` for an affine ``norm`` (computed in float64)."""
    with torch.inference_mode(False), torch.no_grad():
        weight = conv.weight.detach()
        scale, shift = _affine64(norm)
        bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
        new_bias = (shift + bias * scale).to(weight.dtype)
        new_weight = (weight.double() * scale.view(-1, 1, 1, 1)).to(weight.dtype)
        if channels_last:
            new_weight = new_weight.contiguous(memory_format=torch.channels_last)
        return new_weight, new_bias


def _folded(conv: nn.Conv2d, norm: nn.Module, channels_last: bool) -> tuple[Tensor, Tensor]:
    """The fold of (conv, norm), from the cache on ``conv`` (one entry per layout, so that models switching
    layouts do not refold every time) when its sources are unchanged."""
    sources = _sources(conv, norm)
    key = _signature(sources, channels_last)
    cached = conv.__dict__.get("_fold_cache", {}).get(channels_last)
    if key is not None and cached is not None and cached[0] == key:
        return cached[1], cached[2]
    weight, bias = fold(conv, norm, channels_last)
    if key is None:
        conv.__dict__.get("_fold_cache", {}).pop(channels_last, None)
    else:  # the cache holds the sources alive, so that no later tensor can reuse an address it compares against
        conv.__dict__.setdefault("_fold_cache", {})[channels_last] = (key, weight, bias,
                                                                       [t for t in sources if t is not None])
    return weight, bias


def conv_norm(conv: nn.Conv2d, norm: Optional[nn.Module], x: Tensor, relu: bool = False,
              residual: Optional[Tensor] = None) -> Tensor:
    """``norm(conv(x))``, plus ``residual``, then ReLU when ``relu``: with the norm folded into the convolution
    and the sum and ReLU fused into it (oneDNN post-ops on CPU) where the active fast path allows."""
    path = active_fast_path()
    if path.channels_last and not conv.training and not x.is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)  # e.g. RoIAlign's NCHW output entering a head
    weight, bias = conv.weight, conv.bias
    if isinstance(norm, nn.Identity):
        norm = None
    if norm is not None and path.fold_norms and _foldable(conv, norm):
        weight, bias = _folded(conv, norm, path.channels_last and x.is_contiguous(memory_format=torch.channels_last))
        norm = None
    if norm is None and path.fuse_activations and (relu or residual is not None) and _can_fuse(conv, x, weight,
                                                                                               residual):
        return _fused_conv(conv, x, weight, bias, relu, residual)
    y = norm(conv._conv_forward(x, weight, bias)) if norm is not None else conv._conv_forward(x, weight, bias)
    if residual is not None:
        y = y.add_(residual)  # y is this call's own tensor; no backward formula needs it
    return y.relu_() if relu else y


@functools.lru_cache(maxsize=None)
def _onednn_post_ops() -> bool:
    """Whether this torch has oneDNN's fused convolution (sum / ReLU post-ops) and it computes what it should."""
    op = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        with torch.inference_mode():
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(1, 4, 5, 5, generator=gen).contiguous(memory_format=torch.channels_last)
            w = torch.randn(8, 4, 3, 3, generator=gen).contiguous(memory_format=torch.channels_last)
            b, other = torch.randn(8, generator=gen), torch.randn(1, 8, 5, 5, generator=gen)
            other = other.contiguous(memory_format=torch.channels_last)
            expected = (torch.nn.functional.conv2d(x, w, b, padding=1) + other).relu()
            fused = op(x, other, w, b, [1, 1], [1, 1], [1, 1], 1, "add", None, "relu", [None], "")
            relu_only = op(x, w, b, [1, 1], [1, 1], [1, 1], 1, "relu", [None], "")
        return bool(torch.allclose(fused, expected, atol=1e-4) and torch.allclose(
            relu_only, torch.nn.functional.conv2d(x, w, b, padding=1).relu(), atol=1e-4))
    except (RuntimeError, TypeError):
        return False


def _can_fuse(conv: nn.Conv2d, x: Tensor, weight: Tensor, residual: Optional[Tensor]) -> bool:
    """oneDNN's fused convolution applies: CPU float32 NHWC inference, plain zero padding, no autograd or tracing."""
    tensors = [x, weight] + ([residual] if residual is not None else [])
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
            and (residual is None or residual.is_contiguous(memory_format=torch.channels_last))
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
            and not torch.jit.is_tracing() and not torch.is_autocast_enabled("cpu") and _onednn_post_ops())


def _fused_conv(conv: nn.Conv2d, x: Tensor, weight: Tensor, bias: Optional[Tensor], relu: bool,
                residual: Optional[Tensor]) -> Tensor:
    """relu(conv(x) + residual) in one oneDNN call (the sum and the ReLU as post-ops)."""
    args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *args, "relu", [None], "")
    return torch.ops.mkldnn._convolution_pointwise(x, residual, weight, bias, *args, "add", None,
                                                   "relu" if relu else None, [None] if relu else [], "")


def clear_fold_caches(module: nn.Module) -> None:
    """Drop every cached fold inside ``module`` (frees their memory; they are rebuilt on the next use)."""
    for child in module.modules():
        child.__dict__.pop("_fold_cache", None)


class ConvNormAct(nn.Sequential):
    """conv -> optional norm -> optional ReLU, children named ``0``, ``1``, ``2`` as torchvision's
    Conv2dNormActivation names them (same checkpoint keys), run by :func:`conv_norm`."""

    def __init__(self, conv: nn.Conv2d, norm: Optional[nn.Module] = None, relu: bool = False) -> None:
        super().__init__(*[m for m in (conv, norm, nn.ReLU(inplace=True) if relu else None) if m is not None])
        self.has_norm = norm is not None
        self.has_activation = relu

    @classmethod
    def from_block(cls, block: nn.Sequential) -> "ConvNormAct":
        """The same layers as a torchvision ``Conv2dNormActivation`` without activation (conv, optional norm)."""
        layers = list(block)
        if len(layers) > 2 or not isinstance(layers[0], nn.Conv2d):
            raise ValueError(f"expected a convolution and at most a norm, got {block}")
        return cls(layers[0], layers[1] if len(layers) == 2 else None)

    @property
    def conv(self) -> nn.Conv2d:
        """The convolution (child ``0``)."""
        return cast(nn.Conv2d, self[0])  # the constructor puts it first

    def forward(self, x: Tensor) -> Tensor:
        return conv_norm(self.conv, self[1] if self.has_norm else None, x, relu=self.has_activation)

