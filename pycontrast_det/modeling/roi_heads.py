"""ROI heads: StandardROIHeads (FPN: conv/fc box head, 4-conv mask head) and Res5ROIHeads (C4).

Class layout as detectron2: ``cls_score`` has K+1 outputs with background last, ``bbox_pred`` 4K.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Union

import torch
from torch import Tensor, nn
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

from .backbone import c2_msra_fill, c2_xavier_fill, make_stage
from .fuse import ConvNormAct, affine_of, foldable_affine
from .norms import get_norm
from .poolers import ROIPooler
from .boxes import split_like
from .postprocess import Detections, fast_rcnn_inference, mask_probabilities
from .rpn import Proposals

if TYPE_CHECKING:
    from ..config import CfgNode


def conv_norm_relu(in_channels: int, out_channels: int, norm: str) -> ConvNormAct:
    """3x3 conv (bias only without a norm) -> norm -> ReLU, msra-initialised."""
    norm_layer = get_norm(norm, out_channels)
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=norm_layer is None)
    c2_msra_fill(conv)
    return ConvNormAct(conv, norm_layer, relu=True)


class BoxPredictor(nn.Module):
    """Linear class scores (K+1, background last) and class-specific box deltas (4K)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


def _mask_branch(mask_cfg: CfgNode, in_channels: int, num_classes: int) -> tuple[nn.Sequential, MaskRCNNPredictor]:
    """NUM_CONV conv/norm/ReLU blocks, then a 2x2 stride-2 deconv + ReLU (msra init) and a 1x1 per-class
    predictor initialised N(0, 0.001)."""
    convs = []
    channels = in_channels
    for _ in range(mask_cfg.NUM_CONV):
        convs.append(conv_norm_relu(channels, mask_cfg.CONV_DIM, mask_cfg.NORM))
        channels = mask_cfg.CONV_DIM
    predictor = MaskRCNNPredictor(channels, mask_cfg.CONV_DIM, num_classes)
    c2_msra_fill(predictor.conv5_mask)
    nn.init.normal_(predictor.mask_fcn_logits.weight, std=0.001)
    nn.init.zeros_(predictor.mask_fcn_logits.bias)
    return nn.Sequential(*convs), predictor


class _ROIHeadsBase(nn.Module):
    """What both head kinds share: config values, inference of detections, training losses."""

    box_predictor: BoxPredictor
    mask_head: nn.Sequential
    mask_predictor: MaskRCNNPredictor

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__()
        heads = cfg.MODEL.ROI_HEADS
        self.cfg = cfg
        self.in_features = list(heads.IN_FEATURES)
        self.num_classes = heads.NUM_CLASSES
        self.mask_on = cfg.MODEL.MASK_ON
        self.box_weights = tuple(cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS)
        self.score_thresh = heads.SCORE_THRESH_TEST
        self.nms_thresh = heads.NMS_THRESH_TEST
        self.topk = cfg.TEST.DETECTIONS_PER_IMAGE

    def box_features(self, features: list[Tensor], boxes: list[Tensor]) -> tuple[Tensor, Tensor | None]:
        """Box-head output per RoI, and the per-RoI maps the training mask branch may reuse (C4) or None."""
        raise NotImplementedError

    def mask_logits(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def forward(self, features: dict[str, Tensor], proposals: list[Proposals],
                image_sizes: list[tuple[int, int]], targets: list[dict[str, Any]] | None = None
                ) -> tuple[list[Detections], dict[str, Tensor]]:
        """Detections per image (eval) or the box and mask losses (training)."""
        maps = [features[f].contiguous() for f in self.in_features]  # RoIAlign reads NCHW: convert once
        if self.training:
            assert targets is not None, "training needs targets"
            return [], self._losses(maps, proposals, targets)
        x, _ = self.box_features(maps, [p.boxes for p in proposals])
        class_logits, box_deltas = self.box_predictor(x)
        detections = fast_rcnn_inference(class_logits, box_deltas, [p.boxes for p in proposals], image_sizes,
                                         self.box_weights, self.score_thresh, self.nms_thresh, self.topk)
        if self.mask_on:
            boxes = [d.boxes for d in detections]
            logits = self.mask_logits(maps, boxes)
            classes = torch.cat([d.classes for d in detections])
            for det, probs in zip(detections, split_like(mask_probabilities(logits, classes), boxes)):
                det.mask_probs = probs
        return detections, {}

    def _losses(self, maps: list[Tensor], proposals: list[Proposals], targets: list[dict[str, Any]]
                ) -> dict[str, Tensor]:
        from .losses import fast_rcnn_losses, mask_rcnn_loss, sample_proposals  # training only (pycocotools)

        sampled = sample_proposals([p.boxes for p in proposals], targets, self.num_classes, self.cfg)
        x, roi_maps = self.box_features(maps, [s.boxes for s in sampled])
        class_logits, box_deltas = self.box_predictor(x)
        losses = dict(fast_rcnn_losses(class_logits, box_deltas, sampled, self.cfg))
        if self.mask_on:
            sampled_fg = [s.foreground() for s in sampled]
            if roi_maps is None:
                logits = self.mask_logits(maps, [s.boxes for s in sampled_fg])
            else:  # detectron2's C4 head reuses the sampled RoIs' res5 maps for the mask branch
                fg = torch.cat([s.gt_index >= 0 for s in sampled])
                logits = self.mask_predictor(self.mask_head(roi_maps[fg]))
            losses.update(mask_rcnn_loss(logits, sampled_fg, targets, self.cfg))
        return losses


class StandardROIHeads(_ROIHeadsBase):
    """FPN heads: box pooler (7x7) -> conv/fc head -> predictor; mask pooler (14x14) -> 4 convs -> deconv."""

    def __init__(self, cfg: CfgNode, in_channels: int, strides: dict[str, int]) -> None:
        super().__init__(cfg)
        box = cfg.MODEL.ROI_BOX_HEAD
        level_strides = [strides[f] for f in self.in_features]
        aligned = box.POOLER_TYPE == "ROIAlignV2"
        self.box_pooler = ROIPooler(box.POOLER_RESOLUTION, level_strides, box.POOLER_SAMPLING_RATIO, aligned)
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(box.NUM_CONV):
            layers.append(conv_norm_relu(channels, box.CONV_DIM, box.NORM))
            channels = box.CONV_DIM
        layers.append(nn.Flatten())
        features = channels * box.POOLER_RESOLUTION ** 2
        for _ in range(box.NUM_FC):
            fc = nn.Linear(features, box.FC_DIM)
            c2_xavier_fill(fc)
            layers += [fc, nn.ReLU(inplace=True)]
            features = box.FC_DIM
        self.box_head = nn.Sequential(*layers)
        self.box_predictor = BoxPredictor(features, self.num_classes)
        if self.mask_on:
            mask = cfg.MODEL.ROI_MASK_HEAD
            self.mask_pooler = ROIPooler(mask.POOLER_RESOLUTION, level_strides, mask.POOLER_SAMPLING_RATIO,
                                         mask.POOLER_TYPE == "ROIAlignV2")
            self.mask_head, self.mask_predictor = _mask_branch(mask, in_channels, self.num_classes)

    def box_features(self, features: list[Tensor], boxes: list[Tensor]) -> tuple[Tensor, None]:
        return self.box_head(self.box_pooler(features, boxes)), None

    def mask_logits(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        return self.mask_predictor(self.mask_head(self.mask_pooler(features, boxes)))


class Res5ROIHeads(_ROIHeadsBase):
    """C4 heads: 14x14 RoIAlign on res4 -> res5 (+ optional extra norm) shared by the box and mask branches."""

    def __init__(self, cfg: CfgNode, in_channels: int, strides: dict[str, int], extra_norm: bool) -> None:
        super().__init__(cfg)
        box, resnets = cfg.MODEL.ROI_BOX_HEAD, cfg.MODEL.RESNETS
        self.pooler = ROIPooler(box.POOLER_RESOLUTION, [strides[f] for f in self.in_features],
                                box.POOLER_SAMPLING_RATIO, box.POOLER_TYPE == "ROIAlignV2")
        out_channels = resnets.RES2_OUT_CHANNELS * 8
        self.res5 = make_stage(3, in_channels, resnets.NUM_GROUPS * resnets.WIDTH_PER_GROUP * 8, out_channels,
                               first_stride=2, stride_in_1x1=resnets.STRIDE_IN_1X1, groups=resnets.NUM_GROUPS,
                               norm=resnets.NORM)
        self.res5_norm = get_norm(resnets.NORM, out_channels) if extra_norm else None
        self.box_predictor = BoxPredictor(out_channels, self.num_classes)
        if self.mask_on:
            self.mask_head, self.mask_predictor = _mask_branch(cfg.MODEL.ROI_MASK_HEAD, out_channels,
                                                               self.num_classes)

    def _res5(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        x = self.res5(self.pooler(features, boxes))
        return x if self.res5_norm is None else self.res5_norm(x)

    def box_features(self, features: list[Tensor], boxes: list[Tensor]) -> tuple[Tensor, Tensor | None]:
        if self.res5_norm is not None and not self.training and foldable_affine(self.res5_norm):
            # inference: the box branch needs only the spatial mean, and an affine norm commutes with it
            scale, shift = affine_of(self.res5_norm)
            return self.res5(self.pooler(features, boxes)).mean(dim=(2, 3)) * scale + shift, None
        res5 = self._res5(features, boxes)
        return res5.mean(dim=(2, 3)), res5

    def mask_logits(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        return self.mask_predictor(self.mask_head(self._res5(features, boxes)))


ROIHeads = Union[StandardROIHeads, Res5ROIHeads]
