"""The convention every command follows: config overrides as trailing ``KEY VALUE`` words (``--opts`` the same), one
device resolver (a device this machine lacks is one line and exit 2; MODEL.DEVICE is the default for --device), the
global ``--manifest`` reaching every command, and ``predict`` over images some of which cannot be read."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pycontrast_det.cli import build_parser, main
from pycontrast_det.config import requested_device
from pycontrast_det.errors import ConfigError
from pycontrast_det.modeling.device import resolve_device

from conftest import REPO_ROOT

USER = "my_rand_fpn"  # an entry only the user manifest defines (random init: nothing to download)
# 64 px inputs, few proposals and detections: a random-init R50-FPN runs an image in a fraction of a second
SMALL = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "100", "MODEL.RPN.PRE_NMS_TOPK_TEST", "100",
         "MODEL.RPN.POST_NMS_TOPK_TEST", "20", "TEST.DETECTIONS_PER_IMAGE", "5"]
# one training step of that model on 64 px inputs, no PreciseBN
ONE_STEP = [*SMALL, "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "100", "MODEL.BACKBONE.FREEZE_AT", "5",
            "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "100",
            "MODEL.RPN.POST_NMS_TOPK_TRAIN", "20", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
            "TEST.PRECISE_BN.ENABLED", "False", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "1",
            "SOLVER.MAX_ITER", "1", "SEED", "3"]


def _image(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> SimpleNamespace:
    """A user manifest (merged over the shipped one) defining USER (random init) and ``my_fpn`` (published,
    without a ``log`` field), and a 3-class dataset of one train and one val image."""
    from pycontrast_det.data import ShapesParams, shapes_root

    root = tmp_path_factory.mktemp("user")
    common = {"detector": "fpn", "schedule": "1x", "pretrain": "rand", "config": "configs/R_50_FPN_1x_rand.yaml",
              "box_ap": 12.5, "mask_ap": 11.5}
    entries = {USER: {**common, "published": False, "model": None, "note": "random init, for tests"},
               "my_fpn": {**common, "published": True,
                          "model": {"urls": ["https://example.org/my_fpn/model_final.pth"], "sha256": None,
                                    "size_bytes": None, "format": "detectron2"}}}
    manifest = root / "user.yaml"
    manifest.write_text(yaml.safe_dump({"schema_version": 1, "merge": True, "entries": entries}, sort_keys=False))
    dataset = shapes_root(ShapesParams(seed=2, num_train=1, num_val=1), root=root)
    return SimpleNamespace(manifest=manifest, dataset=dataset, argv=["--manifest", str(manifest)])


# one command line per command that builds a model or runs, without its device and overrides
def _commands(tmp_path: Path, image: Path, dataset: Path) -> dict[str, list[str]]:
    return {
        "predict": ["predict", "mask_rcnn_fpn_1x_rand", str(image), "--out", str(tmp_path / "predicted")],
        "evaluate": ["evaluate", "mask_rcnn_fpn_1x_rand", "--dataset", str(dataset), "--output", str(tmp_path / "ev")],
        "reproduce": ["reproduce", "mask_rcnn_fpn_1x_rand", "--dataset", "shapes", "--output", str(tmp_path / "rp")],
        "train": ["train", "--config", "R_50_FPN_1x_rand", "--dataset", str(dataset), "--output", str(tmp_path / "tr")],
        "finetune": ["finetune", "mask_rcnn_fpn_1x_rand", "--dataset", str(dataset), "--output", str(tmp_path / "ft")],
        "export": ["export", "mask_rcnn_fpn_1x_rand", "--format", "onnx", "--out", str(tmp_path / "ex" / "x.onnx")],
    }


@pytest.mark.parametrize("command", ["predict", "evaluate", "reproduce", "train", "finetune", "export"])
def test_overrides_are_trailing_words_or_opts_on_every_command(command, tmp_path, capsys):
    parser = build_parser()
    argv = _commands(tmp_path, tmp_path / "a.png", tmp_path / "data")[command]
    trailing = parser.parse_args([*argv, "SOLVER.BASE_LR", "0.1", "--device", "cpu", "SEED", "-1"])
    assert trailing.opts == ["SOLVER.BASE_LR", "0.1", "SEED", "-1"] and trailing.device == "cpu"
    alias = parser.parse_args([argv[0], "--opts", "SOLVER.BASE_LR", "0.1", "SEED", "-1", "--device", "cpu", *argv[1:]])
    assert vars(alias) == vars(trailing)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([*argv, "SOLVER.BASE_LR"])
    assert exit_.value.code == 2 and "SOLVER.BASE_LR has no value" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_predict_takes_images_and_overrides_in_any_order():
    args = build_parser().parse_args(["predict", "E", "a.png", "--device", "cpu", "b.png", "INPUT.MIN_SIZE_TEST",
                                      "600", "--batch-size", "2", "c.png"])
    assert args.inputs == ["E", "a.png", "b.png", "c.png"] and args.opts == ["INPUT.MIN_SIZE_TEST", "600"]


def test_resolve_device_checks_the_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^--device cuda: CUDA is not available on this machine"):
        resolve_device("cuda", what="--device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)  # a process launched for the second GPU
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match=r"device cuda:2: this machine has 2 CUDA device\(s\) \(cuda:0..cuda:1\)"):
        resolve_device("cuda:2")
    # MODEL.DEVICE given as an override is the default for --device; the two disagreeing is an error
    assert requested_device(None, ["MODEL.DEVICE", "cuda:1", "SEED", "1"], "auto") == "cuda:1"
    assert requested_device("cpu", ["MODEL.DEVICE", "cpu"], "auto") == "cpu"
    assert requested_device(None, [], "cpu") == "cpu"
    assert requested_device("auto", ["MODEL.DEVICE", "cuda"], "cpu") == "cuda"  # auto gives way
    assert requested_device("cpu", ["MODEL.DEVICE", "auto"], "cpu") == "cpu"
    with pytest.raises(ConfigError, match="--device cpu and MODEL.DEVICE cuda name different devices"):
        requested_device("cpu", ["MODEL.DEVICE", "cuda"], "auto")


def test_a_device_this_machine_lacks_is_one_line_and_exit_2_for_every_command(user, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as with CUDA_VISIBLE_DEVICES="" on a GPU box
    image = _image(tmp_path / "a.png")
    for name, argv in _commands(tmp_path, image, user.dataset).items():
        for device, message in ((["--device", "cuda"], "--device cuda: CUDA is not available on this machine"),
                                (["MODEL.DEVICE", "cuda:1"], "MODEL.DEVICE cuda:1: CUDA is not available"),
                                (["--device", "gpu"], "--device 'gpu' is not a device: use auto, cpu, cuda"),
                                (["--device", "cpu", "MODEL.DEVICE", "cuda"], "--device cpu and MODEL.DEVICE cuda")):
            assert main([*argv, *device]) == 2, (name, device)
            err = capsys.readouterr().err
            assert err.startswith(f"pycontrast-zoo {name}: error: ") and message in err, (name, err)
            assert err.count("\n") == 1, (name, err)
    assert list(tmp_path.iterdir()) == [image]  # refused before anything was written


def test_the_global_manifest_reaches_every_command(user, tmp_path, capsys):
    image = _image(tmp_path / "a.png")
    commands = {
        "predict": ["predict", USER, str(image), "--out", str(tmp_path / "predicted"), "--device", "cpu", *SMALL],
        "evaluate": ["evaluate", USER, "--dataset", str(user.dataset), "--device", "cpu", *SMALL,
                     "MODEL.ROI_HEADS.NUM_CLASSES", "3"],
        "reproduce": ["reproduce", USER, "--dataset", "shapes", "--dry-run", "--output", str(tmp_path / "rp")],
        "finetune": ["finetune", USER, "--dataset", str(user.dataset), "--dry-run", "--output", str(tmp_path / "ft")],
        "publish": ["publish", USER, "--to", str(tmp_path / "tree"), "--dry-run", "--quiet"],
        "train": ["train", "--config", "R_50_FPN_1x_rand", "--dataset", str(user.dataset), "--output",
                  str(tmp_path / "tr"), "--device", "cpu", "MODEL.WEIGHTS", USER, *ONE_STEP],
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name  # the shipped manifest alone does not know USER
        assert f"{USER!r}" in capsys.readouterr().err, name
    for name, argv in commands.items():
        assert main([*user.argv, *argv]) == 0, name
        out = capsys.readouterr().out
        assert os.environ.get("PYCONTRAST_ZOO_MANIFEST") is None  # set for the command only
        if name in ("evaluate", "reproduce"):  # the user manifest's published numbers are compared with
            assert "12.5" in out, out
    assert json.loads((tmp_path / "predicted" / "results.json").read_text()) is not None
    assert "MODEL.WEIGHTS 'my_rand_fpn': every weight starts from random initialisation" in \
        (tmp_path / "tr" / "log.txt").read_text()
    assert (tmp_path / "tr" / "model_final.pth").is_file() and not (tmp_path / "ft").exists()
    # export refuses USER (no published detector: its heads would be untrained), which only the manifest defines
    export = ["export", USER, "--format", "onnx", "--out", str(tmp_path / "x.onnx")]
    assert main(export) == 2 and f"{USER!r}" in capsys.readouterr().err
    assert main([*user.argv, *export]) == 2 and f"{USER} has no published detector" in capsys.readouterr().err


def test_predict_skips_bad_images_writes_the_others_and_exits_2(user, tmp_path, capsys):
    first, third = _image(tmp_path / "1.png", seed=1), _image(tmp_path / "3.png", seed=3)
    text = tmp_path / "2.png"
    text.write_text("not an image")
    truncated = tmp_path / "4.jpg"
    Image.open(first).convert("RGB").save(truncated, quality=90)
    truncated.write_bytes(truncated.read_bytes()[:300])
    out = tmp_path / "out"
    torch.manual_seed(0)
    code = main([*user.argv, "predict", USER, str(first), str(text), str(tmp_path / "5.png"), str(third),
                 str(truncated), "--out", str(out), "--device", "cpu", "--score-thresh", "0", "--batch-size", "2",
                 *SMALL])
    assert code == 2
    captured = capsys.readouterr()
    summary = captured.err.splitlines()[-1]
    assert summary.startswith("pycontrast-zoo predict: 3 of 5 image(s) skipped: ")
    assert all(str(bad) in summary for bad in (text, tmp_path / "5.png", truncated)) and "no such file" in summary
    assert sorted(p.name for p in out.iterdir()) == ["1.png", "3.png", "predictions.jsonl", "results.json"]
    results = json.loads((out / "results.json").read_text())
    counts = {Path(line.split(":")[0]).name: int(line.split(": ")[1].split()[0])
              for line in captured.out.splitlines() if " detections (" in line}
    assert set(counts) == {"1.png", "3.png"} and sum(counts.values()) > 0  # a random init (seeded) detects little
    for name, image_id in (("1.png", 1), ("3.png", 3)):  # image_id: the file stems, whatever was skipped
        assert sum(r["file_name"] == name and r["image_id"] == image_id for r in results) == counts[name]
    assert len(results) == sum(counts.values())
    # an ENTRY beside --config and --weights is refused rather than ignored
    assert main(["predict", "mask_rcnn_fpn_1x_rand", str(first), "--config", "R_50_FPN_1x_rand", "--weights",
                 str(first)]) == 2
    assert "give ENTRY, or --config and --weights, not both" in capsys.readouterr().err


def test_zoo_commands_stay_torch_free_and_take_an_entry_without_a_log(user):
    code = ("import sys; from pycontrast_det.cli import main; m = ['--manifest', sys.argv[1]]; "
            "assert main(m + ['list']) == main(m + ['info', 'my_fpn']) == main(m + ['table']) == 0; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code, str(user.manifest)], capture_output=True, text=True,
                          cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "published: model (no training log)" in proc.stdout
    assert "| `my_fpn` | FPN | 1x | random init | 12.5 | 11.5 | [R_50_FPN_1x_rand](configs/R_50_FPN_1x_rand.yaml) | " \
           "[model](https://example.org/my_fpn/model_final.pth) | not published |" in proc.stdout


def test_finetune_takes_the_run_options_of_train(user, tmp_path, capsys):
    """--scale-to-batch sets the batch (the lr follows it linearly), --amp reaches the train command, and
    --launcher slurm --dry-run prints the submission: one option set for train, reproduce and finetune."""
    commands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001 (argparse has no API)
    options = {name: {action.dest for action in commands[name]._actions} for name in ("train", "finetune")}
    assert options["train"] <= options["finetune"]
    source = ["finetune", "mask_rcnn_fpn_1x_rand", "--dataset", str(user.dataset), "--output", str(tmp_path / "ft")]
    assert main([*source, "--dry-run", "--scale-to-batch", "4", "--amp", "--device", "cuda"]) == 0  # planned only
    out = capsys.readouterr().out
    assert "4 images: --scale-to-batch" in out and "BASE_LR 0.005" in out  # the config's 0.02 for 16 images
    assert "pycontrast-zoo train --config" in out and "--device cuda --num-gpus 1 --amp" in out
    assert main([*source, "--dry-run", "--scale-to-batch", "4", "SOLVER.IMS_PER_BATCH", "8"]) == 2
    assert "--scale-to-batch 4 and SOLVER.IMS_PER_BATCH 8 both set the batch" in capsys.readouterr().err
    assert main([*source, "--dry-run", "--launcher", "slurm", "--num-gpus", "2", "--partition", "gpu"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --partition=gpu" in out and "--launcher local" in out and "fine-tune mask_rcnn_fpn_1x_rand" in out
    assert not (tmp_path / "ft").exists()
