"""``reproduce``: the plan and exact commands for every zoo entry offline, a user's own pretrain, the
detectron2 engine's missing-dependency error, and one real (tiny) end-to-end run on shapes."""
from __future__ import annotations

import json
import os
import shlex
import statistics
import sys
from pathlib import Path

import pytest

from pycontrast_det.cli import main
from pycontrast_det.config import load_config
import torch

from pycontrast_det.engine import RunOptions
from pycontrast_det.recipes import plan_reproduction, reproduce
from pycontrast_det.reports import parse_log
from pycontrast_det.engine.checkpoint import load_training_checkpoint
from pycontrast_det.errors import ConfigError, Detectron2NotInstalledError
from pycontrast_det.zoo import load_manifest

ENTRIES = list(load_manifest().entries.values())


def _command(out: str, program: str) -> list[str]:
    """The printed command starting with ``program``, its backslash-continued lines joined, as argv."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(program))
    end = next(i for i in range(start, len(lines)) if not lines[i].endswith("\\"))
    # wrapped to 112 columns; only a single KEY VALUE pair (a long path) may be longer
    assert all(len(line) <= 112 or len(shlex.split(line.rstrip("\\"))) <= 2 for line in lines[start:end + 1])
    return shlex.split(" ".join(line.rstrip("\\") for line in lines[start:end + 1]))


def _value(words: list[str], key: str) -> str:
    return words[len(words) - 1 - words[::-1].index(key) + 1]  # the last occurrence wins, as in detectron2


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_dry_run_prints_the_exact_commands_offline(entry, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PYCONTRAST_ZOO_OFFLINE", "1")
    home = Path(os.environ["PYCONTRAST_ZOO_HOME"])
    out_dir = tmp_path / "out"
    assert main(["reproduce", entry.name, "--dry-run", "--output", str(out_dir)]) == 0
    out = capsys.readouterr().out
    d2 = _command(out, "python tools/train_net.py")
    assert d2[:6] == ["python", "tools/train_net.py", "--num-gpus", "8", "--config-file", str(entry.config_path)]
    ours = _command(out, "pycontrast-zoo train")
    assert _value(ours, "--config") == str(entry.config_path)
    pretrain = load_manifest().pretrain(entry.pretrain)
    if pretrain.file is None:
        assert _value(d2, "MODEL.WEIGHTS") == _value(ours, "MODEL.WEIGHTS") == ""
    elif entry.pretrain == "supervised":
        assert _value(d2, "MODEL.WEIGHTS") == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
        assert _value(ours, "MODEL.WEIGHTS") == str(out_dir / "pretrain_supervised.pkl")
    else:
        assert _value(d2, "MODEL.WEIGHTS") == _value(ours, "MODEL.WEIGHTS") == str(
            out_dir / f"pretrain_{entry.pretrain}.pkl")
        assert pretrain.file.urls[0] in out
    assert f"box AP {entry.box_ap:.1f}, mask AP {entry.mask_ap:.1f}" in out
    assert ("Res5ROIHeadsExtraNorm" in out) == (entry.detector == "c4")
    # the effective config is exactly the entry's (plus weights and output folder)
    cfg = load_config(entry.config_path, ours[ours.index("MODEL.WEIGHTS"):])
    assert cfg.SOLVER.MAX_ITER == load_config(entry.config_path).SOLVER.MAX_ITER
    assert not out_dir.exists()
    assert not any(home.rglob("*"))  # nothing fetched, converted or generated


def test_dry_run_shapes_protocol_and_scaling(capsys, tmp_path):
    assert main(["reproduce", "mask_rcnn_fpn_2x_infomin", "--dataset", "shapes", "--dry-run", "--max-iter", "40",
                 "--output", str(tmp_path / "o"), "SOLVER.BASE_LR", "0.005"]) == 0
    out = capsys.readouterr().out
    ours = _command(out, "pycontrast-zoo train")
    cfg = load_config(_value(ours, "--config"), ours[ours.index("DATASETS.TRAIN"):])
    assert list(cfg.DATASETS.TRAIN) == ["shapes_train"] and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3
    assert cfg.SOLVER.MAX_ITER == 40 and list(cfg.SOLVER.STEPS) == [30, 36]
    assert cfg.SOLVER.BASE_LR == 0.005  # the user's override comes last
    assert cfg.MODEL.RESNETS.NORM == "SyncBN" and cfg.INPUT.FORMAT == "RGB"  # the entry's model otherwise
    assert "shapes protocol" in out

    plan = plan_reproduction("mask_rcnn_fpn_1x_supervised", RunOptions(num_gpus=4, scale_to_batch=8))
    assert plan.config().SOLVER.BASE_LR == pytest.approx(0.01) and plan.config().SOLVER.MAX_ITER == 180000
    d2 = shlex.split(plan.detectron2_command())
    assert d2[3] == "4" and _value(d2, "SOLVER.IMS_PER_BATCH") == "8" and _value(d2, "SOLVER.MAX_ITER") == "180000"
    assert "linear scaling rule applied" in plan.render()


def test_schedule_switch_and_errors():
    assert plan_reproduction("mask_rcnn_fpn_1x_infomin", schedule="6x").entry == "mask_rcnn_fpn_6x_infomin"
    with pytest.raises(ConfigError, match="no FPN row for pretrain 'pirl'.*1x, 2x"):
        plan_reproduction("mask_rcnn_fpn_1x_pirl", schedule="6x")
    with pytest.raises(ConfigError, match="--engine"):
        plan_reproduction("mask_rcnn_fpn_1x_rand", engine="mmdet")
    with pytest.raises(ConfigError, match="SOLVER.BASE_LRR"):
        plan_reproduction("mask_rcnn_fpn_1x_rand", overrides=["SOLVER.BASE_LRR", "0.1"])


@pytest.fixture
def user_resnet(tmp_path) -> Path:
    """A user's own pre-trained ResNet-50: a torchvision state dict (random values, real layout)."""
    import torch
    import torchvision

    path = tmp_path / "my_resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    return path


def test_user_pretrain_in_the_plan_and_converted(user_resnet, capsys, tmp_path):
    from pycontrast_det.checkpoints import read_checkpoint
    from pycontrast_det.recipes.reproduce import prepare_weights

    out_dir = tmp_path / "out"
    result = reproduce(plan_reproduction("mask_rcnn_fpn_2x_rand", RunOptions(output_dir=out_dir), pretrain=user_resnet),
                       dry_run=True)
    text = capsys.readouterr().out
    plan = result.plan
    assert str(user_resnet) in text and plan.pretrain == "user"
    assert plan.config_path.name == "R_50_FPN_2x_infomin.yaml"  # the self-supervised protocol
    ours = _command(text, "pycontrast-zoo train")
    assert _value(ours, "MODEL.WEIGHTS") == str(out_dir / "pretrain_user.pkl")
    assert {row.pretrain for row in plan.table_rows} >= {"random init", "supervised", "InfoMin", "MoCo v2"}
    assert all(row.name.startswith("mask_rcnn_fpn_2x_") for row in plan.table_rows)

    report = prepare_weights(plan)  # local conversion only
    converted = read_checkpoint(plan.weights)
    assert converted.format == "detectron2" and len(converted.state) == 318
    assert "res5.2.conv3.norm.running_var" in converted.state and report.input_format == "RGB"

    bgr = plan_reproduction("mask_rcnn_fpn_2x_rand", RunOptions(output_dir=out_dir), pretrain=user_resnet,
                            config="R_50_FPN_2x")
    with pytest.raises(ConfigError, match="RGB input"):
        prepare_weights(bgr)


def test_detectron2_engine_needs_detectron2(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "detectron2", None)  # detectron2 absent, even where it is installed
    with pytest.raises(ImportError):
        import detectron2  # noqa: F401
    with pytest.raises(Detectron2NotInstalledError, match="pip install.*--engine native"):
        reproduce(plan_reproduction("mask_rcnn_c4_1x_supervised", RunOptions(output_dir=tmp_path / "o"),
                                    engine="detectron2", dataset="shapes"))
    assert not (tmp_path / "o").exists()
    assert main(["reproduce", "mask_rcnn_fpn_1x_rand", "--engine", "detectron2", "--dataset", "shapes",
                 "--output", str(tmp_path / "o")]) == 2
    assert "needs detectron2" in capsys.readouterr().err


@pytest.mark.slow
def test_reproduce_end_to_end_on_shapes_with_two_seeds(tmp_path, capsys):
    """Plan -> train (1 real step) -> PreciseBN -> COCO evaluation on shapes val -> comparison, as the README's
    main command does it (only shorter and smaller), for seeds 1 and 2: mean ± std beside the published row."""
    out_dir = tmp_path / "run"
    overrides = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64", "MODEL.BACKBONE.FREEZE_AT", "2",
                 "TEST.PRECISE_BN.NUM_ITER", "2", "TEST.DETECTIONS_PER_IMAGE", "10"]
    result = reproduce(plan_reproduction("mask_rcnn_fpn_1x_rand", RunOptions(output_dir=out_dir), dataset="shapes",
                                         max_iter=1, overrides=overrides), seeds=2)
    printed = capsys.readouterr().out
    assert result.seeds == [1, 2] and len(result.runs) == 2
    for seed, metrics in zip(result.seeds, result.runs):
        run = out_dir / f"seed_{seed}"
        assert set(metrics) == {"bbox", "segm"} and 0.0 <= metrics["bbox"]["AP"] <= 100.0
        logged = parse_log(run / "log.txt")
        assert logged.final_bbox_ap == pytest.approx(metrics["bbox"]["AP"], abs=1e-3)
        assert parse_log(run / "metrics.json").final_segm_ap == pytest.approx(metrics["segm"]["AP"])
        assert (run / "model_final.pth").is_file() and load_config(run / "config.yaml").SEED == seed
        assert "PreciseBN" in (run / "log.txt").read_text() and (run / "curves.png").is_file()
    weights = [load_training_checkpoint(out_dir / f"seed_{s}" / "model_final.pth")["model"] for s in (1, 2)]
    assert not torch.equal(weights[0]["backbone.body.layer2.0.conv1.weight"],
                           weights[1]["backbone.body.layer2.0.conv1.weight"])
    boxes = [m["bbox"]["AP"] for m in result.runs]
    assert result.metrics["bbox"]["AP"] == pytest.approx(statistics.fmean(boxes))
    summary = json.loads((out_dir / "seeds.json").read_text())
    assert summary["seeds"] == [1, 2] and summary["std"]["bbox"]["AP"] == pytest.approx(statistics.stdev(boxes))
    table = next(line for line in printed.splitlines() if line.startswith("box AP") and "±" in line)
    assert f"{statistics.fmean(boxes):.1f} ± {statistics.stdev(boxes):.1f}" in table
    assert "mean of 2 seeds (1, 2):" in printed and "published" in result.comparison and "32.8" in result.comparison
    # a readable header; the full plan with both commands in plan.txt
    header = printed.split("--- seed 1")[0]
    assert max(len(line.replace(str(out_dir), "OUT")) for line in header.splitlines()) <= 112  # paths aside
    assert "tools/train_net.py" not in header and "overrides" not in header
    plan = (out_dir / "plan.txt").read_text()
    assert "python tools/train_net.py" in plan and "register_coco_instances" in plan and "SOLVER.MAX_ITER 1" in plan
    # a second run into the same folder is refused before anything is touched
    with pytest.raises(ConfigError, match="not empty .*--resume .*--overwrite"):
        reproduce(plan_reproduction("mask_rcnn_fpn_1x_rand", RunOptions(output_dir=out_dir), dataset="shapes",
                                    max_iter=2))
