"""Checkpoint reading, conversion and renaming: real files, real pickles, real torchvision weights."""
from __future__ import annotations

import torch

from pycontrast_det.checkpoints import d2_to_model, model_to_d2

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
R50_BLOCKS = (3, 4, 6, 3)


def _resnet_body(prefix: str, stages: range) -> list[str]:
    """Our torchvision-style ResNet-50 names, written out from the brief's table (not from the code)."""
    keys = []
    if 1 in stages:
        keys += [f"{prefix}conv1.weight"] + [f"{prefix}bn1.{p}" for p in BN]
    for layer in stages:
        for b in range(R50_BLOCKS[layer - 1]):
            blk = f"{prefix}layer{layer}.{b}."
            for i in (1, 2, 3):
                keys += [f"{blk}conv{i}.weight"] + [f"{blk}bn{i}.{p}" for p in BN]
            if b == 0:
                keys += [f"{blk}downsample.0.weight"] + [f"{blk}downsample.1.{p}" for p in BN]
    return keys


def _heads(mask_convs: bool) -> list[str]:
    keys = [f"rpn.head.{m}.{p}" for m in ("conv.0.0", "cls_logits", "bbox_pred") for p in ("weight", "bias")]
    keys += [f"roi_heads.box_predictor.{m}.{p}" for m in ("cls_score", "bbox_pred") for p in ("weight", "bias")]
    keys += [f"roi_heads.mask_predictor.{m}.{p}" for m in ("conv5_mask", "mask_fcn_logits")
             for p in ("weight", "bias")]
    if mask_convs:
        for i in range(4):
            keys += [f"roi_heads.mask_head.{i}.0.weight"] + [f"roi_heads.mask_head.{i}.1.{p}" for p in BN]
    return keys


def expected_fpn_keys() -> set[str]:
    keys = _resnet_body("backbone.body.", range(1, 5))
    for i in range(4):
        for blocks in ("inner_blocks", "layer_blocks"):
            keys += [f"backbone.fpn.{blocks}.{i}.0.weight"] + [f"backbone.fpn.{blocks}.{i}.1.{p}" for p in BN]
        keys += [f"roi_heads.box_head.{i}.0.weight"] + [f"roi_heads.box_head.{i}.1.{p}" for p in BN]
    keys += ["roi_heads.box_head.5.weight", "roi_heads.box_head.5.bias"]
    return set(keys + _heads(mask_convs=True))


def expected_c4_keys() -> set[str]:
    keys = _resnet_body("backbone.body.", range(1, 4))
    keys += [k.replace("backbone.body.layer4.", "roi_heads.res5.")
             for k in _resnet_body("backbone.body.", range(4, 5))]
    keys += [f"roi_heads.res5_norm.{p}" for p in BN]
    return set(keys + _heads(mask_convs=False))


def _fixture_state(d2_fixtures, arch: str) -> dict:
    return torch.load(d2_fixtures / arch / "weights_fp16.pth", weights_only=True, map_location="cpu")["model"]


def test_d2_fixture_weights_map_onto_fpn_and_c4_key_sets(d2_fixtures):
    for arch, expected in (("fpn", expected_fpn_keys()), ("c4", expected_c4_keys())):
        d2 = _fixture_state(d2_fixtures, arch)
        ours, report = d2_to_model(d2, arch, expected_keys=sorted(expected))
        assert report.missing == () and report.unexpected == () and report.ok, (arch, report)
        assert set(ours) == expected
        # values: the float16 values as float32; integer buffers untouched
        assert ours["backbone.body.conv1.weight"].dtype == torch.float32
        src = "backbone.bottom_up.stem.conv1.weight" if arch == "fpn" else "backbone.stem.conv1.weight"
        assert torch.equal(ours["backbone.body.conv1.weight"], d2[src].float())
        assert ours["backbone.body.bn1.num_batches_tracked"].dtype == torch.int64
        # the inverse gives back exactly detectron2's names
        assert set(model_to_d2(ours, arch)) == set(d2)


def test_d2_to_model_reports_unexpected_dropped_and_missing():
    w = torch.zeros(2, dtype=torch.float16)
    state = {
        "roi_heads.res5.norm.weight": w,  # a C4 key: unexpected for FPN
        "proposal_generator.anchor_generator.cell_anchors.0": w,
        "pixel_mean": w,
        "backbone.bottom_up.res3.1.conv2.norm.running_var": w,
        "roi_heads.box_head.fc1.weight": w,
    }
    ours, report = d2_to_model(state, "fpn", expected_keys=["backbone.body.layer2.1.bn2.running_var",
                                                            "backbone.body.conv1.weight"])
    assert set(ours) == {"backbone.body.layer2.1.bn2.running_var"}
    assert report.unexpected == ("roi_heads.res5.norm.weight", "roi_heads.box_head.fc1.weight")
    assert report.dropped == ("proposal_generator.anchor_generator.cell_anchors.0", "pixel_mean")
    assert report.missing == ("backbone.body.conv1.weight",)
    assert not report.ok
    # without expected keys the rename alone decides
    ours, report = d2_to_model(state, "fpn")
    assert report.unexpected == ("roi_heads.res5.norm.weight",) and report.missing == ()
    assert ours["roi_heads.box_head.5.weight"].dtype == torch.float32
