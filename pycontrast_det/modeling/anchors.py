"""detectron2's DefaultAnchorGenerator: unrounded base anchors, size-major order, fixed per-level strides."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """Anchors centred on (0, 0), XYXY, for size in sizes, for ratio in ratios: w = sqrt(s^2/a), h = a*w."""
    anchors = []
    for size in sizes:
        area = size ** 2.0
        for ratio in aspect_ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors)


class AnchorGenerator(nn.Module):
    """Anchors per feature level, each level in (H, W, anchor) order, with detectron2's grid offsets."""

    def __init__(self, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
                 strides: Sequence[int], offset: float) -> None:
        super().__init__()
        num_levels = len(strides)
        if len(sizes) == 1:
            sizes = list(sizes) * num_levels
        if len(aspect_ratios) == 1:
            aspect_ratios = list(aspect_ratios) * num_levels
        self.strides = list(strides)
        self.offset = offset
        self.cells = [cell_anchors(s, a) for s, a in zip(sizes, aspect_ratios)]

    @property
    def num_anchors(self) -> int:
        """Anchors per location (the same at every level, as the shared RPN head requires)."""
        return len(self.cells[0])

    def forward(self, feature_sizes: Sequence[tuple[int, int]], device: torch.device) -> list[Tensor]:
        """One (H*W*A, 4) tensor per level for features of the given (H, W) sizes."""
        out = []
        for (height, width), stride, cell in zip(feature_sizes, self.strides, self.cells):
            shifts_x = torch.arange(self.offset * stride, width * stride, step=stride, dtype=torch.float32,
                                    device=device)
            shifts_y = torch.arange(self.offset * stride, height * stride, step=stride, dtype=torch.float32,
                                    device=device)
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            out.append((shifts.view(-1, 1, 4) + cell.to(device).view(1, -1, 4)).reshape(-1, 4))
        return out
