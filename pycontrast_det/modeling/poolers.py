"""Multi-level RoIAlign with detectron2's level assignment (canonical box 224 at level 4)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from .fuse import active_fast_path


def assign_levels(boxes: Tensor, min_level: int, max_level: int, canonical_size: float = 224.0,
                  canonical_level: int = 4) -> Tensor:
    """Index (0-based from ``min_level``) of the pyramid level each XYXY box is pooled from."""
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_size + 1e-8))
    return torch.clamp(levels, min=min_level, max=max_level).to(torch.int64) - min_level


class ROIPooler(nn.Module):
    """RoIAlign of boxes (one list per image) from feature maps of the given strides."""

    def __init__(self, output_size: int, strides: Sequence[int], sampling_ratio: int, aligned: bool) -> None:
        super().__init__()
        self.output_size = output_size
        self.scales = [1.0 / s for s in strides]
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.min_level = int(round(math.log2(strides[0])))
        self.max_level = int(round(math.log2(strides[-1])))

    def _align(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        # in float32 (as torchvision's autocast rule does): half-precision box coordinates would be off by
        # up to a pixel on 1333-pixel images
        return roi_align(feature.float(), rois.float(), self.output_size, scale, self.sampling_ratio,
                         self.aligned).to(feature.dtype)

    def forward(self, features: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """(R, C, S, S) pooled features, rows in the order of the concatenated ``boxes``."""
        all_boxes = torch.cat(list(boxes))
        batch_index = torch.cat([torch.zeros_like(b[:, :1]) + i for i, b in enumerate(boxes)]).to(all_boxes.dtype)
        rois = torch.cat([batch_index, all_boxes], dim=1)
        # the heads' convolutions take NHWC on the fast path: write the output in that layout once
        layout = (torch.channels_last if not self.training and active_fast_path().channels_last
                  else torch.contiguous_format)
        if len(features) == 1:
            return self._align(features[0], rois, self.scales[0]).contiguous(memory_format=layout)
        levels = assign_levels(all_boxes, self.min_level, self.max_level)
        output = None
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            inds = torch.nonzero(levels == level, as_tuple=True)[0]
            pooled = self._align(feature, rois[inds], scale)
            if output is None:
                output = torch.empty((rois.shape[0], feature.shape[1], self.output_size, self.output_size),
                                     dtype=pooled.dtype, device=pooled.device, memory_format=layout).zero_()
            output.index_copy_(0, inds, pooled)  # exports to ONNX for any number of rows (index_put does not)
        return output
