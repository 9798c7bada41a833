"""Multi-level RoIAlign with detectron2's level assignment (canonical box 224 at level 4)."""
from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from .fuse import active_fast_path

_MIN_ROIS_PER_THREAD = 16  # below this a thread hand-off costs more than the pooling it saves


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

    def _align(self, feature: Tensor, rois: Tensor, scale: float, layout: torch.memory_format) -> Tensor:
        """RoIAlign in float32 (as torchvision's autocast rule does: half-precision box coordinates would be off
        by up to a pixel on 1333-pixel images), back in the feature's dtype, in ``layout``."""
        dtype, feature, rois = feature.dtype, feature.float(), rois.float()
        threads = torch.get_num_threads()
        parallel = (threads > 1 and feature.device.type == "cpu" and not torch.jit.is_tracing()
                    and active_fast_path().parallel_roi_align)
        spans = _image_spans(rois, feature.shape[0]) if parallel and torch.is_grad_enabled() else []
        if parallel and not torch.is_grad_enabled() and len(rois) >= 2 * _MIN_ROIS_PER_THREAD:
            pooled = _parallel_roi_align(feature, rois, min(threads, len(rois) // _MIN_ROIS_PER_THREAD), layout,
                                         self.output_size, scale, self.sampling_ratio, self.aligned)
        elif len(spans) > 1:
            pooled = _RoIAlignByImage.apply(feature, rois, spans, self.output_size, scale, self.sampling_ratio,
                                            self.aligned)
        else:
            pooled = roi_align(feature, rois, self.output_size, scale, self.sampling_ratio, self.aligned)
        return pooled.to(dtype).contiguous(memory_format=layout)

    def forward(self, features: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """(R, C, S, S) pooled features, rows in the order of the concatenated ``boxes``."""
        all_boxes = torch.cat(list(boxes))
        batch_index = torch.cat([torch.zeros_like(b[:, :1]) + i for i, b in enumerate(boxes)]).to(all_boxes.dtype)
        rois = torch.cat([batch_index, all_boxes], dim=1)
        # the heads' convolutions take NHWC on the fast path: write the output in that layout once
        layout = (torch.channels_last if not self.training and active_fast_path().channels_last
                  else torch.contiguous_format)
        if len(features) == 1:
            return self._align(features[0], rois, self.scales[0], layout)
        levels = assign_levels(all_boxes, self.min_level, self.max_level)
        output = None
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            inds = torch.nonzero(levels == level, as_tuple=True)[0]
            pooled = self._align(feature, rois[inds], scale, layout)
            if output is None:
                output = torch.empty((rois.shape[0], feature.shape[1], self.output_size, self.output_size),
                                     dtype=pooled.dtype, device=pooled.device, memory_format=layout).zero_()
            output.index_copy_(0, inds, pooled)  # exports to ONNX for any number of rows (index_put does not)
        assert output is not None  # more than one level
        return output


@functools.lru_cache(maxsize=None)
def _pool(threads: int) -> ThreadPoolExecutor:
    """One long-lived pool per thread count (torch ops release the GIL, so the chunks run side by side)."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pycontrast-roi-align")


def _parallel_roi_align(feature: Tensor, rois: Tensor, threads: int, layout: torch.memory_format,
                        output_size: int, scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
    """torchvision's roi_align on ``threads`` chunks of the boxes at once: the same values as one call.

    The feature map is made NCHW-contiguous once here (the kernel would copy it in every thread); each thread
    writes its rows of the output in ``layout`` (the layout change runs in parallel too) and runs in the
    caller's inference mode (grad and inference modes are thread-local).
    """
    feature = feature.contiguous()
    inference = torch.is_inference_mode_enabled()
    output = torch.empty((len(rois), feature.shape[1], output_size, output_size), dtype=feature.dtype,
                         memory_format=layout)
    bounds = [len(c) for c in rois.chunk(threads)]
    starts = [sum(bounds[:i]) for i in range(len(bounds))]

    def run(start: int, count: int) -> None:
        with torch.inference_mode(inference), torch.no_grad():
            output[start:start + count].copy_(roi_align(feature, rois[start:start + count], output_size, scale,
                                                        sampling_ratio, aligned))

    list(_pool(threads).map(run, starts, bounds))
    return output


def _image_spans(rois: Tensor, images: int) -> list[tuple[int, int, int]]:
    """(image, first row, rows) of each image's boxes when ``rois`` are grouped by image in order, else []."""
    index = rois[:, 0]
    if len(index) == 0 or not bool((index[1:] >= index[:-1]).all()):
        return []
    counts = torch.bincount(index.long(), minlength=images).tolist()
    starts = [sum(counts[:i]) for i in range(len(counts))]
    return [(image, start, count) for image, (start, count) in enumerate(zip(starts, counts)) if count]


def _one_image_rois(rois: Tensor) -> Tensor:
    """``rois`` pointing at image 0 (for a call on one image's feature map)."""
    local = rois.clone()
    local[:, 0] = 0
    return local


class _RoIAlignByImage(torch.autograd.Function):
    """torchvision's RoIAlign with gradients, one thread per image for forward and backward.

    Each image's boxes read and write only that image's feature map, and its boxes keep their order. So the
    outputs and the gradient sums are the single call's bit for bit, and training is unchanged.
    """

    # ``ctx`` is autograd's context object, which takes whatever attributes the forward pass stores on it
    @staticmethod
    def forward(ctx: Any, feature: Tensor, rois: Tensor, spans: list[tuple[int, int, int]], output_size: int,
                scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
        feature = feature.detach().contiguous()
        output = feature.new_empty((len(rois), feature.shape[1], output_size, output_size))

        def run(span: tuple[int, int, int]) -> None:
            image, start, count = span
            with torch.no_grad():  # grad mode is per thread
                output[start:start + count] = torch.ops.torchvision.roi_align(
                    feature[image:image + 1], _one_image_rois(rois[start:start + count]), scale, output_size,
                    output_size, sampling_ratio, aligned)

        list(_pool(min(len(spans), torch.get_num_threads())).map(run, spans))
        ctx.save_for_backward(rois)
        ctx.settings = (feature.shape, spans, output_size, scale, sampling_ratio, aligned)
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Optional[Tensor], ...]:
        (rois,) = ctx.saved_tensors
        shape, spans, output_size, scale, sampling_ratio, aligned = ctx.settings
        grad_output = grad_output.contiguous()
        grad_input = grad_output.new_zeros(shape)

        def run(span: tuple[int, int, int]) -> None:
            image, start, count = span
            with torch.no_grad():
                grad_input[image:image + 1] = torch.ops.torchvision._roi_align_backward(
                    grad_output[start:start + count], _one_image_rois(rois[start:start + count]), scale,
                    output_size, output_size, 1, shape[1], shape[2], shape[3], sampling_ratio, aligned)

        list(_pool(min(len(spans), torch.get_num_threads())).map(run, spans))
        return grad_input, None, None, None, None, None, None
