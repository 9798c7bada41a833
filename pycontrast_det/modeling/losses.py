"""detectron2's Mask R-CNN training targets and losses: matching, balanced sampling, RPN, box and mask losses.

Semantics follow detectron2 (Matcher, subsample_labels, RPN.losses, label_and_sample_proposals,
FastRCNNOutputLayers.losses, mask_rcnn_loss) so that training reproduces its numbers, not torchvision's.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import (
    box_iou,
    complete_box_iou_loss,
    distance_box_iou_loss,
    generalized_box_iou_loss,
    roi_align,
)

from ..errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from ..config import CfgNode

__all__ = ["SampledRois", "rpn_losses", "sample_proposals", "fast_rcnn_losses", "mask_rcnn_loss"]

_SCALE_CLAMP = math.log(1000.0 / 16)  # detectron2's _DEFAULT_SCALE_CLAMP for decoding
_IOU_LOSSES = {"giou": generalized_box_iou_loss, "diou": distance_box_iou_loss, "ciou": complete_box_iou_loss}


@dataclass
class SampledRois:
    """One image's sampled RoIs and their training targets (detectron2's proposals with gt_* fields)."""

    boxes: Tensor  # [R, 4] XYXY, detached
    gt_classes: Tensor  # [R] int64, num_classes for background
    gt_boxes: Tensor  # [R, 4] matched gt box; the RoI itself for background (never regressed)
    gt_index: Tensor  # [R] int64, index of the matched target instance, -1 for background

    def foreground(self) -> SampledRois:
        """The foreground rows only, in order (what the mask head trains on)."""
        keep = self.gt_index >= 0
        return SampledRois(self.boxes[keep], self.gt_classes[keep], self.gt_boxes[keep], self.gt_index[keep])


class _Matcher:
    """Assigns each prediction its best ground truth and a label from IoU bands (detectron2's Matcher)."""

    def __init__(self, thresholds: Sequence[float], labels: Sequence[int], allow_low_quality_matches: bool,
                 key: str) -> None:
        thresholds = [float(t) for t in thresholds]
        labels = [int(lab) for lab in labels]
        if len(labels) != len(thresholds) + 1 or any(lab not in (-1, 0, 1) for lab in labels):
            raise ConfigError(f"{key}.IOU_LABELS {labels} must have one more entry than IOU_THRESHOLDS "
                              f"{thresholds}, each -1, 0 or 1")
        if thresholds != sorted(thresholds) or (thresholds and thresholds[0] <= 0):
            raise ConfigError(f"{key}.IOU_THRESHOLDS {thresholds} must be positive and ascending")
        self.bounds = [-math.inf, *thresholds, math.inf]
        self.labels = labels
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, quality: Tensor) -> tuple[Tensor, Tensor]:
        """quality [M gt, N pred] -> (matched gt index [N] int64, label [N] int8 in {-1, 0, 1})."""
        num_pred = quality.shape[1]
        if quality.numel() == 0:  # no gt (or no predictions): everything takes the first band's label
            return (torch.zeros(num_pred, dtype=torch.int64, device=quality.device),
                    torch.full((num_pred,), self.labels[0], dtype=torch.int8, device=quality.device))
        best, matches = quality.max(dim=0)
        labels = torch.ones(num_pred, dtype=torch.int8, device=quality.device)
        for label, low, high in zip(self.labels, self.bounds[:-1], self.bounds[1:]):
            labels[(best >= low) & (best < high)] = label
        if self.allow_low_quality_matches:
            # every prediction tied for a gt's highest IoU becomes positive, keeping its own argmax match
            best_per_gt = quality.max(dim=1).values
            labels[torch.nonzero(quality == best_per_gt[:, None], as_tuple=True)[1]] = 1
        return matches, labels


def _subsample_labels(labels: Tensor, num_samples: int, positive_fraction: float, bg_label: int
                      ) -> tuple[Tensor, Tensor]:
    """Random positive and negative indices, at most num_samples * positive_fraction positives, negatives fill
    the rest (detectron2's subsample_labels; labels -1 are ignored)."""
    positive = torch.nonzero((labels != -1) & (labels != bg_label), as_tuple=True)[0]
    negative = torch.nonzero(labels == bg_label, as_tuple=True)[0]
    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)
    pos_idx = positive[torch.randperm(positive.numel(), device=positive.device)[:num_pos]]
    neg_idx = negative[torch.randperm(negative.numel(), device=negative.device)[:num_neg]]
    return pos_idx, neg_idx


def _pairwise_iou(gt: Tensor, boxes: Tensor) -> Tensor:
    """IoU [M, N]; 0 where both boxes are empty (detectron2's pairwise_iou never yields NaN)."""
    return torch.nan_to_num(box_iou(gt, boxes), nan=0.0)


def _smooth_l1(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """Element-wise smooth-L1; plain L1 when beta < 1e-5 (fvcore's rule, which detectron2 uses)."""
    if beta < 1e-5:
        return (pred - target).abs()
    return F.smooth_l1_loss(pred, target, beta=beta, reduction="none")


def _box_regression_loss(src_boxes: Tensor, pred_deltas: Tensor, gt_boxes: Tensor, weights: Sequence[float],
                         loss_type: str, beta: float, key: str) -> Tensor:
    """Summed regression loss of pred_deltas [N, 4] relative to src_boxes [N, 4] towards gt_boxes [N, 4]."""
    coder = BoxCoder(tuple(float(w) for w in weights), bbox_xform_clip=_SCALE_CLAMP)
    if loss_type == "smooth_l1":
        return _smooth_l1(pred_deltas, coder.encode_single(gt_boxes, src_boxes), beta).sum()
    if loss_type in _IOU_LOSSES:
        return _IOU_LOSSES[loss_type](coder.decode_single(pred_deltas, src_boxes), gt_boxes, reduction="sum")
    raise ConfigError(f"{key}.BBOX_REG_LOSS_TYPE {loss_type!r} is not supported; use smooth_l1, giou, diou "
                      "or ciou")


def rpn_losses(anchors: Tensor, pred_logits: Tensor, pred_deltas: Tensor, gt_boxes: Sequence[Tensor],
               image_sizes: Sequence[tuple[int, int]], cfg: CfgNode) -> dict[str, Tensor]:
    """RPN objectness and box losses (detectron2 RPN.losses): anchors [A, 4] in the predictions' order,
    pred_logits [B, A], pred_deltas [B, A, 4], one gt box tensor [Mi, 4] and (h, w) per image."""
    rpn = cfg.MODEL.RPN
    num_images = pred_logits.shape[0]
    if not (len(gt_boxes) == len(image_sizes) == num_images) or pred_deltas.shape[:2] != pred_logits.shape:
        raise ValueError(f"rpn_losses: {num_images} images of logits {tuple(pred_logits.shape)}, deltas "
                         f"{tuple(pred_deltas.shape)}, {len(gt_boxes)} gt box sets, {len(image_sizes)} sizes")
    anchors = anchors.detach().to(torch.float32)
    matcher = _Matcher(rpn.IOU_THRESHOLDS, rpn.IOU_LABELS, allow_low_quality_matches=True, key="MODEL.RPN")
    boundary = rpn.BOUNDARY_THRESH
    labels, matched_boxes = [], []
    with torch.no_grad():
        for gt, (height, width) in zip(gt_boxes, image_sizes):
            gt = gt.to(anchors.device, torch.float32)
            matches, image_labels = matcher(_pairwise_iou(gt, anchors))
            if boundary >= 0:  # anchors reaching too far outside the image are ignored
                inside = ((anchors[:, 0] >= -boundary) & (anchors[:, 1] >= -boundary)
                          & (anchors[:, 2] < width + boundary) & (anchors[:, 3] < height + boundary))
                image_labels[~inside] = -1
            pos_idx, neg_idx = _subsample_labels(image_labels, rpn.BATCH_SIZE_PER_IMAGE, rpn.POSITIVE_FRACTION, 0)
            image_labels = torch.full_like(image_labels, -1)
            image_labels[pos_idx] = 1
            image_labels[neg_idx] = 0
            labels.append(image_labels)
            matched_boxes.append(gt[matches] if len(gt) else torch.zeros_like(anchors))
    labels_t = torch.stack(labels)
    positive = labels_t == 1
    valid = labels_t >= 0
    loc = _box_regression_loss(anchors.expand(num_images, -1, -1)[positive], pred_deltas.float()[positive],
                               torch.stack(matched_boxes)[positive], rpn.BBOX_REG_WEIGHTS,
                               rpn.BBOX_REG_LOSS_TYPE, rpn.SMOOTH_L1_BETA, key="MODEL.RPN")
    objectness = F.binary_cross_entropy_with_logits(pred_logits.float()[valid], labels_t[valid].float(),
                                                    reduction="sum")
    normalizer = rpn.BATCH_SIZE_PER_IMAGE * num_images
    weight = rpn.LOSS_WEIGHT
    return {"loss_rpn_cls": objectness / normalizer * weight,
            "loss_rpn_loc": loc / normalizer * (weight * rpn.get("BBOX_REG_LOSS_WEIGHT", 1.0))}


def sample_proposals(proposals: Sequence[Tensor], targets: Sequence[Mapping[str, Any]], num_classes: int,
                     cfg: CfgNode) -> list[SampledRois]:
    """Label and sample RoIs per image (detectron2 label_and_sample_proposals): gt boxes appended when
    ROI_HEADS.PROPOSAL_APPEND_GT, IoU matching, BATCH_SIZE_PER_IMAGE at POSITIVE_FRACTION, fg first."""
    heads = cfg.MODEL.ROI_HEADS
    matcher = _Matcher(heads.IOU_THRESHOLDS, heads.IOU_LABELS, allow_low_quality_matches=False,
                       key="MODEL.ROI_HEADS")
    sampled = []
    with torch.no_grad():
        for boxes, target in zip(proposals, targets):
            boxes = boxes.detach().to(torch.float32)
            gt = target["boxes"].to(boxes.device, torch.float32)
            gt_classes = target["classes"].to(boxes.device, torch.int64)
            if heads.PROPOSAL_APPEND_GT:
                boxes = torch.cat([boxes, gt])
            matches, match_labels = matcher(_pairwise_iou(gt, boxes))
            if len(gt):
                classes = gt_classes[matches]
                classes[match_labels == 0] = num_classes
                classes[match_labels == -1] = -1
            else:
                classes = torch.full_like(matches, num_classes)
            fg_idx, bg_idx = _subsample_labels(classes, heads.BATCH_SIZE_PER_IMAGE, heads.POSITIVE_FRACTION,
                                               num_classes)
            keep = torch.cat([fg_idx, bg_idx])
            rois = boxes[keep]
            gt_index = torch.cat([matches[fg_idx], torch.full_like(bg_idx, -1)])
            gt_boxes = torch.cat([gt[matches[fg_idx]], rois[len(fg_idx):]])
            sampled.append(SampledRois(rois, classes[keep], gt_boxes, gt_index))
    return sampled


def fast_rcnn_losses(class_logits: Tensor, box_deltas: Tensor, sampled: Sequence[SampledRois], cfg: CfgNode
                     ) -> dict[str, Tensor]:
    """Box head losses (detectron2 FastRCNNOutputLayers.losses): cross-entropy mean over sampled RoIs, box
    regression of the gt class's deltas on foreground, summed and divided by the number of sampled RoIs."""
    head = cfg.MODEL.ROI_BOX_HEAD
    for key in ("USE_SIGMOID_CE", "USE_FED_LOSS"):
        if head.get(key, False):
            raise ConfigError(f"MODEL.ROI_BOX_HEAD.{key} True is not supported; set it to False")
    device = class_logits.device
    gt_classes = torch.cat([s.gt_classes for s in sampled]).to(device)
    rois = torch.cat([s.boxes for s in sampled]).to(device, torch.float32)
    gt_boxes = torch.cat([s.gt_boxes for s in sampled]).to(device, torch.float32)
    num_classes = class_logits.shape[1] - 1
    if len(gt_classes) != len(class_logits) or len(box_deltas) != len(class_logits):
        raise ValueError(f"fast_rcnn_losses: {len(class_logits)} class rows, {len(box_deltas)} delta rows, "
                         f"{len(gt_classes)} sampled RoIs")
    if gt_classes.numel():
        loss_cls = F.cross_entropy(class_logits.float(), gt_classes, reduction="mean")
    else:
        loss_cls = class_logits.sum() * 0.0
    fg = torch.nonzero((gt_classes >= 0) & (gt_classes < num_classes), as_tuple=True)[0]
    deltas = box_deltas.float()
    if deltas.shape[1] == 4:  # class-agnostic regression
        fg_deltas = deltas[fg]
    else:
        fg_deltas = deltas.reshape(len(deltas), num_classes, 4)[fg, gt_classes[fg]]
    loss_box = _box_regression_loss(rois[fg], fg_deltas, gt_boxes[fg], head.BBOX_REG_WEIGHTS,
                                    head.BBOX_REG_LOSS_TYPE, head.SMOOTH_L1_BETA, key="MODEL.ROI_BOX_HEAD")
    loss_box = loss_box / max(gt_classes.numel(), 1) * head.get("BBOX_REG_LOSS_WEIGHT", 1.0)
    return {"loss_cls": loss_cls, "loss_box_reg": loss_box}


def _rasterize_polygons_within_box(polygons: Sequence[Sequence[float]], box: np.ndarray, size: int
                                   ) -> np.ndarray:
    """Binary [size, size] mask of an instance's polygons cropped to box (float32 XYXY) and scaled to the
    grid (detectron2's rasterize_polygons_within_box)."""
    if len(polygons) == 0:
        return np.zeros((size, size), dtype=bool)
    ratio_w = size / max(box[2] - box[0], 0.1)
    ratio_h = size / max(box[3] - box[1], 0.1)
    scaled = []
    for polygon in polygons:
        p = np.array(polygon, dtype=np.float64)
        p[0::2] = (p[0::2] - box[0]) * ratio_w
        p[1::2] = (p[1::2] - box[1]) * ratio_h
        scaled.append(p)
    rle = mask_utils.merge(mask_utils.frPyObjects(scaled, size, size))
    return mask_utils.decode(rle).astype(bool)


def _mask_targets(masks: Tensor | Sequence[Sequence[Sequence[float]]], rois: Tensor, gt_index: Tensor,
                  size: int, image: int) -> Tensor:
    """Bool [R, size, size] targets of each RoI's matched instance: polygons rasterised in the box, or a
    bitmask [M, H, W] resampled with RoIAlign (aligned, threshold 0.5) as detectron2's BitMasks do."""
    if isinstance(masks, Tensor):
        bitmasks = masks.to(rois.device, torch.float32)[:, None]
        batch_rois = torch.cat([gt_index.to(rois.device, torch.float32)[:, None], rois.float()], dim=1)
        resampled = roi_align(bitmasks, batch_rois, (size, size), spatial_scale=1.0, sampling_ratio=0,
                              aligned=True)
        return resampled[:, 0] >= 0.5
    boxes = rois.detach().to("cpu", torch.float32).numpy()
    out = []
    for box, index in zip(boxes, gt_index.tolist()):
        polygons = masks[index]
        if any(len(p) < 6 or len(p) % 2 for p in polygons):
            raise DatasetError(f"image {image}, instance {index}: each polygon needs an even number (>= 6) of "
                               "coordinates x0,y0,x1,y1,...; drop degenerate polygons when loading annotations")
        out.append(torch.from_numpy(_rasterize_polygons_within_box(polygons, box, size)))
    return torch.stack(out)


def mask_rcnn_loss(mask_logits: Tensor, sampled_fg: Sequence[SampledRois], targets: Sequence[Mapping[str, Any]],
                   cfg: CfgNode) -> dict[str, Tensor]:
    """Mask loss (detectron2 mask_rcnn_loss): BCE-with-logits mean of the gt class's channel (or the single
    class-agnostic one) of mask_logits [Rfg, K, S, S] against binary targets of the matched instances."""
    size = mask_logits.shape[-1]
    if mask_logits.shape[-2] != size:
        raise ValueError(f"mask_rcnn_loss: mask logits must be square, got {tuple(mask_logits.shape)}")
    num_rows = sum(len(s.boxes) for s in sampled_fg)
    if num_rows != len(mask_logits):
        raise ValueError(f"mask_rcnn_loss: {len(mask_logits)} mask logit rows for {num_rows} foreground RoIs")
    if num_rows == 0:
        return {"loss_mask": mask_logits.sum() * 0.0}
    gt_masks = torch.cat([_mask_targets(t["masks"], s.boxes, s.gt_index, size, i)
                          for i, (s, t) in enumerate(zip(sampled_fg, targets)) if len(s.boxes)])
    agnostic = bool(cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK)
    if agnostic != (mask_logits.shape[1] == 1):
        raise ValueError(f"mask_rcnn_loss: MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK is {agnostic} but the mask "
                         f"logits have {mask_logits.shape[1]} channels")
    logits = mask_logits.float()
    if agnostic:
        logits = logits[:, 0]
    else:
        classes = torch.cat([s.gt_classes for s in sampled_fg]).to(logits.device)
        logits = logits[torch.arange(len(logits), device=logits.device), classes]
    loss = F.binary_cross_entropy_with_logits(logits, gt_masks.to(logits.device, torch.float32), reduction="mean")
    return {"loss_mask": loss}
