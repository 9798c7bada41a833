"""``build_model(cfg)``: check that a detectron2 config describes a model this package implements, then build it
(randomly initialised by detectron2's rules; no weights loaded)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..coco_classes import COCO, CategoryMap
from ..errors import ConfigError
from .backbone import BLOCKS_PER_STAGE, Backbone, C4Backbone, FPNBackbone
from .meta_arch import MaskRCNN
from .norms import check_norm
from .roi_heads import Res5ROIHeads, ROIHeads, StandardROIHeads
from .rpn import RPN

if TYPE_CHECKING:
    from ..config import CfgNode

FPN_BACKBONE = "build_resnet_fpn_backbone"
C4_BACKBONE = "build_resnet_backbone"
_ROI_HEADS = ("StandardROIHeads", "Res5ROIHeads", "Res5ROIHeadsExtraNorm")

# key -> the only values supported (a setting outside them would silently change the model)
_REQUIRED: dict[str, tuple[Any, ...]] = {
    "MODEL.META_ARCHITECTURE": ("GeneralizedRCNN",),
    "MODEL.BACKBONE.NAME": (FPN_BACKBONE, C4_BACKBONE),
    "MODEL.KEYPOINT_ON": (False,),
    "MODEL.LOAD_PROPOSALS": (False,),
    "MODEL.PROPOSAL_GENERATOR.NAME": ("RPN",),
    "MODEL.ANCHOR_GENERATOR.NAME": ("DefaultAnchorGenerator",),
    "MODEL.RPN.HEAD_NAME": ("StandardRPNHead",),
    "MODEL.RPN.CONV_DIMS": ([-1],),
    "MODEL.RESNETS.DEPTH": tuple(BLOCKS_PER_STAGE),
    "MODEL.RESNETS.RES5_DILATION": (1,),
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE": ([False] * 4,),
    "MODEL.FPN.FUSE_TYPE": ("sum",),
    "MODEL.ROI_HEADS.NAME": _ROI_HEADS,
    "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": (False,),
    "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE": (False,),
    "MODEL.ROI_BOX_HEAD.USE_FED_LOSS": (False,),
    "MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES": (False,),
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE": ("ROIAlignV2", "ROIAlign"),
    "MODEL.ROI_MASK_HEAD.NAME": ("MaskRCNNConvUpsampleHead",),
    "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": (False,),
    "MODEL.ROI_MASK_HEAD.POOLER_TYPE": ("ROIAlignV2", "ROIAlign"),
    "INPUT.FORMAT": ("RGB", "BGR"),
}
_FPN_REQUIRED: dict[str, tuple[Any, ...]] = {
    "MODEL.RESNETS.OUT_FEATURES": (["res2", "res3", "res4", "res5"],),
    "MODEL.FPN.IN_FEATURES": (["res2", "res3", "res4", "res5"],),
    "MODEL.RPN.IN_FEATURES": (["p2", "p3", "p4", "p5", "p6"],),
    "MODEL.ROI_HEADS.IN_FEATURES": (["p2", "p3", "p4", "p5"],),
    "MODEL.ROI_HEADS.NAME": ("StandardROIHeads",),
    "MODEL.ROI_BOX_HEAD.NAME": ("FastRCNNConvFCHead",),
}
_C4_REQUIRED: dict[str, tuple[Any, ...]] = {
    "MODEL.RESNETS.OUT_FEATURES": (["res4"],),
    "MODEL.RPN.IN_FEATURES": (["res4"],),
    "MODEL.ROI_HEADS.IN_FEATURES": (["res4"],),
    "MODEL.ROI_HEADS.NAME": ("Res5ROIHeads", "Res5ROIHeadsExtraNorm"),
}


def _get(cfg: CfgNode, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _check(cfg: CfgNode, required: dict[str, tuple[Any, ...]], context: str) -> None:
    for key, allowed in required.items():
        value = _get(cfg, key)
        if isinstance(value, tuple):
            value = list(value)
        if value not in allowed:
            raise ConfigError(f"{key} = {value!r} is not supported{context}; supported: "
                              f"{', '.join(repr(a) for a in allowed)}")


def check_config(cfg: CfgNode) -> str:
    """Raise ConfigError naming the first unsupported setting; return the layout, "fpn" or "c4"."""
    _check(cfg, _REQUIRED, "")
    fpn = cfg.MODEL.BACKBONE.NAME == FPN_BACKBONE
    _check(cfg, _FPN_REQUIRED if fpn else _C4_REQUIRED, f" with MODEL.BACKBONE.NAME {cfg.MODEL.BACKBONE.NAME}")
    for key in ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM", "MODEL.ROI_MASK_HEAD.NORM"):
        check_norm(_get(cfg, key), key)
    if len(cfg.MODEL.PIXEL_MEAN) != 3 or len(cfg.MODEL.PIXEL_STD) != 3:
        raise ConfigError("MODEL.PIXEL_MEAN and MODEL.PIXEL_STD need 3 values (one per channel)")
    num_levels = len(cfg.MODEL.RPN.IN_FEATURES)
    sizes, ratios = cfg.MODEL.ANCHOR_GENERATOR.SIZES, cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS
    if len(sizes) not in (1, num_levels) or len(ratios) not in (1, num_levels):
        raise ConfigError(f"MODEL.ANCHOR_GENERATOR.SIZES / ASPECT_RATIOS need 1 or {num_levels} lists "
                          f"(one per RPN level), got {len(sizes)} / {len(ratios)}")
    if len({len(s) * len(r) for s in sizes for r in ratios}) != 1:
        raise ConfigError("MODEL.ANCHOR_GENERATOR: every level needs the same number of anchors per location")
    if cfg.MODEL.RESNETS.NUM_GROUPS != 1 and cfg.MODEL.RESNETS.STRIDE_IN_1X1:
        raise ConfigError("MODEL.RESNETS.STRIDE_IN_1X1 must be False for grouped (ResNeXt) convolutions")
    return "fpn" if fpn else "c4"


def default_classes(num_classes: int) -> CategoryMap:
    """COCO's categories for an 80-class model, ``class_<i>`` otherwise, until weights or a dataset name them."""
    return COCO if num_classes == 80 else CategoryMap.placeholder(num_classes)


def build_model(cfg: CfgNode) -> MaskRCNN:
    """A randomly initialised MaskRCNN for ``cfg`` (detectron2 init rules; pretrained weights not loaded)."""
    arch = check_config(cfg)
    backbone: Backbone
    roi_heads: ROIHeads
    if arch == "fpn":
        backbone = FPNBackbone(cfg)
        roi_heads = StandardROIHeads(cfg, backbone.out_channels, backbone.strides)
    else:
        backbone = C4Backbone(cfg)
        roi_heads = Res5ROIHeads(cfg, backbone.out_channels, backbone.strides,
                                 extra_norm=cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeadsExtraNorm")
    rpn = RPN(cfg, backbone.out_channels, backbone.strides)
    return MaskRCNN(cfg, arch, backbone, rpn, roi_heads, default_classes(cfg.MODEL.ROI_HEADS.NUM_CLASSES))
