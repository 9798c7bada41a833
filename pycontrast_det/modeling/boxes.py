"""Box arithmetic shared by the RPN, the ROI heads and postprocessing (detectron2's Box2BoxTransform)."""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import Tensor

SCALE_CLAMP = math.log(1000.0 / 16)
Size = Union[int, Tensor]  # an image dimension: a 0-dim tensor while traced


def decode_boxes(deltas: Tensor, boxes: Tensor, weights: Sequence[float]) -> Tensor:
    """Apply (dx, dy, dw, dh) deltas, (N, 4k), to XYXY boxes (N, 4); float32 result of shape (N, 4k)."""
    deltas = deltas.float()
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=SCALE_CLAMP)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=SCALE_CLAMP)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    x1 = pred_ctr_x - 0.5 * pred_w
    y1 = pred_ctr_y - 0.5 * pred_h
    x2 = pred_ctr_x + 0.5 * pred_w
    y2 = pred_ctr_y + 0.5 * pred_h
    return torch.stack((x1, y1, x2, y2), dim=-1).reshape(deltas.shape)


def size_tensor(value: Size, device: torch.device) -> Tensor:
    """An image dimension as a 0-dim tensor: a traced one as it is (``torch.tensor`` would freeze it)."""
    return value if isinstance(value, Tensor) else torch.tensor(value, device=device)


def clip_boxes(boxes: Tensor, image_size: tuple[Size, Size]) -> Tensor:
    """Clamp XYXY boxes (..., 4) to an (h, w) image: x to [0, w], y to [0, h] (sizes may be traced tensors)."""
    h, w = image_size
    if isinstance(h, Tensor) or isinstance(w, Tensor):
        limits = torch.stack([size_tensor(v, boxes.device) for v in (w, h, w, h)]).to(boxes.dtype)
        return torch.minimum(boxes.clamp(min=0), limits)
    x1 = boxes[..., 0].clamp(min=0, max=w)
    y1 = boxes[..., 1].clamp(min=0, max=h)
    x2 = boxes[..., 2].clamp(min=0, max=w)
    y2 = boxes[..., 3].clamp(min=0, max=h)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def split_like(tensor: Tensor, parts: Sequence[Tensor]) -> list[Tensor]:
    """``tensor``'s rows split into pieces as long as ``parts`` (one part: the tensor itself, so that a traced
    graph holds no fixed row counts)."""
    if len(parts) == 1:
        return [tensor]
    return list(tensor.split([len(p) for p in parts]))


def nonempty(boxes: Tensor, threshold: float = 0.0) -> Tensor:
    """Mask of boxes whose width and height both exceed ``threshold``."""
    return ((boxes[:, 2] - boxes[:, 0]) > threshold) & ((boxes[:, 3] - boxes[:, 1]) > threshold)
