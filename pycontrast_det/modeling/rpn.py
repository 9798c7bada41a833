"""Region proposal network with detectron2's proposal selection (top-k per level on logits, NMS on logits)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms
from torchvision.models.detection.rpn import RPNHead

from .anchors import AnchorGenerator
from .boxes import clip_boxes, decode_boxes, nonempty

if TYPE_CHECKING:
    from ..config import CfgNode


@dataclass
class Proposals:
    """One image's proposals: XYXY boxes in resized-image coordinates and their objectness logits."""

    boxes: Tensor
    logits: Tensor


class RPN(nn.Module):
    """Shared 3x3 conv head over the given feature levels, detectron2 anchors, decoding and top-k/NMS."""

    def __init__(self, cfg: CfgNode, in_channels: int, strides: dict[str, int]) -> None:
        super().__init__()
        rpn = cfg.MODEL.RPN
        self.in_features = list(rpn.IN_FEATURES)
        self.anchor_generator = AnchorGenerator(
            cfg.MODEL.ANCHOR_GENERATOR.SIZES, cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS,
            [strides[f] for f in self.in_features], cfg.MODEL.ANCHOR_GENERATOR.OFFSET)
        self.head = RPNHead(in_channels, self.anchor_generator.num_anchors, conv_depth=1)
        self.box_weights = tuple(rpn.BBOX_REG_WEIGHTS)
        self.nms_thresh = rpn.NMS_THRESH
        self.min_box_size = cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE
        self.pre_nms_topk = {True: rpn.PRE_NMS_TOPK_TRAIN, False: rpn.PRE_NMS_TOPK_TEST}
        self.post_nms_topk = {True: rpn.POST_NMS_TOPK_TRAIN, False: rpn.POST_NMS_TOPK_TEST}
        self.cfg = cfg

    def forward(self, features: dict[str, Tensor], image_sizes: list[tuple[int, int]],
                gt_boxes: list[Tensor] | None = None) -> tuple[list[Proposals], dict[str, Tensor]]:
        """Proposals per image; in training also the RPN losses (``gt_boxes`` in resized coordinates)."""
        maps = [features[f] for f in self.in_features]
        anchors = self.anchor_generator([m.shape[-2:] for m in maps], maps[0].device)
        logit_maps, delta_maps = self.head(maps)
        num_images = maps[0].shape[0]
        # (N, A, H, W) -> (N, H*W*A); (N, 4A, H, W) -> (N, H*W*A, 4): the anchors' (H, W, A) order
        logits = [x.permute(0, 2, 3, 1).flatten(1) for x in logit_maps]
        deltas = [x.view(num_images, -1, 4, x.shape[-2], x.shape[-1]).permute(0, 3, 4, 1, 2).flatten(1, -2)
                  for x in delta_maps]
        with torch.no_grad():
            boxes = [decode_boxes(d.reshape(-1, 4), a.repeat(num_images, 1), self.box_weights)
                     .view(num_images, -1, 4) for d, a in zip(deltas, anchors)]
            proposals = self._select([x.detach().float() for x in logits], boxes, image_sizes)
        losses: dict[str, Tensor] = {}
        if self.training:
            from .losses import rpn_losses  # training only (pycocotools)

            assert gt_boxes is not None, "training needs gt_boxes"

            losses = rpn_losses(torch.cat(anchors), torch.cat(logits, dim=1), torch.cat(deltas, dim=1),
                                gt_boxes, image_sizes, self.cfg)
        return proposals, losses

    def _select(self, logits: list[Tensor], boxes: list[Tensor],
                image_sizes: list[tuple[int, int]]) -> list[Proposals]:
        """detectron2's find_top_rpn_proposals: per-level top-k, clip, drop empty, NMS over levels, top-k."""
        pre_nms_topk = self.pre_nms_topk[self.training]
        post_nms_topk = self.post_nms_topk[self.training]
        num_images = logits[0].shape[0]
        batch_idx = torch.arange(num_images, device=logits[0].device)
        top_logits, top_boxes, level_ids = [], [], []
        for level, (logits_i, boxes_i) in enumerate(zip(logits, boxes)):
            num = logits_i.shape[1]  # a 0-dim tensor when traced (export): keep k dynamic
            k = torch.clamp(num, max=pre_nms_topk) if isinstance(num, Tensor) else min(num, pre_nms_topk)
            scores, idx = logits_i.topk(k, dim=1)
            top_logits.append(scores)
            top_boxes.append(boxes_i[batch_idx[:, None], idx])
            level_ids.append(torch.full_like(idx[0], level))
        all_logits = torch.cat(top_logits, dim=1)
        all_boxes = torch.cat(top_boxes, dim=1)
        all_levels = torch.cat(level_ids)
        results = []
        for n, image_size in enumerate(image_sizes):
            boxes_n, logits_n, levels_n = all_boxes[n], all_logits[n], all_levels
            valid = torch.isfinite(boxes_n).all(dim=1) & torch.isfinite(logits_n)
            if torch.jit.is_tracing() or not bool(valid.all()):  # a trace keeps the filter for every input
                if self.training:
                    raise FloatingPointError("predicted RPN boxes or logits are not finite; training diverged")
                boxes_n, logits_n, levels_n = boxes_n[valid], logits_n[valid], levels_n[valid]
            boxes_n = clip_boxes(boxes_n, image_size)
            keep = nonempty(boxes_n, self.min_box_size)
            if torch.jit.is_tracing() or not bool(keep.all()):
                boxes_n, logits_n, levels_n = boxes_n[keep], logits_n[keep], levels_n[keep]
            keep = batched_nms(boxes_n.float(), logits_n, levels_n, self.nms_thresh)[:post_nms_topk]
            results.append(Proposals(boxes_n[keep], logits_n[keep]))
        return results
