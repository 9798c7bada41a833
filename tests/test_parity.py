"""Our MaskRCNN against detectron2's own outputs (fixtures/d2-parity): same detections from the same weights.

Both fixture models (FPN and C4), both test sizes (320 and 800), every fixture image; for ``shapes_0000``
also the padded size, the backbone features and the RPN proposals. The models run as users get them: with the
inference fast path (folded norms, channels_last, fused sum/ReLU), which the last test shows is what runs.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pycontrast_det import d2_to_model, load_config
from pycontrast_det.modeling import MaskRCNN, build_model
from pycontrast_det.modeling.fuse import FastPath

ARCHS = ("fpn", "c4")
SIZES = {320: (), 800: ("INPUT.MIN_SIZE_TEST", "800", "INPUT.MAX_SIZE_TEST", "1333")}  # README: 320/512 is the dump
IMAGES = ("shapes_0000", "shapes_0001", "shapes_0002", "shapes_0003", "chelsea", "coffee")
BOX_TOL, SCORE_TOL, MASK_IOU, FEATURE_RTOL = 0.01, 1e-4, 0.99, 1e-4


def fixture_weights(root: Path, arch: str) -> dict[str, torch.Tensor]:
    """The fixture's detectron2 state dict, floating tensors cast to float32 as detectron2 ran them."""
    state = torch.load(root / arch / "weights_fp16.pth", weights_only=True)["model"]
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


@lru_cache(maxsize=None)
def _model(root: Path, arch: str, size: int) -> MaskRCNN:
    model = build_model(load_config(root / arch / "config.yaml", SIZES[size]))
    state, report = d2_to_model(fixture_weights(root, arch), arch, model.state_dict().keys())
    assert report.ok, report
    model.load_state_dict(state, strict=True)
    return model.eval()


@lru_cache(maxsize=None)
def _expected(root: Path, arch: str, size: int) -> dict[str, np.ndarray]:
    with np.load(root / arch / f"expected_{size}.npz") as data:
        return {k: data[k] for k in data.files}


@lru_cache(maxsize=None)
def _run(root: Path, arch: str, size: int, image: str) -> tuple[dict, dict[str, torch.Tensor]]:
    model = _model(root, arch, size)
    item = model.to_input(Image.open(root / "images" / f"{image}.png"))
    with torch.inference_mode():
        out = model([item])[0]
    return item, out


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    """The models and outputs are shared by this module's tests only; free them afterwards."""
    yield
    _model.cache_clear()
    _expected.cache_clear()
    _run.cache_clear()


def _match(ours: dict[str, torch.Tensor], exp: dict[str, np.ndarray], prefix: str, thresh: float) -> None:
    boxes, scores, classes = ours["boxes"].numpy(), ours["scores"].numpy(), ours["classes"].numpy()
    e_boxes, e_scores, e_classes = exp[f"{prefix}.boxes"], exp[f"{prefix}.scores"], exp[f"{prefix}.classes"]
    height, width = (int(v) for v in exp[f"{prefix}.input_hw"])
    e_masks = np.unpackbits(exp[f"{prefix}.masks"], axis=-1, count=width).astype(bool)
    masks = ours["masks"].numpy()
    assert masks.shape[1:] == (height, width)
    unused = set(range(len(boxes)))
    for i in range(len(e_boxes)):
        candidates = [j for j in sorted(unused) if classes[j] == e_classes[i]
                      and abs(scores[j] - e_scores[i]) <= SCORE_TOL
                      and np.abs(boxes[j] - e_boxes[i]).max() <= BOX_TOL]
        if not candidates:
            assert abs(e_scores[i] - thresh) <= SCORE_TOL, (
                f"detectron2 detection {i} (class {e_classes[i]}, score {e_scores[i]:.6f}, box {e_boxes[i]}) "
                "has no match")
            continue
        j = candidates[0]
        unused.remove(j)
        inter = np.logical_and(masks[j], e_masks[i]).sum()
        union = np.logical_or(masks[j], e_masks[i]).sum()
        iou = 1.0 if union == 0 else inter / union
        assert iou >= MASK_IOU, f"detection {i}: mask IoU {iou:.4f}"
    for j in unused:
        assert abs(scores[j] - thresh) <= SCORE_TOL, f"extra detection {j}: score {scores[j]:.6f}, box {boxes[j]}"


@pytest.mark.parametrize("image", IMAGES)
@pytest.mark.parametrize("size", [320, pytest.param(800, marks=pytest.mark.slow)])
@pytest.mark.parametrize("arch", ARCHS)
def test_detections_match_detectron2(d2_fixtures: Path, arch: str, size: int, image: str) -> None:
    exp = _expected(d2_fixtures, arch, size)
    item, out = _run(d2_fixtures, arch, size, image)
    assert [item["height"], item["width"]] == exp[f"{image}.input_hw"].tolist()
    assert list(item["image"].shape[1:]) == exp[f"{image}.resized_hw"].tolist()
    assert len(exp[f"{image}.scores"]) > 0
    thresh = _model(d2_fixtures, arch, size).cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
    _match(out, exp, image, thresh)
    assert abs(len(out["scores"]) - len(exp[f"{image}.scores"])) <= int(
        np.sum(np.abs(exp[f"{image}.scores"] - thresh) <= SCORE_TOL)) + int(
        torch.sum((out["scores"] - thresh).abs() <= SCORE_TOL))


def _assert_close(ours: torch.Tensor, expected: np.ndarray, what: str) -> None:
    assert tuple(ours.shape) == expected.shape, f"{what}: shape {tuple(ours.shape)} vs {expected.shape}"
    err = float(np.abs(ours.numpy() - expected).max())
    scale = max(1.0, float(np.abs(expected).max()))
    assert err <= FEATURE_RTOL * scale, f"{what}: max error {err:.3g} over scale {scale:.3g}"


@pytest.mark.parametrize("arch", ARCHS)
def test_intermediates_match_detectron2(d2_fixtures: Path, arch: str) -> None:
    exp = _expected(d2_fixtures, arch, 320)
    model = _model(d2_fixtures, arch, 320)
    item, _ = _run(d2_fixtures, arch, 320, "shapes_0000")
    with torch.inference_mode():
        images, sizes = model.preprocess([item])
        features = model.backbone(images)
        proposals, _ = model.rpn(features, sizes)
    assert list(images.shape[-2:]) == exp["shapes_0000.padded_hw"].tolist()
    names = sorted(k.split(".feature_")[1] for k in exp if k.startswith("shapes_0000.feature_"))
    assert names == sorted(features), (names, list(features))
    for name in names:
        _assert_close(features[name], exp[f"shapes_0000.feature_{name}"], f"feature {name}")
    _assert_close(proposals[0].boxes, exp["shapes_0000.proposal_boxes"], "proposal boxes")
    _assert_close(proposals[0].logits, exp["shapes_0000.proposal_logits"], "proposal logits")


@pytest.mark.parametrize("arch", ARCHS)
def test_the_parity_runs_take_the_fast_path(d2_fixtures: Path, arch: str) -> None:
    """Default settings, as in the runs above (C4 here with 100 proposals, to be quick); no batch-norm kernel runs
    but C4's extra norm after res5 in the mask branch (it follows a ReLU: nothing to fold into); the backbone
    sees NHWC input; and on a CPU with oneDNN the residual sums and ReLUs run fused into the convolutions."""
    from torch.profiler import ProfilerActivity, profile

    from pycontrast_det.modeling.fuse import _onednn_post_ops

    light = ("MODEL.RPN.POST_NMS_TOPK_TEST", "100") if arch == "c4" else ()
    model = build_model(load_config(d2_fixtures / arch / "config.yaml", SIZES[320] + light))
    model.load_state_dict(d2_to_model(fixture_weights(d2_fixtures, arch), arch, model.state_dict().keys())[0])
    model.eval()
    assert model.fast_path == FastPath(fold_norms=True, channels_last=True, fuse_activations=True)
    layouts = []
    hook = model.backbone.body.layer1.register_forward_pre_hook(
        lambda module, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    item = model.to_input(Image.open(d2_fixtures / "images" / "shapes_0000.png"))
    try:
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            out = model([item])[0]
    finally:
        hook.remove()
    counts = {event.key: event.count for event in prof.key_averages()}
    assert layouts == [True] and len(out["scores"]) > 0
    assert counts.get("aten::native_batch_norm", 0) == (1 if arch == "c4" else 0), counts
    assert ("mkldnn::_convolution_pointwise" in counts) == _onednn_post_ops()
