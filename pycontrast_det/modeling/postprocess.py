"""Turning head outputs into detections: detectron2's per-class NMS, rescale to the original size, mask paste."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms

from .boxes import Size, clip_boxes, decode_boxes, nonempty, size_tensor, split_like


@dataclass
class Detections:
    """One image's detections: XYXY boxes, scores, 0-based classes, optional (N, 1, S, S) mask probabilities."""

    boxes: Tensor
    scores: Tensor
    classes: Tensor
    mask_probs: Tensor | None = None

    def select(self, keep: Tensor) -> "Detections":
        """The detections at ``keep`` (indices or a boolean mask)."""
        probs = None if self.mask_probs is None else self.mask_probs[keep]
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep], probs)


def fast_rcnn_inference(class_logits: Tensor, box_deltas: Tensor, proposal_boxes: Sequence[Tensor],
                        image_sizes: Sequence[tuple[int, int]], box_weights: Sequence[float], score_thresh: float,
                        nms_thresh: float, topk: int) -> list[Detections]:
    """Softmax (background last), class-specific decode, clip, score threshold, per-class NMS, top-k.

    No minimum box size (unlike torchvision); boxes are in resized-image coordinates.
    """
    boxes_all = split_like(decode_boxes(box_deltas, torch.cat(list(proposal_boxes)), box_weights), proposal_boxes)
    probs_all = split_like(F.softmax(class_logits.float(), dim=-1), proposal_boxes)
    results = []
    for boxes, scores, image_size in zip(boxes_all, probs_all, image_sizes):
        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
        if torch.jit.is_tracing() or not bool(valid.all()):  # a trace keeps the filter for every input
            boxes, scores = boxes[valid], scores[valid]
        scores = scores[:, :-1]
        boxes = clip_boxes(boxes.reshape(-1, 4), image_size).view(-1, scores.shape[1], 4)
        keep_mask = scores > score_thresh
        inds = keep_mask.nonzero()
        boxes, scores = boxes[keep_mask], scores[keep_mask]
        keep = batched_nms(boxes, scores, inds[:, 1], nms_thresh)
        if topk >= 0:
            keep = keep[:topk]
        results.append(Detections(boxes[keep], scores[keep], inds[keep, 1]))
    return results


def mask_probabilities(mask_logits: Tensor, classes: Tensor) -> Tensor:
    """Sigmoid of each detection's own-class mask channel, (N, 1, S, S) float32 (masks are class-specific)."""
    size = mask_logits.shape[-2:]
    index = classes.view(-1, 1, 1, 1).expand(-1, 1, size[0], size[1])
    return mask_logits.gather(1, index).float().sigmoid()


def paste_masks(probs: Tensor, boxes: Tensor, height: int, width: int, threshold: float = 0.5) -> Tensor:
    """Paste (N, 1, S, S) probabilities into (N, height, width) bool masks at float XYXY ``boxes``.

    Bilinear grid_sample (zeros padding, align_corners False) at pixel centres, then ``>= threshold``;
    each mask is computed only inside its box (plus one pixel), which is where it can be non-zero.
    """
    masks = torch.zeros((len(probs), height, width), dtype=torch.bool, device=probs.device)
    boxes = boxes.float()
    for i in range(len(probs)):
        box = boxes[i]
        x0_int = int(torch.clamp(box[0].floor() - 1, min=0))
        y0_int = int(torch.clamp(box[1].floor() - 1, min=0))
        x1_int = int(torch.clamp(box[2].ceil() + 1, max=width))
        y1_int = int(torch.clamp(box[3].ceil() + 1, max=height))
        img_y = torch.arange(y0_int, y1_int, device=boxes.device, dtype=torch.float32) + 0.5
        img_x = torch.arange(x0_int, x1_int, device=boxes.device, dtype=torch.float32) + 0.5
        img_y = (img_y - box[1]) / (box[3] - box[1]) * 2 - 1
        img_x = (img_x - box[0]) / (box[2] - box[0]) * 2 - 1
        gx = img_x[None, :].expand(len(img_y), len(img_x))
        gy = img_y[:, None].expand(len(img_y), len(img_x))
        grid = torch.stack([gx, gy], dim=2)[None]
        pasted = F.grid_sample(probs[i:i + 1].float(), grid, align_corners=False)[0, 0]
        masks[i, y0_int:y1_int, x0_int:x1_int] = pasted >= threshold
    return masks


def _sampling_matrix(lo: Tensor, hi: Tensor, size: Size, resolution: int) -> Tensor:
    """(N, size, resolution) bilinear weights of grid_sample (align_corners False, zeros padding) along one axis,
    sampling each box's [lo, hi] span of a ``resolution``-cell map at the pixel centres 0.5 .. size - 0.5."""
    # torch.arange takes a 0-dim tensor end (which a trace keeps dynamic); its stubs list only numbers
    centres = torch.arange(size, device=lo.device, dtype=torch.float32) + 0.5  # type: ignore[arg-type]
    grid = (centres[None, :] - lo[:, None]) / (hi - lo)[:, None] * 2 - 1
    source = ((grid + 1) * resolution - 1) / 2  # grid_sampler_compute_source_index
    first = torch.floor(source)
    frac = source - first
    cells = torch.arange(resolution, device=lo.device, dtype=torch.float32)
    zero = torch.zeros((), device=lo.device)
    return (torch.where(cells == first[..., None], 1 - frac[..., None], zero)
            + torch.where(cells == first[..., None] + 1, frac[..., None], zero))


def paste_masks_dense(probs: Tensor, boxes: Tensor, height: Size, width: Size, threshold: float = 0.5,
                      max_elements: int = 1 << 28) -> Tensor:
    """:func:`paste_masks` without a per-box loop: bilinear sampling is separable, so each mask is
    ``Wy @ probs @ Wx^T`` over the whole image (batched matrix products: one kernel on a GPU, and traceable).

    ``max_elements`` bounds the float intermediate per chunk of boxes (eager only; a trace is one chunk).
    """
    boxes, probs = boxes.float(), probs[:, 0].float()
    if torch.jit.is_tracing():
        return _paste_dense(probs, boxes, height, width, threshold)
    chunk = max(1, max_elements // max(1, height * width))
    if len(probs) <= chunk:
        return _paste_dense(probs, boxes, height, width, threshold)
    return torch.cat([_paste_dense(probs[i:i + chunk], boxes[i:i + chunk], height, width, threshold)
                      for i in range(0, len(probs), chunk)])


def _paste_dense(probs: Tensor, boxes: Tensor, height: Size, width: Size, threshold: float) -> Tensor:
    rows = _sampling_matrix(boxes[:, 1], boxes[:, 3], height, probs.shape[-2])
    cols = _sampling_matrix(boxes[:, 0], boxes[:, 2], width, probs.shape[-1])
    return torch.bmm(torch.bmm(rows, probs), cols.transpose(1, 2)) >= threshold


def _box_scales(height: Size, width: Size, image_size: tuple[int, int], like: Tensor) -> Tensor:
    """(sx, sy, sx, sy): output over resized size per axis, ratios rounded from float64 to the boxes' dtype (what a
    Python-float multiply does); sizes may be traced tensors."""
    pairs = ((width, image_size[1]), (height, image_size[0]))
    if not any(isinstance(v, Tensor) for pair in pairs for v in pair):
        sx, sy = (out / size for out, size in pairs)
        return like.new_tensor([sx, sy, sx, sy])
    sx, sy = (size_tensor(out, like.device).double().reshape(1) / size_tensor(size, like.device).double().reshape(1)
              for out, size in pairs)  # 1-element tensors: the ONNX exporter divides 0-dim ones in float32
    return torch.cat([sx, sy, sx, sy]).to(like.dtype)


def rescale(det: Detections, image_size: tuple[int, int], height: Size, width: Size,
            mask_threshold: float = 0.5) -> dict[str, Tensor]:
    """detectron2's detector_postprocess: boxes from the resized ``image_size`` to (height, width), clipped,
    empty boxes dropped, masks pasted; returns the model's eval-mode output dict."""
    boxes = clip_boxes(det.boxes * _box_scales(height, width, image_size, det.boxes), (height, width))
    keep = nonempty(boxes)
    det = Detections(boxes, det.scores, det.classes, det.mask_probs).select(keep)
    out = {"boxes": det.boxes, "scores": det.scores, "classes": det.classes}
    if det.mask_probs is not None:
        dense = torch.jit.is_tracing() or det.mask_probs.device.type != "cpu"  # the loop suits the CPU only
        if dense:
            out["masks"] = paste_masks_dense(det.mask_probs, det.boxes, height, width, mask_threshold)
        else:  # eager: the sizes are ints
            out["masks"] = paste_masks(det.mask_probs, det.boxes, int(height), int(width), mask_threshold)
    return out
