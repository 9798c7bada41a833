"""MaskRCNN building blocks and behaviour beyond the detectron2 parity fixtures: config checks, STRIDE_IN_1X1,
channel order, norms, predict inputs and batching, training losses, autocast, load()."""
from __future__ import annotations

import socket
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pycontrast_det import d2_to_model, load_config
from pycontrast_det.checkpoints import model_to_d2
from pycontrast_det.errors import ArchitectureMismatchError, ConfigError
from pycontrast_det.modeling import MaskRCNN, build_model, load
from pycontrast_det.modeling.backbone import Bottleneck
from pycontrast_det.modeling.norms import NORM_NAMES, FrozenBatchNorm2d, NaiveSyncBatchNorm

LIGHT = ("MODEL.RPN.POST_NMS_TOPK_TEST", "100", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
         "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "300", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32")


def _fixture_model(root: Path, arch: str, overrides=(), state_edit=None) -> MaskRCNN:
    """The parity fixture's model with its detectron2 weights (fewer proposals: these tests are not parity)."""
    model = build_model(load_config(root / arch / "config.yaml", LIGHT + tuple(overrides)))
    state = torch.load(root / arch / "weights_fp16.pth", weights_only=True)["model"]
    ours, report = d2_to_model(state, arch, model.state_dict().keys())
    assert report.ok
    if state_edit is not None:
        state_edit(ours)
    model.load_state_dict(ours)
    return model.eval()


@lru_cache(maxsize=None)
def _fpn(root: Path) -> MaskRCNN:
    return _fixture_model(root, "fpn")


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    _fpn.cache_clear()


def _training_item(height: int = 128, width: int = 160, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g),
            "height": height, "width": width,
            "instances": {"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0], [70.0, 30.0, 150.0, 120.0]]),
                          "classes": torch.tensor([3, 7]),
                          "masks": [[[10, 20, 60, 20, 60, 90, 10, 90]], [[70, 30, 150, 30, 110, 120]]]}}


# ------------------------------------------------------------------------------------------ config checks

@pytest.mark.parametrize("key,value", [
    ("MODEL.META_ARCHITECTURE", "RetinaNet"),
    ("MODEL.KEYPOINT_ON", "True"),
    ("MODEL.ROI_BOX_HEAD.NAME", "FastRCNNFCHead"),
    ("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True"),
    ("MODEL.RPN.HEAD_NAME", "OtherRPNHead"),
    ("MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False,False,True,True]"),
    ("MODEL.RESNETS.NORM", "LN"),
    ("MODEL.FPN.NORM", "BatchNorm"),
    ("MODEL.RESNETS.DEPTH", "18"),
    ("MODEL.ROI_HEADS.NAME", "CascadeROIHeads"),
])
def test_unsupported_setting_is_a_config_error_naming_the_key(d2_fixtures: Path, key: str, value: str) -> None:
    cfg = load_config(d2_fixtures / "fpn" / "config.yaml", [key, value])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_model(cfg)


def test_unknown_key_is_a_config_error(d2_fixtures: Path) -> None:
    with pytest.raises(ConfigError, match=r"MODEL\.RESNETS\.NOT_A_KEY"):
        load(d2_fixtures / "fpn" / "config.yaml", pretrained=False, overrides=["MODEL.RESNETS.NOT_A_KEY", "1"])


def test_c4_backbone_with_fpn_heads_is_refused(d2_fixtures: Path) -> None:
    cfg = load_config(d2_fixtures / "c4" / "config.yaml", ["MODEL.ROI_HEADS.NAME", "StandardROIHeads"])
    with pytest.raises(ConfigError, match=r"MODEL\.ROI_HEADS\.NAME"):
        build_model(cfg)


# ------------------------------------------------------------------------------------------ STRIDE_IN_1X1

@pytest.mark.parametrize("stride_in_1x1", [True, False])
def test_bottleneck_puts_the_stride_where_configured(stride_in_1x1: bool) -> None:
    torch.manual_seed(0)
    block = Bottleneck(16, 8, 32, stride=2, stride_in_1x1=stride_in_1x1, groups=1, norm="").eval()
    x = torch.randn(2, 16, 12, 10)
    s1, s3 = (2, 1) if stride_in_1x1 else (1, 2)
    ref = F.relu(F.conv2d(x, block.conv1.weight, stride=s1))
    ref = F.relu(F.conv2d(ref, block.conv2.weight, stride=s3, padding=1))
    ref = F.conv2d(ref, block.conv3.weight) + F.conv2d(x, block.downsample[0].weight, stride=2)
    out = block(x)
    assert out.shape == (2, 32, 6, 5)
    torch.testing.assert_close(out, F.relu(ref))


def test_stride_in_1x1_changes_the_network_not_its_shapes(d2_fixtures: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        ours = _fpn(d2_fixtures).backbone(x)
        flipped = _fixture_model(d2_fixtures, "fpn", ["MODEL.RESNETS.STRIDE_IN_1X1", "True"]).backbone(x)
    assert [v.shape for v in ours.values()] == [v.shape for v in flipped.values()]
    assert (ours["p2"] - flipped["p2"]).abs().max() > 0.1


# ------------------------------------------------------------------------------------------ channel order

def test_bgr_config_flips_channels_before_the_network(d2_fixtures: Path) -> None:
    """An RGB model and its BGR twin (reversed mean/std, conv1 input channels reversed) detect the same."""
    def flip_conv1(state):
        state["backbone.body.conv1.weight"] = state["backbone.body.conv1.weight"].flip(1)

    rgb = _fpn(d2_fixtures)
    cfg = rgb.cfg
    bgr = _fixture_model(d2_fixtures, "fpn", [
        "INPUT.FORMAT", "BGR", "MODEL.PIXEL_MEAN", str(list(cfg.MODEL.PIXEL_MEAN)[::-1]),
        "MODEL.PIXEL_STD", str(list(cfg.MODEL.PIXEL_STD)[::-1])], state_edit=flip_conv1)
    image = np.asarray(Image.open(d2_fixtures / "images" / "shapes_0000.png").convert("RGB"))
    item_rgb, item_bgr = rgb.to_input(image), bgr.to_input(image)
    torch.testing.assert_close(item_bgr["image"], item_rgb["image"].flip(0))
    a, b = rgb.predict(image), bgr.predict(image)
    assert len(a["scores"]) > 0 and a["labels"].tolist() == b["labels"].tolist()
    torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=0)
    torch.testing.assert_close(a["scores"], b["scores"], atol=1e-4, rtol=0)
    assert (a["masks"] != b["masks"]).float().mean() < 1e-3


# ------------------------------------------------------------------------------------------ norms

@pytest.mark.parametrize("norm", NORM_NAMES)
def test_each_norm_builds_names_and_runs(d2_fixtures: Path, norm: str) -> None:
    keys = ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM", "MODEL.ROI_MASK_HEAD.NORM")
    overrides = [x for key in keys for x in (key, norm)]
    model = build_model(load_config(d2_fixtures / "fpn" / "config.yaml", list(LIGHT) + overrides))
    state = model.state_dict()
    d2_state = model_to_d2(state, "fpn")  # every key has a detectron2 name
    back, report = d2_to_model(d2_state, "fpn", state.keys())
    assert report.ok and set(back) == set(state)
    bn1 = {k.rsplit(".", 1)[1] for k in state if k.startswith("backbone.body.bn1.")}
    expected = {"": set(), "GN": {"weight", "bias"}, "FrozenBN": {"weight", "bias", "running_mean", "running_var"}}
    assert bn1 == expected.get(norm, {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"})
    assert ("backbone.fpn.inner_blocks.0.0.bias" in state) == (norm == "")
    assert ("roi_heads.box_head.0.0.bias" in state) == (norm == "")
    model.eval()
    with torch.inference_mode():
        out = model([{"image": torch.zeros(3, 64, 80), "height": 32, "width": 40}])[0]
    assert out["masks"].shape[1:] == (32, 40) and out["boxes"].shape[1] == 4


def test_frozen_bn_matches_eval_batchnorm_and_loads_bn_checkpoints() -> None:
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(8)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.uniform_(-1, 1)
    frozen = FrozenBatchNorm2d(8)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is accepted and dropped
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(frozen(x), bn.eval()(x))
    assert [p for p in frozen.parameters()] == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _synced_bn_worker(rank: int, port: int, norm_name: str, result_dir: str) -> None:
    import torch.distributed as dist

    from pycontrast_det.modeling.norms import get_norm

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        x = torch.randn(4, 3, 5, 5) * 3 + 1
        norm = get_norm(norm_name, 3).train()
        part = x[2 * rank:2 * rank + 2].clone().requires_grad_(True)
        out = norm(part)
        out.sum().backward()
        torch.save({"out": out.detach(), "mean": norm.running_mean, "var": norm.running_var},
                   f"{result_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("norm", ["naiveSyncBN", "SyncBN"])
def test_synced_batch_norm_uses_statistics_of_all_processes(tmp_path: Path, norm: str) -> None:
    torch.multiprocessing.spawn(_synced_bn_worker, args=(_free_port(), norm, str(tmp_path)), nprocs=2)
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5) * 3 + 1
    full = torch.nn.BatchNorm2d(3).train()
    expected = full(x).detach()
    results = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]
    torch.testing.assert_close(torch.cat([r["out"] for r in results]), expected, atol=1e-4, rtol=1e-4)
    biased_var = x.var(dim=(0, 2, 3), unbiased=False)
    for r in results:
        torch.testing.assert_close(r["mean"], full.running_mean)
        torch.testing.assert_close(r["var"], 0.9 + 0.1 * biased_var, atol=1e-4, rtol=1e-4)


def test_naive_sync_bn_is_plain_bn_without_distributed() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5)
    bn, naive = torch.nn.BatchNorm2d(3), NaiveSyncBatchNorm(3)
    torch.testing.assert_close(naive(x), bn(x))
    torch.testing.assert_close(naive.running_var, bn.running_var)


# ------------------------------------------------------------------------------------------ predict

def test_predict_input_kinds_give_identical_outputs(d2_fixtures: Path) -> None:
    model = _fpn(d2_fixtures)
    path = d2_fixtures / "images" / "shapes_0000.png"
    pil = Image.open(path).convert("RGB")
    array = np.asarray(pil)
    chw = torch.from_numpy(array.copy()).permute(2, 0, 1)
    outputs = [model.predict(x) for x in (str(path), path, pil, array, chw, chw.float() / 255)]
    first = outputs[0]
    assert len(first["scores"]) > 0
    assert set(first) == {"boxes", "scores", "labels", "label_names", "masks"}
    assert first["label_names"] == [model.class_names[i] for i in first["labels"].tolist()]
    assert first["masks"].shape[1:] == array.shape[:2] and first["masks"].dtype == torch.bool
    for other in outputs[1:]:
        assert other["label_names"] == first["label_names"]
        for key in ("boxes", "scores", "labels", "masks"):
            assert torch.equal(other[key], first[key]), key


def test_batched_predict_equals_one_by_one(d2_fixtures: Path) -> None:
    model = _fpn(d2_fixtures)
    paths = [d2_fixtures / "images" / f"shapes_000{i}.png" for i in (1, 2, 3)]  # same size: same padding
    batched = model.predict(paths, batch_size=3)
    assert isinstance(batched, list) and len(batched) == 3
    for path, b in zip(paths, batched):
        single = model.predict(path)
        assert len(single["scores"]) > 0 and single["labels"].tolist() == b["labels"].tolist()
        torch.testing.assert_close(b["boxes"], single["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(b["scores"], single["scores"], atol=1e-4, rtol=0)
        assert (b["masks"] != single["masks"]).float().mean() < 1e-3


def test_predict_score_threshold(d2_fixtures: Path) -> None:
    model = _fpn(d2_fixtures)
    path = d2_fixtures / "images" / "shapes_0002.png"
    default = model.predict(path)
    high = model.predict(path, score_thresh=0.5)
    keep = default["scores"] > 0.5
    assert 0 < int(keep.sum()) < len(keep)
    assert torch.equal(high["boxes"], default["boxes"][keep])
    assert model.roi_heads.score_thresh == model.cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST


def test_predict_rejects_unreadable_inputs(d2_fixtures: Path) -> None:
    model = _fpn(d2_fixtures)
    with pytest.raises(TypeError, match="cannot read an image"):
        model.predict(12)
    with pytest.raises(ValueError, match="uint8"):
        model.predict(np.zeros((8, 8, 3), dtype=np.float32))


# ------------------------------------------------------------------------------------------ training

@pytest.mark.parametrize("arch,overrides", [
    ("fpn", ()),
    ("fpn", ("MODEL.RESNETS.NORM", "FrozenBN", "MODEL.BACKBONE.FREEZE_AT", "2")),
    ("c4", ()),
])
def test_training_forward_returns_the_five_finite_losses(d2_fixtures: Path, arch: str, overrides) -> None:
    torch.manual_seed(0)
    model = build_model(load_config(d2_fixtures / arch / "config.yaml", LIGHT + overrides)).train()
    losses = model([_training_item(seed=0), _training_item(seed=1)])
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}
    assert all(v.dim() == 0 and torch.isfinite(v) and v > 0 for v in losses.values()), losses
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["roi_heads.box_predictor.cls_score.weight"].abs().sum() > 0
    assert grads["rpn.head.cls_logits.weight"].abs().sum() > 0
    assert grads["roi_heads.mask_predictor.mask_fcn_logits.weight"].abs().sum() > 0
    if "FREEZE_AT" in " ".join(overrides):
        assert not model.backbone.body.conv1.weight.requires_grad
        assert not model.backbone.body.layer1[0].conv1.weight.requires_grad
        assert grads["backbone.body.layer2.0.conv1.weight"].abs().sum() > 0
        assert isinstance(model.backbone.body.layer1[0].bn1, FrozenBatchNorm2d)


def test_training_and_inference_under_autocast(d2_fixtures: Path) -> None:
    """Mixed precision (here CPU bfloat16, the same code path as CUDA float16) keeps outputs float32."""
    model = _fixture_model(d2_fixtures, "fpn")
    path = d2_fixtures / "images" / "shapes_0000.png"
    reference = model.predict(path)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model.predict(path)
        model.train()
        losses = model([_training_item()])
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    assert mixed["boxes"].dtype == torch.float32 and mixed["masks"].dtype == torch.bool
    assert len(mixed["scores"]) > 0
    # the top detection survives reduced precision
    assert mixed["labels"][0] == reference["labels"][0]
    assert (mixed["boxes"][0] - reference["boxes"][0]).abs().max() < 3


# ------------------------------------------------------------------------------------------ load()

def test_load_weights_checks_architecture_and_round_trips(d2_fixtures: Path, tmp_path: Path) -> None:
    config = d2_fixtures / "fpn" / "config.yaml"
    model = load(config, weights=d2_fixtures / "fpn" / "weights_fp16.pth", overrides=list(LIGHT))
    assert not model.training and model.arch == "fpn"
    reference = _fpn(d2_fixtures).state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
    ours = tmp_path / "ours.pth"
    torch.save({"model": model.state_dict()}, ours)
    again = load(config, weights=ours, overrides=list(LIGHT))
    assert all(torch.equal(v, reference[k]) for k, v in again.state_dict().items())
    with pytest.raises(ArchitectureMismatchError, match="missing") as info:
        load(config, weights=d2_fixtures / "c4" / "weights_fp16.pth")
    assert "unexpected" in str(info.value)
    with pytest.raises(ArchitectureMismatchError, match="2 shape mismatches.*roi_heads.box_head.5.weight"):
        load(config, weights=d2_fixtures / "fpn" / "weights_fp16.pth", overrides=["MODEL.ROI_BOX_HEAD.FC_DIM", "512"])


def test_load_entry_without_weights_builds_its_architecture() -> None:
    model = load("mask_rcnn_fpn_1x_infomin", pretrained=False)
    assert model.arch == "fpn" and not model.training
    assert model.cfg.INPUT.FORMAT == "RGB" and model.cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    assert model.class_names[0] == "person" and len(model.class_names) == 80
    c4 = load("R_50_C4_1x", pretrained=False)
    assert c4.arch == "c4" and c4.roi_heads.res5_norm is not None
    assert c4.backbone.body.layer2[0].conv1.stride == (2, 2)  # supervised config: STRIDE_IN_1X1 True


def test_random_init_follows_detectron2_rules(d2_fixtures: Path) -> None:
    torch.manual_seed(0)
    state = build_model(load_config(d2_fixtures / "fpn" / "config.yaml", ["MODEL.FPN.NORM", ""])).state_dict()

    def std(key: str) -> float:
        return float(state[key].float().std())

    assert abs(std("rpn.head.conv.0.0.weight") - 0.01) < 0.001
    assert abs(std("roi_heads.box_predictor.cls_score.weight") - 0.01) < 0.001
    assert abs(std("roi_heads.box_predictor.bbox_pred.weight") - 0.001) < 0.0001
    assert abs(std("roi_heads.mask_predictor.mask_fcn_logits.weight") - 0.001) < 0.0002
    # kaiming normal, fan_out, relu: std sqrt(2 / (out_channels * k * k))
    assert abs(std("roi_heads.box_head.0.0.weight") - (2 / (256 * 9)) ** 0.5) < 0.002
    assert abs(std("roi_heads.mask_predictor.conv5_mask.weight") - (2 / (256 * 4)) ** 0.5) < 0.003
    # kaiming uniform a=1 ("xavier" in detectron2): bound sqrt(3 / fan_in)
    lateral = state["backbone.fpn.inner_blocks.3.0.weight"]
    assert float(lateral.abs().max()) <= (3 / 2048) ** 0.5 and float(lateral.abs().max()) > 0.9 * (3 / 2048) ** 0.5
    fc = state["roi_heads.box_head.5.weight"]
    assert float(fc.abs().max()) <= (3 / (256 * 49)) ** 0.5
    for key in ("rpn.head.conv.0.0.bias", "roi_heads.box_predictor.cls_score.bias", "roi_heads.box_head.5.bias",
                "backbone.fpn.inner_blocks.3.0.bias", "roi_heads.mask_predictor.mask_fcn_logits.bias"):
        assert not state[key].any(), key
