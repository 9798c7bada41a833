"""The inference fast path (norms folded into convolutions, channels_last, fused sum/ReLU): same outputs as the
reference path, never stale after the weights change, training untouched; and mixed precision / batching."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pycontrast_det as pcd
from pycontrast_det import d2_to_model, load_config
from pycontrast_det.modeling import build_model
from pycontrast_det.modeling.fuse import ConvNormAct, FastPath
from pycontrast_det.modeling.norms import get_norm

REFERENCE = FastPath(fold_norms=False, channels_last=False, fuse_activations=False, parallel_roi_align=False)
LIGHT = ["INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST", "256", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
         "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50", "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200",
         "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _weights(root: Path, arch: str) -> dict[str, torch.Tensor]:
    state = torch.load(root / arch / "weights_fp16.pth", weights_only=True)["model"]
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _model(root: Path, arch: str = "fpn", overrides=(), device: str = "cpu"):
    model = build_model(load_config(root / arch / "config.yaml", LIGHT + list(overrides)))
    state, _ = d2_to_model(_weights(root, arch), arch, model.state_dict().keys())
    result = model.load_state_dict(state, strict=False)  # FrozenBN overrides: num_batches_tracked is unexpected
    assert not result.missing_keys and all(k.endswith("num_batches_tracked") for k in result.unexpected_keys)
    return model.to(device).eval()


def _features(model, item: dict, path: FastPath) -> dict[str, torch.Tensor]:
    """The backbone's features under ``path`` (the model's own settings are the default ones)."""
    with torch.inference_mode(), path.active():
        images, _ = model.preprocess([item])
        if path.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return {k: v.contiguous() for k, v in model.backbone(images).items()}


def _assert_features_close(a: dict, b: dict) -> None:
    for name in a:
        scale = max(1.0, float(b[name].abs().max()))
        assert float((a[name] - b[name]).abs().max()) <= 1e-4 * scale, name


def _training_item(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8, generator=g), "height": 96, "width": 128,
            "instances": {"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0], [70.0, 30.0, 120.0, 80.0]]),
                          "classes": torch.tensor([3, 7]),
                          "masks": [[[10, 20, 60, 20, 60, 90, 10, 90]], [[70, 30, 120, 30, 100, 80]]]}}


@pytest.fixture(scope="module")
def item(d2_fixtures: Path) -> dict:
    return _model(d2_fixtures).to_input(Image.open(d2_fixtures / "images" / "chelsea.png"))


# ------------------------------------------------------------------------------------------ the fold itself

@pytest.mark.parametrize("norm", ["BN", "SyncBN", "naiveSyncBN", "FrozenBN", "GN"])
def test_conv_norm_folds_every_affine_norm_and_only_those(norm: str) -> None:
    torch.manual_seed(0)
    block = ConvNormAct(torch.nn.Conv2d(8, 32, 3, padding=1, bias=False), get_norm(norm, 32), relu=True)
    layer = block[1]
    for name in ("weight", "bias", "running_mean"):
        if getattr(layer, name, None) is not None:
            getattr(layer, name).data.uniform_(-1, 1)
    if getattr(layer, "running_var", None) is not None:
        layer.running_var.uniform_(0.5, 2)
    block.eval()
    x = torch.randn(2, 8, 9, 11)
    expected = torch.relu(layer(block[0](x)))
    with torch.inference_mode():
        for path in (FastPath(), FastPath(channels_last=False), FastPath(fuse_activations=False)):
            with path.active():
                got = block(x.contiguous(memory_format=torch.channels_last) if path.channels_last else x)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # one cached fold per layout (switching layouts does not refold); group norm is per image: never folded
    assert set(block[0].__dict__.get("_fold_cache", {})) == (set() if norm == "GN" else {False, True})


def test_fast_path_is_on_by_default_and_equals_the_reference(d2_fixtures: Path, item: dict) -> None:
    model = _model(d2_fixtures)
    assert model.fast_path == FastPath(fold_norms=True, channels_last=True, fuse_activations=True,
                                       parallel_roi_align=True)
    _assert_features_close(_features(model, item, model.fast_path), _features(model, item, REFERENCE))
    with torch.inference_mode():
        fast = model([item])[0]
        model.fast_path = REFERENCE
        slow = model([item])[0]
    assert len(fast["scores"]) == len(slow["scores"]) > 0
    torch.testing.assert_close(fast["boxes"], slow["boxes"], atol=1e-3, rtol=0)
    torch.testing.assert_close(fast["scores"], slow["scores"], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ never stale

def test_folds_follow_every_change_of_the_weights(d2_fixtures: Path, item: dict) -> None:
    """After load_state_dict, a training step, .to() round trips and in-place edits, the next eval forward
    uses the new values (the fast path equals the reference path computed from the same weights)."""
    model = _model(d2_fixtures)
    first = _features(model, item, model.fast_path)

    def check(what: str) -> None:
        fast, reference = _features(model, item, model.fast_path), _features(model, item, REFERENCE)
        _assert_features_close(fast, reference)
        assert float((fast["p2"] - first["p2"]).abs().max()) > 1e-3, f"{what} changed nothing"

    state = {k: v.clone() for k, v in model.state_dict().items()}
    for key in [k for k in state if k.endswith("running_var")]:
        state[key] *= 1.5
    model.load_state_dict(state)
    check("load_state_dict")

    first = _features(model, item, model.fast_path)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    torch.manual_seed(0)
    sum(model([_training_item()]).values()).backward()
    optimizer.step()
    model.eval()
    check("a training step")

    first = _features(model, item, model.fast_path)
    model.to(torch.float64)
    with torch.no_grad():
        model.backbone.body.bn1.weight.mul_(1.25)
    model.to(torch.float32)
    check(".to() round trip")

    first = _features(model, item, model.fast_path)
    with torch.no_grad():
        model.backbone.body.layer1[0].conv1.weight.mul_(0.5)
    check("in-place edit")


@pytest.mark.parametrize("strides", [(4, 8, 16, 32), (16,)], ids=["fpn", "c4"])
def test_parallel_roi_align_equals_one_call(strides, monkeypatch) -> None:
    """RoIAlign split over 2 threads gives exactly the single call's values, in the heads' layout; it is used
    only without gradients (grad and inference modes are per thread, autograd needs the one call)."""
    from pycontrast_det.modeling import poolers

    calls = []
    real = poolers._parallel_roi_align
    monkeypatch.setattr(poolers, "_parallel_roi_align", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    gen = torch.Generator().manual_seed(0)
    features = [torch.randn(2, 8, 256 // s, 320 // s, generator=gen).contiguous(memory_format=torch.channels_last)
                for s in strides]
    boxes = []
    for _ in range(2):
        xy = torch.rand(150, 2, generator=gen) * 200
        boxes.append(torch.cat([xy, xy + 4 + torch.rand(150, 2, generator=gen) * 120], dim=1))
    pooler = poolers.ROIPooler(14, strides, sampling_ratio=0, aligned=True).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            with FastPath(parallel_roi_align=False).active():
                one = pooler(features, boxes)
            assert not calls
            with FastPath().active():
                split = pooler(features, boxes)
        assert calls and split.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(split, one)
        calls.clear()
        pooler(features, boxes)  # gradients enabled: one call per level
        assert not calls
    finally:
        torch.set_num_threads(threads)


def test_roi_align_per_image_threads_keeps_training_bit_identical(monkeypatch) -> None:
    """With gradients, RoIAlign runs one thread per image, forward and backward: outputs and the gradients of
    every level equal the single call's bit for bit (each image's boxes touch only its map, in their order)."""
    from pycontrast_det.modeling import poolers

    calls = []
    real = poolers._RoIAlignByImage.apply
    monkeypatch.setattr(poolers._RoIAlignByImage, "apply", lambda *a: calls.append(a[2]) or real(*a))
    gen = torch.Generator().manual_seed(0)
    strides = (4, 8, 16, 32)
    features = [torch.randn(3, 8, 256 // s, 320 // s, generator=gen, requires_grad=True) for s in strides]
    boxes = []
    for count in (90, 0, 60):  # an image without boxes gets a zero gradient
        xy = torch.rand(count, 2, generator=gen) * 200
        boxes.append(torch.cat([xy, xy + 4 + torch.rand(count, 2, generator=gen) * 120], dim=1))
    pooler = poolers.ROIPooler(7, strides, sampling_ratio=0, aligned=True).train()
    upstream = torch.randn(150, 8, 7, 7, generator=gen)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = []
        for path in (FastPath(parallel_roi_align=False), FastPath()):
            with path.active():
                pooled = pooler(features, boxes)
            results.append((pooled.detach(), torch.autograd.grad(pooled, features, upstream)))
    finally:
        torch.set_num_threads(threads)
    assert calls and all([image for image, _, _ in spans] == [0, 2] for spans in calls)
    (one, one_grads), (split, split_grads) = results
    assert torch.equal(split, one)
    assert all(torch.equal(a, b) for a, b in zip(split_grads, one_grads))
    assert all(float(g[1].abs().sum()) == 0 for g in split_grads)
    assert poolers._image_spans(torch.tensor([[1.0, 0, 0, 1, 1], [0.0, 0, 0, 1, 1]]), 2) == []  # not grouped


# ------------------------------------------------------------------------------------------ training

@pytest.mark.parametrize("overrides", [(), ("MODEL.RESNETS.NORM", "FrozenBN", "MODEL.BACKBONE.FREEZE_AT", "2")])
def test_training_losses_and_gradients_do_not_depend_on_the_fast_path(d2_fixtures: Path, overrides) -> None:
    """Training folds only frozen FrozenBN pairs (FREEZE_AT); losses and gradients equal the reference path's."""
    model = _model(d2_fixtures, overrides=overrides).train()
    results = []
    for path in (model.fast_path, REFERENCE):
        model.fast_path = path
        model.zero_grad()
        torch.manual_seed(0)
        losses = model([_training_item(0), _training_item(1)])
        sum(losses.values()).backward()
        results.append(({k: float(v.detach()) for k, v in losses.items()},
                        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (losses, grads), (ref_losses, ref_grads) = results
    assert losses.keys() == ref_losses.keys() and grads.keys() == ref_grads.keys()
    for key in losses:
        assert abs(losses[key] - ref_losses[key]) <= 1e-5 * max(1.0, abs(ref_losses[key])), key
    for name in grads:  # float-rounding differences of the fold, amplified by the heads' batch statistics
        error = float((grads[name] - ref_grads[name]).norm() / ref_grads[name].norm().clamp(min=1e-12))
        assert error <= 1e-2, (name, error)
    folded = {n for n, m in model.named_modules() if "_fold_cache" in m.__dict__}
    frozen = bool(overrides)
    assert bool(folded) == frozen and all(n.startswith(("backbone.body.conv1", "backbone.body.layer1")) for n in folded)


# ------------------------------------------------------------------------------------------ precision, batching

def test_predict_cli_refuses_fp16_off_cuda_before_loading(tmp_path: Path, capsys) -> None:
    from pycontrast_det.cli import main

    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    out = tmp_path / "out"
    assert main(["predict", "mask_rcnn_fpn_1x_rand", str(image), "--device", "cpu", "--precision", "fp16",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--precision fp16 needs a CUDA device (the device is cpu)" in err and err.count("\n") == 1
    assert not out.exists()


def test_precision_argument(d2_fixtures: Path) -> None:
    model = _model(d2_fixtures)
    image = np.asarray(Image.open(d2_fixtures / "images" / "shapes_0001.png").convert("RGB"))
    reference = model.predict(image)
    mixed = model.predict(image, precision="bf16")
    assert mixed["boxes"].dtype == torch.float32 and len(mixed["scores"]) > 0
    assert mixed["labels"][0] == reference["labels"][0]
    assert float((mixed["boxes"][0] - reference["boxes"][0]).abs().max()) < 3
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        model.predict(image, precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        model.predict(image, precision="int8")


@needs_cuda
def test_cuda_batched_predict_is_one_forward_pass(d2_fixtures: Path) -> None:
    model = _model(d2_fixtures, device="cuda")
    paths = [d2_fixtures / "images" / f"shapes_000{i}.png" for i in (1, 2, 3)]  # same size: same padding
    calls = []
    handle = model.backbone.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        batched = model.predict(paths)
    finally:
        handle.remove()
    assert calls == [3]
    for path, b in zip(paths, batched):
        single = model.predict(path, batch_size=1)
        assert single["labels"].tolist() == b["labels"].tolist() and len(b["scores"]) > 0
        torch.testing.assert_close(b["boxes"], single["boxes"], atol=1e-2, rtol=0)
        torch.testing.assert_close(b["scores"], single["scores"], atol=1e-3, rtol=0)


@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_mixed_precision_keeps_the_shapes_ap(d2_fixtures: Path, precision: str, tmp_path: Path) -> None:
    """AP of the FPN fixture model on the shapes val images: autocast changes it by at most 0.1."""
    from pycontrast_det.modeling.meta_arch import precision_context

    model = build_model(load_config(d2_fixtures / "fpn" / "config.yaml"))
    state, _ = d2_to_model(_weights(d2_fixtures, "fpn"), "fpn", model.state_dict().keys())
    model.load_state_dict(state)
    model = model.cuda().eval()

    def run(batch: list[dict], precision: str) -> list[dict]:
        with torch.inference_mode(), precision_context(precision, model.device):
            return model(batch)

    fp32 = pcd.evaluate(lambda batch: run(batch, "fp32"), "shapes", device="cuda", cfg=model.cfg,
                        output_dir=tmp_path / "fp32")
    mixed = pcd.evaluate(lambda batch: run(batch, precision), "shapes", device="cuda", cfg=model.cfg,
                         output_dir=tmp_path / precision)
    for task in ("bbox", "segm"):
        assert fp32.metrics[task]["AP"] > 10, (task, fp32.metrics[task])
        assert abs(mixed.metrics[task]["AP"] - fp32.metrics[task]["AP"]) <= 0.1, (task, fp32.metrics, mixed.metrics)


@needs_cuda
def test_cuda_fast_path_equals_the_reference(d2_fixtures: Path, item: dict, monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # compare the fold, not TF32 convolutions
    model = _model(d2_fixtures, device="cuda")
    _assert_features_close(_features(model, item, model.fast_path), _features(model, item, REFERENCE))
