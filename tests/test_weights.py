"""The one loading path: weights specs resolved through the store, the format table, what a file holds, and
``load`` given a checkpoint alone or a misspelled name."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import pycontrast_det as pcd
from pycontrast_det import zoo
from pycontrast_det.checkpoints import TABLE, read_checkpoint, resolve_weights, weights_kind
from pycontrast_det.checkpoints.formats import (
    ALIASES, BACKBONE, DETECTOR_D2, DETECTOR_OURS, canonical_name, detect_format,
)
from pycontrast_det.cli import main
from pycontrast_det.errors import CheckpointFormatError, ConfigError, UnknownEntryError
from pycontrast_det.refs import WEIGHT_FORMATS

# key names each row of the format table must recognise (a new row adds its own here)
EXAMPLE_KEYS = {
    "pycontrast_cmc": ["module.encoder1.conv1.weight", "module.encoder2.conv1.weight"],
    "moco": ["module.encoder_q.conv1.weight", "module.encoder_k.conv1.weight", "module.queue"],
    "pycontrast": ["module.encoder.conv1.weight", "module.head.0.weight"],
    "msra_c2": ["conv1_w", "res_conv1_bn_s", "res2_0_branch2a_w", "fc1000_w"],
    "torchvision": ["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "fc.weight"],
    "detectron2": ["stem.conv1.weight", "res2.0.conv1.norm.weight"],
}


def test_format_table_rows_detect_their_files_and_match_the_manifest_names():
    assert {row.name for row in TABLE} == set(EXAMPLE_KEYS)
    for name, keys in EXAMPLE_KEYS.items():
        assert detect_format(keys).name == name, name
    assert {row.name for row in TABLE} | set(ALIASES) == WEIGHT_FORMATS  # the manifest's one list of names
    assert zoo.FORMATS == WEIGHT_FORMATS | {"text"}
    assert canonical_name("detectron2_pkl") == "detectron2" and canonical_name("safetensors") is None
    rgb = [row for row in TABLE if row.input_format == "RGB"]
    assert {row.name for row in rgb} == {"moco", "pycontrast", "torchvision"}
    assert all(row.stride_in_1x1 is False for row in rgb)
    assert detect_format(["res5_2_branch2c_w"]).stride_in_1x1 is True


def test_one_rule_says_what_a_file_holds():
    assert weights_kind(["backbone.body.conv1.weight", "roi_heads.box_predictor.cls_score.weight"]) == DETECTOR_OURS
    assert weights_kind(["module.rpn.head.conv.0.0.weight"]) == DETECTOR_OURS
    assert weights_kind(["backbone.bottom_up.stem.conv1.weight", "proposal_generator.rpn_head.conv.weight"]) \
        == DETECTOR_D2
    assert weights_kind(["backbone.stem.conv1.weight", "roi_heads.res5.0.conv1.weight"]) == DETECTOR_D2  # C4
    for keys in EXAMPLE_KEYS.values():
        assert weights_kind(keys) == BACKBONE
    # backbone.* alone is how self-supervised codebases (mmselfsup, solo-learn, DINO) name their encoder
    assert weights_kind(["backbone.conv1.weight", "backbone.layer1.0.conv1.weight", "neck.mlp.0.weight"]) == BACKBONE


def _manifest(tmp_path: Path, served: Path) -> Path:
    """A user manifest whose InfoMin pretrain and FPN InfoMin detector are local files (file:// URLs)."""
    def block(fmt: str) -> dict:
        data = served.read_bytes()
        return {"urls": [served.as_uri()], "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data),
                "format": fmt, "filename": served.name}

    entry = pcd.get_entry("mask_rcnn_fpn_1x_infomin")
    pretrain = pcd.get_pretrain(entry.pretrain)
    body = {"schema_version": 1, "merge": True,
            "pretrains": {pretrain.name: {"method": pretrain.method, "epochs": pretrain.epochs,
                                          "imagenet_top1": pretrain.imagenet_top1, "file": block("pycontrast")}},
            "entries": {entry.name: {"detector": "fpn", "schedule": "1x", "pretrain": pretrain.name,
                                     "config": str(entry.config_path), "box_ap": entry.box_ap,
                                     "mask_ap": entry.mask_ap, "published": True, "model": block("detectron2"),
                                     "log": None}}}
    path = tmp_path / "zoo-local.yaml"
    path.write_text(json.dumps(body))
    return path


def test_weights_specs_resolve_through_the_store(tmp_path, monkeypatch):
    weights = tmp_path / "weights.pth"
    torch.save({"model": {"backbone.body.conv1.weight": torch.zeros(1)}}, weights)
    assert resolve_weights(weights).path == weights and resolve_weights(weights.as_uri()).path == weights
    with pytest.raises(ConfigError, match="no such file"):
        resolve_weights(tmp_path / "missing.pth")
    with pytest.raises(UnknownEntryError, match=r"unknown entry or pretrain 'mask_rcnn_fpn_1x_infomn'.*Did you mean: "
                                                r"mask_rcnn_fpn_1x_infomin"):
        resolve_weights("mask_rcnn_fpn_1x_infomn")
    assert resolve_weights("rand") is None  # a pretrain that is random initialisation
    monkeypatch.setenv("PYCONTRAST_ZOO_MANIFEST", str(_manifest(tmp_path, weights)))
    detector = resolve_weights("mask_rcnn_fpn_1x_infomin")
    assert detector.format == "detectron2" and detector.path != weights  # a verified copy in the cache
    assert detector.path.read_bytes() == weights.read_bytes()
    pretrain = resolve_weights(pcd.get_entry("mask_rcnn_fpn_1x_infomin").pretrain)
    assert pretrain.format == "pycontrast" and pretrain.path.read_bytes() == weights.read_bytes()
    # a row without a published detector resolves to its pretrain
    c4 = resolve_weights("mask_rcnn_c4_1x_infomin")
    assert c4.path == pretrain.path and "no detector was published" in c4.origin


def test_convert_takes_a_pretrain_name(tmp_path, monkeypatch):
    import torchvision

    source = tmp_path / "InfoMin_200.pth"
    state = torchvision.models.resnet50().state_dict()
    torch.save({"model": {f"module.encoder.{k}": v for k, v in state.items()}}, source)
    monkeypatch.setenv("PYCONTRAST_ZOO_MANIFEST", str(_manifest(tmp_path, source)))
    out = tmp_path / "infomin.pkl"
    assert main(["convert", pcd.get_entry("mask_rcnn_fpn_1x_infomin").pretrain, str(out), "-q"]) == 0
    converted = read_checkpoint(out)
    assert len(converted.state) == 318
    assert torch.equal(torch.as_tensor(converted.state["res4.5.conv3.weight"]), state["layer3.5.conv3.weight"])


def test_load_names_what_it_cannot_find(tmp_path):
    with pytest.raises(UnknownEntryError, match=r"unknown entry 'mask_rcnn_fpn_1x_infomn'.*Did you mean: "
                                                r"mask_rcnn_fpn_1x_infomin"):
        pcd.load("mask_rcnn_fpn_1x_infomn")
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        pcd.load(tmp_path / "run" / "model_final.pth")
    lonely = tmp_path / "alone" / "model_final.pth"
    lonely.parent.mkdir()
    torch.save({"model": {"backbone.body.conv1.weight": torch.zeros(1)}, "iteration": 0}, lonely)
    with pytest.raises(ConfigError, match=r"no config is stored in this checkpoint and there is no config.yaml"):
        pcd.load(lonely)


def test_load_a_checkpoint_with_its_stored_config_and_classes(d2_fixtures, tmp_path):
    """A checkpoint that carries its config (YAML text) and classes needs nothing else."""
    from pycontrast_det.config import load_config
    from pycontrast_det.modeling import build_model

    cfg = load_config(d2_fixtures / "c4" / "config.yaml", ["MODEL.ROI_HEADS.NUM_CLASSES", "2"])
    state = build_model(cfg).state_dict()
    path = tmp_path / "model_final.pth"
    torch.save({"model": state, "iteration": 9, "config": cfg.dump(),
                "classes": {"names": ["cat", "hat"], "ids": [4, 9]}}, path)
    model = pcd.load(path)
    assert model.arch == "c4" and model.class_names == ["cat", "hat"] and model.classes.ids == (4, 9)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    torch.save({"model": state, "config": cfg.dump(), "classes": {"names": ["cat"], "ids": [4, 9]}}, path)
    with pytest.raises(CheckpointFormatError, match="'classes' entry is not"):
        pcd.load(path)
