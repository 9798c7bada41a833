"""Bring your own pretrain (issue 17): one torchvision ResNet-50, saved as today's self-supervised codebases
save it, converts from every layout to the plain file's detectron2 weights; the evaluated encoder is chosen,
--key / --prefix choose by hand, other networks are refused in one line."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import torchvision

from pycontrast_det.engine import RunOptions
from pycontrast_det.checkpoints import convert_to_detectron2, open_weights
from pycontrast_det.checkpoints.encoders import EncoderChoice
from pycontrast_det.checkpoints.names import Kind, parse_name, split_choice
from pycontrast_det.cli import main as cli_main
from pycontrast_det.errors import ArchitectureMismatchError, CheckpointFormatError, ConfigError

FC = ("fc.weight", "fc.bias")
SEQUENTIAL = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}


@pytest.fixture(scope="module")
def r50() -> dict[str, torch.Tensor]:
    """A torchvision ResNet-50 state dict with random BatchNorm statistics (so that every tensor is distinct)."""
    gen = torch.Generator().manual_seed(17)
    state = torchvision.models.resnet50(weights=None).state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            state[key] = torch.randn(value.shape, generator=gen)
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=gen) + 0.5
    return state


@pytest.fixture(scope="module")
def other(r50) -> dict[str, torch.Tensor]:
    """A second, different ResNet-50 (the momentum / student / target copy): equal results mean the right one."""
    return {k: (v + 1 if v.is_floating_point() else v.clone()) for k, v in r50.items()}


@pytest.fixture(scope="module")
def plain(r50, tmp_path_factory) -> dict[str, np.ndarray]:
    """The plain file's detectron2 weights: what every layout must give."""
    path = tmp_path_factory.mktemp("plain") / "r50.pth"
    torch.save(r50, path)
    state, report = convert_to_detectron2(path)
    assert report.ok and len(state) == 318 and report.format == "torchvision"
    return state


def _under(prefix: str, state: dict, fc: bool = False) -> dict:
    return {f"{prefix}{k}": v for k, v in state.items() if fc or k not in FC}


def _sequential(prefix: str, state: dict) -> dict:
    """``nn.Sequential(*list(resnet.children())[:-1])``'s names: conv1 -> 0, bn1 -> 1, layer1..4 -> 4..7."""
    out = {}
    for k, v in state.items():
        head, _, rest = k.partition(".")
        if head in SEQUENTIAL:
            out[f"{prefix}{SEQUENTIAL[head]}.{rest}"] = v
    return out


def _optimizer() -> dict:
    return {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}


def _mlp(prefix: str, n: int = 2) -> dict:
    return {f"{prefix}{i * 2}.weight": torch.randn(4, 4) for i in range(n)}


# layout -> (builder(r50, other) -> object to torch.save, where the evaluated encoder is, groups dropped)
LAYOUTS: dict[str, tuple[Callable[[dict, dict], dict], str, tuple[str, ...]]] = {
    "moco_v3": (lambda a, b: {
        "epoch": 100, "arch": "resnet50", "optimizer": _optimizer(),
        "state_dict": {**_under("module.base_encoder.", a), **_mlp("module.base_encoder.fc."),
                       **_under("module.momentum_encoder.", b), **_mlp("module.momentum_encoder.fc."),
                       **_mlp("module.predictor.", 3)}},
        "state_dict.module.base_encoder",
        ("module.momentum_encoder.* (320 tensors, another ResNet-50 (momentum)",
         "module.predictor.* (3 tensors, predictor)", "optimizer.* (1 tensor, optimizer state)")),
    "moco_v2": (lambda a, b: {
        "epoch": 200, "arch": "resnet50", "optimizer": _optimizer(),
        "state_dict": {**_under("module.encoder_q.", a), **_mlp("module.encoder_q.fc."),
                       **_under("module.encoder_k.", b), "module.queue": torch.randn(4, 8)}},
        "state_dict.module.encoder_q", ("module.encoder_q.fc.* (2 tensors, classifier / projection fc)",
                                        "module.encoder_k.* (318 tensors, MoCo momentum (key) encoder)",
                                        "module.queue (1 tensor, MoCo negative queue)")),
    "dino": (lambda a, b: {
        "teacher": {**_under("backbone.", a), **_mlp("head.mlp.", 3), "head.last_layer.weight_g": torch.ones(1, 4)},
        "student": {**_under("module.backbone.", b), **_mlp("module.head.mlp.", 3)},
        "optimizer": _optimizer(), "epoch": 100, "dino_loss": {"center": torch.zeros(1, 4)}},
        "teacher.backbone",
        ("head.* (4 tensors, projection head)", "student.* (321 tensors, another ResNet-50 (student)",
         "dino_loss.* (1 tensor, loss state)")),
    "mmselfsup": (lambda a, b: {
        "meta": {"epoch": 200, "mmselfsup_version": "0.9.1", "config": "model = dict(type='MoCo')"},
        "state_dict": {**_under("backbone.", a), **_mlp("neck.mlp."), **_mlp("head.predictor.")},
        "optimizer": _optimizer()},
        "state_dict.backbone", ("neck.* (2 tensors, projection neck)", "head.* (2 tensors, projection head)",
                                "meta (not tensors)")),
    "solo_learn": (lambda a, b: {
        "epoch": 400, "global_step": 10,
        "state_dict": {**_under("backbone.", a), **_mlp("projector."), **_under("momentum_backbone.", b),
                       **_mlp("momentum_projector.")}},
        "state_dict.backbone", ("momentum_backbone.* (318 tensors, another ResNet-50 (momentum)",
                                "projector.* (2 tensors, projection head)")),
    "vissl": (lambda a, b: {
        "phase_idx": 3, "iteration": 100, "loss": {"queue": torch.zeros(2, 2)},
        "classy_state_dict": {"base_model": {"model": {
            "trunk": _under("_feature_blocks.", a), "heads": _mlp("0.clf.")}}}},
        "classy_state_dict.base_model.model.trunk._feature_blocks",
        ("classy_state_dict.base_model.model.heads.* (2 tensors, heads)", "loss.* (1 tensor, loss state)")),
    "swav_barlow": (lambda a, b: {
        **_under("module.", a), **_mlp("module.projection_head."), "module.prototypes.weight": torch.randn(30, 4)},
        "module",
        ("module.projection_head.* (2 tensors, projection head)", "module.prototypes.* (1 tensor, prototypes)")),
    "simclr_lightly": (lambda a, b: {
        "state_dict": {**_sequential("backbone.", a), **_mlp("projection_head.layers.")}, "epoch": 5},
        "state_dict.backbone", ("projection_head.* (2 tensors, projection head)",)),
    "byol": (lambda a, b: {
        "online_network_state_dict": {**_sequential("encoder.", a), **_mlp("projetion.net.")},
        "target_network_state_dict": {**_sequential("encoder.", b), **_mlp("projetion.net.")},
        "optimizer_state_dict": _optimizer()},
        "online_network_state_dict.encoder", ("target_network_state_dict.* (320 tensors, another ResNet-50 (target)",)),
    "lightning": (lambda a, b: {
        "epoch": 9, "global_step": 1000, "pytorch-lightning_version": "2.1.0",
        "state_dict": {**_under("model.backbone.", a, fc=True), **_mlp("model.head.")},
        "optimizer_states": [_optimizer()], "lr_schedulers": [{"last_epoch": 9}]},
        "state_dict.model.backbone", ("model.backbone.fc.* (2 tensors", "model.head.* (2 tensors, projection head)",
                                      "optimizer_states.* (1 tensor, optimizer state)")),
}


def _save(tmp_path: Path, name: str, r50: dict, other: dict) -> Path:
    path = tmp_path / f"{name}.pth"
    torch.save(LAYOUTS[name][0](r50, other), path)
    return path


def _same(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)


@pytest.fixture(scope="module")
def layout_files(r50, other, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("layouts")
    return {name: _save(folder, name, r50, other) for name in LAYOUTS}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_each_layout_converts_to_the_plain_files_weights(name, layout_files, plain):
    state, report = convert_to_detectron2(layout_files[name])
    _same(state, plain)
    _, where, groups = LAYOUTS[name]
    assert ".".join(filter(None, [report.container, report.prefix.rstrip(".")])) == where
    for group in groups:
        assert any(line.startswith(group) for line in report.groups), (group, report.groups)
    assert report.stride_in_1x1 is False and report.input_format == "RGB"
    assert "stride 2 in the 3x3 conv, RGB input normalised by ImageNet mean/std" in report.convention
    text = report.summary(verbose=False)
    assert f"found: a ResNet-50 ({report.names} names) in {report.container or 'the top level'} under prefix" in text


def test_the_evaluated_encoder_is_chosen_and_the_rule_is_said(layout_files, other, tmp_path):
    _, report = convert_to_detectron2(layout_files["dino"])
    assert report.chosen.startswith("chosen by the rule: the network each method evaluates: teacher over student")
    assert report.also == ["student under prefix 'module.backbone.' (torchvision names)"]
    _, report = convert_to_detectron2(layout_files["mmselfsup"])
    assert report.chosen == "the only ResNet-50" and report.also == []
    # two ResNet-50s that no rule tells apart: one line listing them, and how to choose
    path = tmp_path / "two.pth"
    torch.save({"net_a": _under("", other), "net_b": _under("", other)}, path)
    with pytest.raises(CheckpointFormatError) as err:
        convert_to_detectron2(path)
    message = str(err.value)
    assert "\n" not in message and "2 ResNet-50s and no rule to choose" in message
    assert "--key net_a (net_a under prefix '' (torchvision names)); --key net_b" in message


def test_key_and_prefix_choose_by_hand(layout_files, r50, other, plain, tmp_path, capsys):
    expected_other = convert_to_detectron2(_plain_file(tmp_path, other))[0]
    state, report = convert_to_detectron2(layout_files["dino"], choice=EncoderChoice(key="student"))
    _same(state, expected_other)
    assert report.chosen == "chosen by hand" and report.also == ["teacher under prefix 'backbone.' (torchvision names)"]
    state, _ = convert_to_detectron2(layout_files["moco_v3"], choice=EncoderChoice(prefix="module.momentum_encoder."))
    _same(state, expected_other)
    state, _ = convert_to_detectron2(layout_files["byol"], choice=EncoderChoice(key="target_network_state_dict"))
    _same(state, expected_other)
    with pytest.raises(CheckpointFormatError, match=r"--key nowhere matches none of its ResNet-50s: --key teacher"):
        convert_to_detectron2(layout_files["dino"], choice=EncoderChoice(key="nowhere"))
    # the CLI: options, and the FILE#key=... form every other command takes
    out = tmp_path / "student.pkl"
    assert cli_main(["convert", str(layout_files["solo_learn"]), str(out), "-q", "--prefix", "momentum_backbone"]) == 0
    assert "chosen by hand" in capsys.readouterr().out
    with open(out, "rb") as f:
        _same(pickle.load(f)["model"], expected_other)
    assert cli_main(["convert", f"{layout_files['dino']}#key=student.module", str(out), "-q"]) == 0
    with open(out, "rb") as f:
        _same(pickle.load(f)["model"], expected_other)
    assert cli_main(["convert", str(layout_files["dino"]), str(out), "-q"]) == 0
    with open(out, "rb") as f:
        _same(pickle.load(f)["model"], plain)
    # --from names the naming scheme; it no longer takes backbone.* for a detector (issue 17: mmselfsup)
    assert cli_main(["convert", str(layout_files["mmselfsup"]), str(out), "-q", "--from", "torchvision"]) == 0
    with open(out, "rb") as f:
        _same(pickle.load(f)["model"], plain)


def _plain_file(tmp_path: Path, state: dict) -> Path:
    path = tmp_path / "plain_other.pth"
    torch.save(state, path)
    return path


def test_safetensors_files_in_these_layouts(r50, other, plain, tmp_path):
    from safetensors.torch import save_file

    timm_style = tmp_path / "model.safetensors"  # as the Hub serves timm's resnet50 (fc included)
    save_file({k: v.contiguous() for k, v in r50.items()}, str(timm_style))
    state, report = convert_to_detectron2(timm_style)
    _same(state, plain)
    assert report.groups == ["fc.* (2 tensors, classifier / projection fc)"]
    moco_v3 = tmp_path / "moco_v3.safetensors"  # a flat MoCo v3 state dict with both encoders
    save_file({k: v.contiguous() for k, v in LAYOUTS["moco_v3"][0](r50, other)["state_dict"].items()}, str(moco_v3))
    state, report = convert_to_detectron2(moco_v3)
    _same(state, plain)
    assert report.prefix == "module.base_encoder." and report.container == ""


def test_other_networks_are_refused_in_one_line(tmp_path):
    vit = tmp_path / "dino_vits16.pth"
    blocks = {f"blocks.{i}.attn.qkv.weight": torch.zeros(6, 2) for i in range(12)}
    torch.save({"teacher": {"backbone.patch_embed.proj.weight": torch.zeros(2, 3, 16, 16),
                            "backbone.cls_token": torch.zeros(1, 1, 2),
                            **{f"backbone.{k}": v for k, v in blocks.items()}}}, vit)
    with pytest.raises(CheckpointFormatError) as err:
        convert_to_detectron2(vit)
    assert "\n" not in str(err.value)
    assert "a Vision Transformer (patch_embed, blocks.0-11), not a ResNet-50" in str(err.value)
    r18 = tmp_path / "r18.pth"
    torch.save({"state_dict": _under("module.encoder_q.", torchvision.models.resnet18(weights=None).state_dict())}, r18)
    with pytest.raises(ArchitectureMismatchError) as err:
        convert_to_detectron2(r18)
    assert "\n" not in str(err.value)
    assert "is a ResNet-18 (basic blocks 2, 2, 2, 2 in its 4 stages), not a ResNet-50" in str(err.value)
    assert cli_main(["convert", str(vit), str(tmp_path / "out.pkl")]) == 2
    assert not (tmp_path / "out.pkl").exists()


def test_partial_resnet50_is_an_error_naming_what_is_missing(r50, tmp_path):
    path = tmp_path / "partial.pth"
    state = {k: v for k, v in r50.items() if not k.startswith(("layer3.5.", "layer4.0.downsample"))}
    torch.save({"state_dict": _under("module.base_encoder.", state)}, path)
    with pytest.raises(CheckpointFormatError, match=r"is partial: 20 tensors missing \(res4\.5\.\* \(15 tensors\), "
                                                    r"res5\.0\.\* \(5 tensors\)\)"):
        convert_to_detectron2(path)


def test_backbone_names_are_a_pretrain_and_detectors_still_detectors(layout_files, d2_fixtures):
    opened = open_weights(layout_files["mmselfsup"])
    assert opened is not None and opened.kind == "backbone pretrain" and opened.encoder is not None
    detector = open_weights(d2_fixtures / "fpn" / "weights_fp16.pth")
    assert detector is not None and detector.kind == "detector (detectron2 names)"


def test_names_say_what_a_string_names(layout_files, tmp_path):
    path = layout_files["dino"]
    assert split_choice(f"{path}#key=teacher&prefix=backbone.") == (str(path), EncoderChoice("teacher", "backbone."))
    assert split_choice(f"{path}#ema")[1] == EncoderChoice(ema=True)
    assert split_choice("notes#3.pth") == ("notes#3.pth", EncoderChoice())  # not a choice: part of the name
    with pytest.raises(ConfigError, match="each once"):
        split_choice(f"{path}#key=a&key=b")
    cases = {
        str(path): Kind.FILE, f"{path}#key=student": Kind.FILE, f"file://{path}": Kind.FILE,
        str(tmp_path / "absent.pth"): Kind.MISSING_FILE,
        "detectron2://ImageNetPretrained/MSRA/R-50.pkl": Kind.DETECTRON2,
        "hf://org/repo/mask_rcnn_fpn_1x_infomin": Kind.PUBLISHED, "hf://org/repo/weights.safetensors": Kind.URL,
        "https://example.org/r50.pth": Kind.URL, "mask_rcnn_fpn_1x_infomin": Kind.ENTRY, "infomin": Kind.PRETRAIN,
        "R_50_FPN_1x_infomin": Kind.CONFIG, "no_such_thing": Kind.UNKNOWN,
    }
    for spec, kind in cases.items():
        assert parse_name(spec).kind is kind, spec
    assert parse_name(f"{path}#key=student").choice == EncoderChoice(key="student")


def test_load_takes_the_chosen_encoder(layout_files, r50, other):
    import pycontrast_det as pcd

    model = pcd.load("mask_rcnn_fpn_1x_infomin", weights=str(layout_files["dino"]))
    conv1 = model.state_dict()["backbone.body.conv1.weight"]
    assert torch.equal(conv1, r50["conv1.weight"])
    model = pcd.load("mask_rcnn_fpn_1x_infomin", weights=f"{layout_files['dino']}#key=student")
    assert torch.equal(model.state_dict()["backbone.body.layer4.2.bn3.running_var"],
                       other["layer4.2.bn3.running_var"])


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_reproduce_dry_run_says_what_was_found(name, layout_files, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["reproduce", "mask_rcnn_fpn_1x_infomin", "--pretrain", str(layout_files[name]), "--dry-run",
                     "--output", str(out)]) == 0
    text = " ".join(capsys.readouterr().out.split())  # the notes are wrapped
    _, where, groups = LAYOUTS[name]
    assert "found: a ResNet-50" in text and "input convention: torchvision-style ResNet" in text
    assert f"dropped: {groups[0]}" in text
    assert not out.exists()


def test_reproduce_dry_run_takes_a_choice(layout_files, tmp_path, capsys):
    spec = f"{layout_files['dino']}#key=student"
    assert cli_main(["reproduce", "mask_rcnn_fpn_1x_infomin", "--pretrain", spec, "--dry-run",
                     "--output", str(tmp_path / "o")]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "found: a ResNet-50 (torchvision names) in student under prefix 'module.backbone.': chosen by hand" in text


def test_detectron2_loads_a_converted_layout(layout_files, tmp_path):
    pytest.importorskip("detectron2", reason="detectron2 is not installed here; the converted file is checked "
                                             "against detectron2's key table by the other tests")
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    out = tmp_path / "dino.pkl"
    assert cli_main(["convert", str(layout_files["dino"]), str(out), "-q"]) == 0
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    checkpointer = DetectionCheckpointer(model)
    result = checkpointer._load_model(checkpointer._load_file(str(out)))
    assert not [k for k in result.missing_keys if k.startswith("backbone.bottom_up.")]


def test_finetune_takes_a_chosen_encoder(layout_files, tmp_path):
    from pycontrast_det.recipes.finetune import plan_finetune

    spec = f"{layout_files['byol']}#key=target_network_state_dict"
    plan = plan_finetune(spec, "shapes", config="R_50_FPN_1x_infomin",
                         options=RunOptions(output_dir=tmp_path / "ft"))
    weights = plan.cfg().MODEL.WEIGHTS
    assert weights == spec
    opened = open_weights(weights)
    assert opened is not None and opened.encoder is not None
    assert opened.encoder.chosen.location == "target_network_state_dict.encoder"
    assert opened.encoder.reason == "chosen by hand"
    with pytest.raises(ConfigError, match="no config is stored with these weights"):
        plan_finetune(str(layout_files["byol"]), "shapes", options=RunOptions(output_dir=tmp_path / "ft2"))
