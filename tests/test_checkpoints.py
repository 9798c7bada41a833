"""Checkpoint reading, conversion and renaming: real files, real pickles, real torchvision weights."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from pycontrast_det.checkpoints import (
    convert_to_detectron2, converted_pretrain_path, d2_to_model, model_to_d2, read_checkpoint, write_d2_pkl,
    write_safetensors,
)
from pycontrast_det.cli import main as cli_main
from pycontrast_det.errors import ArchitectureMismatchError, CheckpointFormatError, UnsafeCheckpointError

REPO_ROOT = Path(__file__).resolve().parents[1]

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
R50_BLOCKS = (3, 4, 6, 3)


def _resnet_body(prefix: str, stages: range) -> list[str]:
    """Our torchvision-style ResNet-50 names, written out from the key table of the detectron2 parity notes (not
    from the code)."""
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
    # the inverse never drops a key silently; an unknown arch is a programming error
    with pytest.raises(CheckpointFormatError, match="'rpn.extra.weight' has no detectron2 name"):
        model_to_d2({"rpn.extra.weight": w}, "fpn")
    with pytest.raises(ValueError, match="arch must be one of"):
        d2_to_model(state, "retinanet")


# ---------------------------------------------------------------------------------------------------------
# pretrain conversion
# ---------------------------------------------------------------------------------------------------------

def _random_state(model: "torch.nn.Module", seed: int = 0) -> dict:
    """A state dict with every value random (BN weights and running stats included), so equality means something."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            out[k] = torch.randn(v.shape, generator=gen)
        else:
            out[k] = torch.randint(0, 1000, v.shape, generator=gen, dtype=v.dtype)
    return out


@pytest.fixture(scope="module")
def tv_r50() -> dict:
    return _random_state(torchvision.models.resnet50(weights=None))


def pycontrast_names(state: dict) -> dict:
    """PyContrast's convert_pretrained.py renaming, written out as its substring rules (the oracle)."""
    out = {}
    for k, v in state.items():
        if k.startswith("fc."):
            continue
        if "layer" not in k:
            k = "stem." + k
        for t in (1, 2, 3, 4):
            k = k.replace(f"layer{t}", f"res{t + 1}")
        for t in (1, 2, 3):
            k = k.replace(f"bn{t}", f"conv{t}.norm")
        k = k.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        out[k] = v.numpy()
    return out


def assert_same_state(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert isinstance(got[k], np.ndarray), k
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def _pycontrast_file(tv: dict, path: Path, with_ema: bool = False) -> Path:
    encoder = {f"module.encoder.{k}": v for k, v in tv.items() if not k.startswith("fc.")}
    heads = {"module.head.0.weight": torch.randn(2048, 2048), "module.head.2.weight": torch.randn(128, 2048),
             "module.head_jig.fc1.weight": torch.randn(4, 4)}
    obj = {"model": {**encoder, **heads}, "contrast": {"memory": torch.randn(100, 128)},
           "optimizer": {"state": {0: {"momentum_buffer": torch.randn(3)}}, "param_groups": [{"lr": 0.03}]},
           "epoch": 200}
    if with_ema:
        obj["model"] = {k: torch.zeros_like(v) for k, v in obj["model"].items()}  # EMA must come from model_ema
        obj["model_ema"] = {**{f"encoder.{k}": v for k, v in tv.items() if not k.startswith("fc.")},
                            "head.0.weight": torch.randn(2, 2)}
    torch.save(obj, path)
    return path


def _moco_file(tv: dict, path: Path) -> Path:
    q = {f"module.encoder_q.{k}": v for k, v in tv.items() if not k.startswith("fc.")}
    q.update({"module.encoder_q.fc.0.weight": torch.randn(2048, 2048), "module.encoder_q.fc.2.weight":
              torch.randn(128, 2048)})
    k = {f"module.encoder_k.{n}": torch.randn(1) for n in list(tv)[:5]}
    state = {**q, **k, "module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": {"state": {}}}, path)
    return path


def test_pycontrast_ema_moco_torchvision_and_safetensors_all_give_pycontrasts_318_keys(tv_r50, tmp_path):
    from safetensors.torch import save_file

    expected = pycontrast_names(tv_r50)
    assert len(expected) == 318
    sources = {
        "pycontrast": (_pycontrast_file(tv_r50, tmp_path / "InfoMin_200.pth"), False),
        "pycontrast-ema": (_pycontrast_file(tv_r50, tmp_path / "MoCov2.pth", with_ema=True), True),
        "moco": (_moco_file(tv_r50, tmp_path / "moco_v2_200ep_pretrain.pth.tar"), False),
        "pycontrast-legacy": (tmp_path / "PIRL_legacy.pth", False),  # pre-1.6 torch.save (not a zip)
        "torchvision": (tmp_path / "r50.pth", False),
        "safetensors": (tmp_path / "r50.safetensors", False),
    }
    torch.save(torch.load(sources["pycontrast"][0], weights_only=True), sources["pycontrast-legacy"][0],
               _use_new_zipfile_serialization=False)
    torch.save(tv_r50, sources["torchvision"][0])
    save_file({f"module.encoder.{k}": v.contiguous() for k, v in tv_r50.items()}, str(sources["safetensors"][0]))
    for label, (path, ema) in sources.items():
        state, report = convert_to_detectron2(path, ema=ema)
        assert_same_state(state, expected)
        assert report.ok and report.missing == [] and report.filled == [], label
        assert len(report.kept) == 318 and len(report.renamed) == 318, label
        assert report.stride_in_1x1 is False and report.input_format == "RGB"
        assert report.format == ("torchvision" if label == "torchvision" else
                                 "moco" if label == "moco" else "pycontrast"), label
    # what was dropped, and why
    _, report = convert_to_detectron2(sources["pycontrast"][0])
    assert report.dropped["module.head.0.weight"] == "projection head"
    assert report.dropped["module.head_jig.fc1.weight"] == "jigsaw projection head"
    assert {"contrast", "optimizer", "epoch"} <= set(report.dropped)
    _, report = convert_to_detectron2(sources["pycontrast-ema"][0], ema=True)
    assert report.dropped["model"].startswith("online encoder") and report.dropped["head.0.weight"]
    _, report = convert_to_detectron2(sources["pycontrast-ema"][0])
    assert report.dropped["model_ema"].startswith("EMA (momentum) encoder: pass ema=True")
    _, report = convert_to_detectron2(sources["moco"][0])
    assert report.dropped["module.queue"] == "MoCo negative queue"
    assert report.dropped["module.encoder_q.fc.0.weight"] == "classifier / projection fc"
    assert all(report.dropped[k].startswith("MoCo momentum") for k in report.dropped if "encoder_k" in k)
    _, report = convert_to_detectron2(sources["torchvision"][0])
    assert set(report.dropped) == {"fc.weight", "fc.bias"}


def _c2_blob_name(d2: str) -> str:
    """MSRA's caffe2 blob name for a detectron2 backbone name (detectron2's renaming read backwards)."""
    parts = d2.split(".")
    if parts[0] == "stem":
        layer, rest = "conv1", parts[2:]
    else:
        branch = {"shortcut": "branch1", "conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c"}[parts[2]]
        layer, rest = f"{parts[0]}_{parts[1]}_{branch}", parts[3:]
    if rest == ["weight"]:
        return f"{layer}_w"
    norm_layer = "res_conv1" if layer == "conv1" else layer
    return f"{norm_layer}_bn_" + {"weight": "s", "bias": "b"}[rest[1]]


def _py2_str(s: bytes) -> bytes:
    """A Python 2 str as pickle protocol 2 writes it (SHORT_BINSTRING / BINSTRING)."""
    return (b"U" + bytes([len(s)]) if len(s) < 256 else b"T" + struct.pack("<i", len(s))) + s


def py2_pickle(blobs: dict) -> bytes:
    """``{"blobs": {name: float32 array}}`` as Python 2 with numpy 1.x pickled it: MSRA's R-50.pkl layout
    (``numpy.core.multiarray._reconstruct``, array bytes in a Python 2 str)."""
    out = [b"\x80\x02}", _py2_str(b"blobs"), b"}"]
    for name, arr in blobs.items():
        out += [_py2_str(name.encode()), b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85",
                _py2_str(b"b"), b"\x87R(K\x01(" + b"".join(b"J" + struct.pack("<i", d) for d in arr.shape) + b"t",
                b"cnumpy\ndtype\n", _py2_str(b"f4"), b"K\x00K\x01\x87R(K\x03", _py2_str(b"<"),
                b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89",
                _py2_str(np.ascontiguousarray(arr, "<f4").tobytes()), b"tbs"]
    return b"".join(out) + b"s."


def test_msra_caffe2_blobs_get_detectron2s_names(tv_r50, tmp_path):
    expected = pycontrast_names(tv_r50)
    affine = {k: v for k, v in expected.items() if not k.endswith(("running_mean", "running_var", "tracked"))}
    blobs = {_c2_blob_name(k): v for k, v in affine.items()}
    assert {"conv1_w", "res_conv1_bn_s", "res2_0_branch2a_w", "res5_2_branch2c_bn_b", "res3_0_branch1_w"} <= set(blobs)
    blobs.update({"fc1000_w": np.zeros((1000, 2048), np.float32), "fc1000_b": np.zeros(1000, np.float32),
                  "res2_0_branch2a_w_momentum": np.zeros((64, 64, 1, 1), np.float32)})
    path = tmp_path / "R-50.pkl"
    path.write_bytes(py2_pickle(blobs))
    assert pickle.loads(path.read_bytes(), encoding="latin1")["blobs"].keys() == blobs.keys()  # a valid pickle
    state, report = convert_to_detectron2(path)
    # the same blobs pickled by Python 3 (protocol 2: bytes through _codecs.encode) convert the same
    py3 = tmp_path / "R-50-py3.pkl"
    py3.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
    assert_same_state(convert_to_detectron2(py3)[0], state)
    assert report.format == "msra_c2" and report.ok
    assert set(state) == set(expected) and len(state) == 318
    for k, v in affine.items():
        np.testing.assert_array_equal(state[k], v, err_msg=k)
    # affine-only norms: running stats are the identity detectron2 uses for them
    assert len(report.filled) == 53 * 3
    np.testing.assert_array_equal(state["res4.5.conv2.norm.running_var"], np.ones(256, np.float32))
    np.testing.assert_array_equal(state["stem.conv1.norm.running_mean"], np.zeros(64, np.float32))
    assert state["res2.0.shortcut.norm.num_batches_tracked"].dtype == np.int64
    assert report.stride_in_1x1 is True and report.input_format == "BGR"
    assert "STRIDE_IN_1X1 True" in report.summary()
    assert report.dropped["fc1000_w"] == "ImageNet classifier"
    assert report.dropped["res2_0_branch2a_w_momentum"] == "SGD momentum blob"
    assert report.groups == ["fc1000_* (2 tensors, ImageNet classifier)", "res2_* (1 tensor, SGD momentum blob)"]
    assert report.renamed["res_conv1_bn_s"] == "stem.conv1.norm.weight"
    assert report.renamed["res3_0_branch1_bn_b"] == "res3.0.shortcut.norm.bias"


def test_d2_pkl_written_and_read_back_exactly(tv_r50, tmp_path):
    expected = pycontrast_names(tv_r50)
    path = write_d2_pkl(expected, tmp_path / "out" / "infomin.pkl", author="tester")
    with open(path, "rb") as f:
        obj = pickle.load(f)  # our own file: plain pickle to check the exact structure detectron2 reads
    assert set(obj) == {"model", "__author__", "matching_heuristics"}
    assert obj["__author__"] == "tester" and obj["matching_heuristics"] is True
    assert_same_state(obj["model"], expected)
    # the safe reader reads it too, as a detectron2 backbone, and conversion is then the identity
    ckpt = read_checkpoint(path)
    assert ckpt.format == "detectron2" and set(ckpt.other_entries) == {"__author__", "matching_heuristics"}
    state, report = convert_to_detectron2(ckpt)
    assert_same_state(state, expected)
    assert report.renamed == {} and report.ok and report.stride_in_1x1 is None
    # MoCo's own converter keeps the MLP as stem.fc.*: dropped, not mistaken for another architecture
    moco_style = tmp_path / "moco_v2_converted.pkl"
    with open(moco_style, "wb") as f:
        pickle.dump({"model": {**expected, "stem.fc.0.weight": np.zeros((2048, 2048), np.float32)},
                     "__author__": "MOCO", "matching_heuristics": True}, f)
    state, report = convert_to_detectron2(moco_style)
    assert_same_state(state, expected)
    assert report.dropped["stem.fc.0.weight"].startswith("classifier / projection fc")
    # safetensors round trip keeps values and dtypes
    st = write_safetensors(expected, tmp_path / "infomin.safetensors", metadata={"format": "detectron2"})
    state, _ = convert_to_detectron2(st)
    assert_same_state(state, expected)
    assert not list(path.parent.glob(".*.tmp")), "temporary files left behind"


class _Payload:
    """Unpickling this creates a file: what a malicious checkpoint would do (a harmless stand-in)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path):
    # the payload is real: a plain pickle.load runs it
    witness = tmp_path / "witness"
    pickle.loads(pickle.dumps({"model": {"x": _Payload(witness)}})).get("model")["x"].close()
    assert witness.exists()

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"conv1.weight": np.zeros(3), "x": _Payload(marker)}}))
    with pytest.raises(UnsafeCheckpointError) as err:
        read_checkpoint(path)
    assert str(path) in str(err.value) and "io.open" in str(err.value)
    assert not marker.exists()
    # arrays of Python objects are not weights either
    objects = tmp_path / "objects.pkl"
    objects.write_bytes(pickle.dumps({"model": {"conv1_w": np.array([1, "x"], dtype=object)}}))
    with pytest.raises(UnsafeCheckpointError, match="array of Python objects"):
        read_checkpoint(objects)
    # same through the torch reader: torch.save of a payload, loaded with weights_only
    pth = tmp_path / "evil.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(3)}, "x": _Payload(marker)}, pth)
    with pytest.raises(UnsafeCheckpointError, match="evil.pth"):
        read_checkpoint(pth)
    assert not marker.exists()


def test_pth_with_non_tensor_object_is_refused(tmp_path):
    import argparse

    path = tmp_path / "with_args.pth"
    torch.save({"model": {"module.encoder.conv1.weight": torch.zeros(64, 3, 7, 7)},
                "opt": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"with_args\.pth.*weights_only"):
        read_checkpoint(path)


def test_html_pages_and_corrupt_files_are_format_errors_not_safety_errors(tv_r50, tmp_path):
    page = tmp_path / "InfoMin_800.pth"
    page.write_text("<!DOCTYPE html><html><body>This account's links are generating too much traffic</body></html>")
    with pytest.raises(CheckpointFormatError, match="HTML page") as err:
        read_checkpoint(page)
    assert not isinstance(err.value, UnsafeCheckpointError)
    good = tmp_path / "good.pth"
    torch.save({"model": {f"module.encoder.{k}": v for k, v in tv_r50.items()}}, good,
               _use_new_zipfile_serialization=False)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointFormatError, match="truncated.pth: not a readable torch checkpoint") as err:
        read_checkpoint(truncated)
    assert not isinstance(err.value, UnsafeCheckpointError)
    not_pickle = tmp_path / "R-50.pkl"
    not_pickle.write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointFormatError, match="R-50.pkl: not a readable pickle"):
        read_checkpoint(not_pickle)


def test_cmc_is_refused_with_a_reason(tmp_path):
    half = _random_state(torchvision.models.resnet50(weights=None, width_per_group=32))
    model = {f"module.encoder1.{k}": v for k, v in half.items()}
    model.update({f"module.encoder2.{k}": v for k, v in half.items()})
    path = tmp_path / "CMC.pth"
    torch.save({"model": model, "epoch": 200}, path)
    with pytest.raises(CheckpointFormatError, match=r"CMC.*L and ab.*RGB ResNet-50"):
        convert_to_detectron2(path)
    # the zoo manifest's format name says the same without reading the file's keys
    with pytest.raises(CheckpointFormatError, match=r"CMC.*L and ab"):
        read_checkpoint(path, format="pycontrast_cmc")
    # CLI: the same message, exit 2
    assert cli_main(["convert", str(path), str(tmp_path / "out.pkl")]) == 2
    assert not (tmp_path / "out.pkl").exists()


def test_other_architectures_are_refused(tmp_path):
    r18 = tmp_path / "r18.pth"
    torch.save(_random_state(torchvision.models.resnet18(weights=None)), r18)
    with pytest.raises(ArchitectureMismatchError, match=r"a ResNet-18 \(basic blocks 2, 2, 2, 2 .*not a ResNet-50"):
        convert_to_detectron2(r18)
    r101 = tmp_path / "r101.pth"
    torch.save(_random_state(torchvision.models.resnet101(weights=None)), r101)
    with pytest.raises(ArchitectureMismatchError, match=r"a ResNet-101 \(bottleneck blocks 3, 4, 23, 3"):
        convert_to_detectron2(r101)
    gray = _random_state(torchvision.models.resnet50(weights=None))
    gray["conv1.weight"] = gray["conv1.weight"][:, :1]
    path = tmp_path / "gray.pth"
    torch.save(gray, path)
    with pytest.raises(ArchitectureMismatchError, match="conv1 takes 1 input channels"):
        convert_to_detectron2(path)
    unknown = tmp_path / "vit.pth"
    torch.save({"model": {"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}}, unknown)
    with pytest.raises(CheckpointFormatError, match="unknown checkpoint layout: no ResNet-50"):
        convert_to_detectron2(unknown)


def test_wrong_format_or_ema_choice_gives_zero_keys_error(tv_r50, tmp_path):
    path = _pycontrast_file(tv_r50, tmp_path / "InsDis.pth")
    with pytest.raises(CheckpointFormatError, match="no ResNet-50 backbone weights found as format 'moco'"):
        convert_to_detectron2(path, format="moco")
    with pytest.raises(CheckpointFormatError, match="--ema asked for, but the file has no EMA copy"):
        convert_to_detectron2(path, ema=True)


def test_partial_backbone_is_reported_missing(tv_r50, tmp_path):
    partial = {k: v for k, v in tv_r50.items() if not k.startswith("layer4.2.")}
    path = tmp_path / "partial.pth"
    torch.save({"model": {f"module.encoder.{k}": v for k, v in partial.items()}}, path)
    with pytest.raises(CheckpointFormatError, match=r"is partial: 15 tensors missing \(res5\.2\.\* \(15 tensors\)\)"):
        convert_to_detectron2(path)


def test_d2_fixture_files_load_through_the_reader(d2_fixtures, tmp_path):
    for arch, expected in (("fpn", expected_fpn_keys()), ("c4", expected_c4_keys())):
        ckpt = read_checkpoint(d2_fixtures / arch / "weights_fp16.pth")
        assert ckpt.format == "detectron2"
        ours, report = d2_to_model(ckpt.state, arch, expected_keys=expected)
        assert report.ok and set(ours) == expected
        assert all(v.dtype == torch.float32 for k, v in ours.items() if not k.endswith("num_batches_tracked"))
        # a detectron2 training checkpoint saved from a DDP model: same mapping, extra entries set aside
        train_ckpt = tmp_path / f"{arch}_model_0004999.pth"
        torch.save({"model": {f"module.{k}": v for k, v in ckpt.state.items()}, "optimizer": {"state": {}},
                    "scheduler": {"last_epoch": 4999}, "iteration": 4999}, train_ckpt)
        again = read_checkpoint(train_ckpt)
        assert again.format == "detectron2" and set(again.other_entries) == {"optimizer", "scheduler", "iteration"}
        ours2, report2 = d2_to_model(again.state, arch, expected_keys=expected)
        assert report2.ok and all(torch.equal(ours2[k], ours[k]) for k in expected)
        # a full detector is not a backbone pretrain
        with pytest.raises(CheckpointFormatError, match="detector checkpoint"):
            convert_to_detectron2(ckpt)


def test_d2_fixture_weights_fill_our_built_models_exactly(d2_fixtures):
    from pycontrast_det.config import load_config
    from pycontrast_det.modeling import build_model

    for arch, expected in (("fpn", expected_fpn_keys()), ("c4", expected_c4_keys())):
        model = build_model(load_config(d2_fixtures / arch / "config.yaml"))
        own = model.state_dict()
        assert set(own) == expected, arch  # the key table and the model agree
        ckpt = read_checkpoint(d2_fixtures / arch / "weights_fp16.pth")
        ours, report = d2_to_model(ckpt.state, arch, expected_keys=own.keys())
        assert report.missing == () and report.unexpected == (), arch
        assert not [k for k, v in ours.items() if v.shape != own[k].shape]
        model.load_state_dict(ours, strict=True)
        d2_name = "roi_heads.box_predictor.cls_score.weight"
        assert torch.equal(model.state_dict()[d2_name], ckpt.state[d2_name].float())


# ---------------------------------------------------------------------------------------------------------
# cache and CLI
# ---------------------------------------------------------------------------------------------------------

def test_converting_twice_hits_the_cache(tv_r50, tmp_path, monkeypatch, _isolated_cache):
    from pycontrast_det.checkpoints import cache

    calls = []
    real = cache.convert_to_detectron2
    monkeypatch.setattr(cache, "convert_to_detectron2", lambda *a, **k: calls.append(a) or real(*a, **k))
    src = _pycontrast_file(tv_r50, tmp_path / "PIRL.pth")
    first = converted_pretrain_path(src)
    second = converted_pretrain_path(src)
    assert first == second and len(calls) == 1
    assert first.is_relative_to(_isolated_cache) and first.suffix == ".pkl"
    assert json.loads(first.with_suffix(".json").read_text())["format"] == "pycontrast"
    with open(first, "rb") as f:
        assert_same_state(pickle.load(f)["model"], pycontrast_names(tv_r50))
    # a copy with the same bytes elsewhere is the same entry; different bytes or the EMA choice are not
    copy = tmp_path / "copy" / "PIRL.pth"
    copy.parent.mkdir()
    shutil.copy(src, copy)
    assert converted_pretrain_path(copy) == first and len(calls) == 1
    ema_src = _pycontrast_file(tv_r50, tmp_path / "InfoMin.pth", with_ema=True)
    assert converted_pretrain_path(ema_src, ema=True) != first and len(calls) == 2


def test_cache_refuses_a_partial_backbone(tv_r50, tmp_path, _isolated_cache):
    path = tmp_path / "partial.pth"
    torch.save({k: v for k, v in tv_r50.items() if not k.startswith("layer1.0.")}, path)
    with pytest.raises(CheckpointFormatError, match="missing"):
        converted_pretrain_path(path)
    assert not list(_isolated_cache.rglob("*.pkl"))


def test_cli_convert_end_to_end(tv_r50, tmp_path, capsys):
    src = _moco_file(tv_r50, tmp_path / "moco.pth.tar")
    out = tmp_path / "moco.pkl"
    assert cli_main(["convert", str(src), str(out)]) == 0
    text = capsys.readouterr().out
    assert "kept: 318" in text and "module.encoder_q.layer1.0.bn1.weight -> res2.0.conv1.norm.weight" in text
    assert "dropped: module.queue (MoCo negative queue)" in text and "STRIDE_IN_1X1 False" in text
    with open(out, "rb") as f:
        assert_same_state(pickle.load(f)["model"], pycontrast_names(tv_r50))

    st = tmp_path / "moco.safetensors"
    assert cli_main(["convert", str(src), str(st), "--json-report", "--from", "moco"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["output"] == str(st) and report["to"] == "safetensors" and len(report["kept"]) == 318
    assert_same_state(convert_to_detectron2(st)[0], pycontrast_names(tv_r50))

    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in tv_r50.items() if not k.startswith("layer2.")}, partial)
    assert cli_main(["convert", str(partial), str(tmp_path / "partial.pkl"), "-q"]) == 2
    captured = capsys.readouterr()
    assert "partial: 65 tensors missing (res3.0.* (20 tensors)" in captured.err
    assert not (tmp_path / "partial.pkl").exists()


def test_cli_convert_runs_as_a_program_without_importing_torch_at_parse_time(tv_r50, tmp_path):
    probe = ("import sys, pycontrast_det.cli as c; c.build_parser(); "
             "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=REPO_ROOT,
                   env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    src = tmp_path / "tv.pth"
    torch.save(tv_r50, src)
    done = subprocess.run([sys.executable, "-m", "pycontrast_det", "convert", str(src), str(tmp_path / "o.pkl"),
                           "-q"], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0, done.stderr
    assert "kept: 318" in done.stdout and (tmp_path / "o.pkl").is_file()
