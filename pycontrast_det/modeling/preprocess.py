"""detectron2's test-time resize inside the model: the rule itself (:mod:`pycontrast_det.resize`, shared with the
data mapper) and the same resize in tensor operations, for exported models."""
from __future__ import annotations

import torch
from torch import Tensor

from ..resize import resize_shortest_edge, scaled_size
from .boxes import size_tensor


# The same resize in tensor operations, so that an exported model (traced: sizes are 0-dim tensors, no Python
# branches on values) resizes inside its graph exactly as PIL does. Size arithmetic runs on 1-element tensors:
# the ONNX exporter computes a division of two 0-dim tensors in float32. PIL's bilinear resample (libImaging/Resample.c)
# is separable, horizontal pass first; each pass averages the input pixels under a triangle filter whose support
# widens with the downscale factor, using weights rounded to 22-bit fixed point, and rounds to uint8 in between.
_PRECISION_BITS = 22


def traced_scaled_size(h: Tensor, w: Tensor, short: int, max_size: int) -> tuple[Tensor, Tensor]:
    """:func:`scaled_size` on 0-dim integer tensors (float64 arithmetic, as Python's)."""
    h64, w64 = h.to(torch.float64).reshape(1), w.to(torch.float64).reshape(1)
    short64, max64 = torch.full_like(h64, float(short)), torch.full_like(h64, float(max_size))
    scale = short64 / torch.minimum(h64, w64)  # tensor / tensor: ``number / tensor`` multiplies by a reciprocal
    newh = torch.where(h64 < w64, short64, scale * h64)
    neww = torch.where(h64 < w64, scale * w64, short64)
    rescale = torch.clamp(max64 / torch.maximum(newh, neww), max=1.0)
    newh = torch.where(rescale < 1.0, newh * rescale, newh)
    neww = torch.where(rescale < 1.0, neww * rescale, neww)
    return torch.floor(newh + 0.5).to(torch.int64)[0], torch.floor(neww + 0.5).to(torch.int64)[0]


def _bilinear_taps(in_size: Tensor, out_size: Tensor) -> tuple[Tensor, Tensor]:
    """PIL's precompute_coeffs + normalize_coeffs_8bpc for one axis: per output pixel, the first input index of
    each tap (clamped into the image) and the tap's fixed-point weight (0 beyond the filter's extent)."""
    in64, out64 = in_size.to(torch.float64).reshape(1), out_size.to(torch.float64).reshape(1)
    scale = in64 / out64
    filterscale = torch.clamp(scale, min=1.0)
    support = filterscale  # the bilinear filter's support is 1
    ksize = (torch.ceil(support) * 2 + 1).to(torch.int64)[0]
    # torch.arange takes a 0-dim tensor end (which a trace keeps dynamic); its stubs list only numbers
    center = (torch.arange(out_size, dtype=torch.float64,  # type: ignore[call-overload]
                           device=in_size.device) + 0.5) * scale
    xmin = torch.clamp(torch.floor(center - support + 0.5), min=0)
    xmax = torch.minimum(torch.floor(center + support + 0.5), in64)
    taps = torch.arange(ksize, dtype=torch.float64, device=in_size.device)  # type: ignore[call-overload]
    x = xmin[:, None] + taps[None, :]
    inverse = torch.ones_like(filterscale) / filterscale
    weights = torch.clamp(1.0 - torch.abs((x - center[:, None] + 0.5) * inverse), min=0.0)
    weights = torch.where(x < xmax[:, None], weights, torch.zeros_like(weights))
    total = torch.cumsum(weights, dim=1)[:, -1:]  # PIL sums the taps in order
    weights = weights / torch.where(total == 0, torch.ones_like(total), total)
    fixed = torch.floor(weights * (1 << _PRECISION_BITS) + 0.5)
    index = torch.minimum(x, in64 - 1).to(torch.int64)
    return index, fixed


def _resample_rows(image: Tensor, index: Tensor, fixed: Tensor) -> Tensor:
    """One PIL pass along dim 0 of an (N, M, C) float64 image of integers: fixed-point sum, round, clip to uint8."""
    gathered = image[index]  # (out, taps, M, C)
    acc = (gathered * fixed[:, :, None, None]).sum(dim=1) + (1 << (_PRECISION_BITS - 1))
    return torch.clamp(torch.floor(acc / (1 << _PRECISION_BITS)), 0, 255)


def resize_shortest_edge_tensor(image: Tensor, short: int, max_size: int) -> Tensor:
    """:func:`resize_shortest_edge` for an HWC uint8 tensor, bit-exact with PIL, in traceable tensor operations.

    Returns the resized image as HWC float32 (integer values 0-255).
    """
    h, w = size_tensor(image.shape[0], image.device), size_tensor(image.shape[1], image.device)
    newh, neww = traced_scaled_size(h, w, short, max_size)
    pixels = image.to(torch.float64)
    x_index, x_fixed = _bilinear_taps(w, neww)
    horizontal = _resample_rows(pixels.transpose(0, 1), x_index, x_fixed).transpose(0, 1)  # (H, neww, C)
    y_index, y_fixed = _bilinear_taps(h, newh)
    return _resample_rows(horizontal, y_index, y_fixed).to(torch.float32)


__all__ = ["resize_shortest_edge", "resize_shortest_edge_tensor", "scaled_size", "traced_scaled_size"]
