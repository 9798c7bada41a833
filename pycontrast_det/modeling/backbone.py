"""ResNet (detectron2 semantics: STRIDE_IN_1X1, FREEZE_AT, configurable norm) with an FPN or C4 layout.

Module names follow torchvision (``body.conv1``, ``body.layer1.0.bn1``, ``fpn.inner_blocks.0.0``) so that
converted detectron2 checkpoints load by the project's key contract.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Union

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from .fuse import ConvNormAct, conv_norm
from .norms import FrozenBatchNorm2d, get_norm

if TYPE_CHECKING:
    from ..config import CfgNode

BLOCKS_PER_STAGE = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def _norm_or_identity(norm: str, channels: int) -> nn.Module:
    layer = get_norm(norm, channels)
    return nn.Identity() if layer is None else layer


Filled = Union[nn.Conv2d, nn.ConvTranspose2d, nn.Linear]  # the layers detectron2's weight fills apply to


def c2_msra_fill(module: Filled) -> None:
    """Kaiming normal (fan_out, relu) weights and zero bias, as detectron2 initialises convs."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def c2_xavier_fill(module: Filled) -> None:
    """Kaiming uniform (a=1) weights and zero bias, detectron2's "xavier" fill."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual block; the stride sits on the 1x1 conv1 when ``stride_in_1x1``.

    Convs have no bias (as in detectron2, even without a norm); the projection shortcut exists when the
    channel count changes.
    """

    def __init__(self, in_channels: int, bottleneck_channels: int, out_channels: int, *, stride: int,
                 stride_in_1x1: bool, groups: int, norm: str) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, bottleneck_channels, 1, stride=stride_1x1, bias=False)
        self.bn1 = _norm_or_identity(norm, bottleneck_channels)
        self.conv2 = nn.Conv2d(bottleneck_channels, bottleneck_channels, 3, stride=stride_3x3, padding=1,
                               groups=groups, bias=False)
        self.bn2 = _norm_or_identity(norm, bottleneck_channels)
        self.conv3 = nn.Conv2d(bottleneck_channels, out_channels, 1, bias=False)
        self.bn3 = _norm_or_identity(norm, out_channels)
        self.downsample: ConvNormAct | None = None
        if in_channels != out_channels:
            self.downsample = ConvNormAct(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          _norm_or_identity(norm, out_channels))
        for conv in (self.conv1, self.conv2, self.conv3):
            c2_msra_fill(conv)
        if self.downsample is not None:
            c2_msra_fill(self.downsample.conv)

    def forward(self, x: Tensor) -> Tensor:
        out = conv_norm(self.conv1, self.bn1, x, relu=True)
        out = conv_norm(self.conv2, self.bn2, out, relu=True)
        shortcut = x if self.downsample is None else self.downsample(x)
        return conv_norm(self.conv3, self.bn3, out, relu=True, residual=shortcut)


def make_stage(num_blocks: int, in_channels: int, bottleneck_channels: int, out_channels: int, *,
               first_stride: int, stride_in_1x1: bool, groups: int, norm: str) -> nn.Sequential:
    """One ResNet stage: ``num_blocks`` bottlenecks, the first one strided."""
    blocks = []
    for i in range(num_blocks):
        blocks.append(Bottleneck(in_channels, bottleneck_channels, out_channels,
                                 stride=first_stride if i == 0 else 1, stride_in_1x1=stride_in_1x1,
                                 groups=groups, norm=norm))
        in_channels = out_channels
    return nn.Sequential(*blocks)


class ResNetBody(nn.Module):
    """Stem (7x7 conv, norm, ReLU, 3x3 max-pool) and stages res2..res{num_stages+1}; returns each stage."""

    def __init__(self, resnets_cfg: CfgNode, num_stages: int) -> None:
        super().__init__()
        norm = resnets_cfg.NORM
        stem_channels = resnets_cfg.STEM_OUT_CHANNELS
        self.conv1 = nn.Conv2d(3, stem_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = _norm_or_identity(norm, stem_channels)
        c2_msra_fill(self.conv1)
        groups = resnets_cfg.NUM_GROUPS
        bottleneck = groups * resnets_cfg.WIDTH_PER_GROUP
        out_channels = resnets_cfg.RES2_OUT_CHANNELS
        in_channels = stem_channels
        self.stage_names: list[str] = []
        self.out_channels: dict[str, int] = {}
        for idx, num_blocks in enumerate(BLOCKS_PER_STAGE[resnets_cfg.DEPTH][:num_stages]):
            stage = make_stage(num_blocks, in_channels, bottleneck, out_channels,
                               first_stride=1 if idx == 0 else 2, stride_in_1x1=resnets_cfg.STRIDE_IN_1X1,
                               groups=groups, norm=norm)
            self.add_module(f"layer{idx + 1}", stage)
            self.stage_names.append(f"res{idx + 2}")
            self.out_channels[f"res{idx + 2}"] = out_channels
            in_channels, bottleneck, out_channels = out_channels, bottleneck * 2, out_channels * 2

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        x = conv_norm(self.conv1, self.bn1, x, relu=True)
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        outputs: OrderedDict[str, Tensor] = OrderedDict()
        for idx, name in enumerate(self.stage_names):
            x = getattr(self, f"layer{idx + 1}")(x)
            outputs[name] = x
        return outputs

    def freeze(self, freeze_at: int) -> None:
        """detectron2's FREEZE_AT: 1 freezes the stem, k >= 2 also res2..res_k (no grads, BN -> FrozenBN)."""
        parts = (["conv1", "bn1"] if freeze_at >= 1 else []) + [
            f"layer{i - 1}" for i in range(2, freeze_at + 1) if i - 2 < len(self.stage_names)]
        for name in parts:
            module = FrozenBatchNorm2d.convert(getattr(self, name))
            setattr(self, name, module)
            for param in module.parameters():
                param.requires_grad_(False)


class FPNBackbone(nn.Module):
    """ResNet res2..res5 -> FPN p2..p5 (+ p6 by stride-2 max-pool of p5); strides 4..64."""

    size_divisibility = 32

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__()
        self.body = ResNetBody(cfg.MODEL.RESNETS, num_stages=4)
        self.body.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)
        norm = cfg.MODEL.FPN.NORM
        self.fpn = FeaturePyramidNetwork(
            [self.body.out_channels[name] for name in cfg.MODEL.FPN.IN_FEATURES],
            cfg.MODEL.FPN.OUT_CHANNELS,
            extra_blocks=LastLevelMaxPool(),
            norm_layer=(lambda channels: get_norm(norm, channels)) if norm else None,
        )
        for blocks in (self.fpn.inner_blocks, self.fpn.layer_blocks):  # same layers, norms folded at inference
            for i, block in enumerate(blocks):
                blocks[i] = ConvNormAct.from_block(block)
        self.strides = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
        self.out_channels = cfg.MODEL.FPN.OUT_CHANNELS

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        pyramid = self.fpn(self.body(x))
        return OrderedDict(zip(self.strides, pyramid.values()))


class C4Backbone(nn.Module):
    """ResNet stem + res2..res4 (stride 16, 1024 channels); res5 lives in the ROI head."""

    size_divisibility = 0

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__()
        self.body = ResNetBody(cfg.MODEL.RESNETS, num_stages=3)
        self.body.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)
        self.strides = {"res4": 16}
        self.out_channels = self.body.out_channels["res4"]

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        return OrderedDict(res4=self.body(x)["res4"])


Backbone = Union[FPNBackbone, C4Backbone]
