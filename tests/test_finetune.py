"""Fine-tuning on a user's dataset through the one loading path: detectron2's FPN and C4 detectors (80 classes)
and a backbone-only pretrain, taken to a 3-class dataset (non-contiguous ids, names not in COCO); the class
names then travel with the checkpoint into load, predict and evaluate."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import pycontrast_det as pcd
from pycontrast_det.checkpoints import read_checkpoint
from pycontrast_det.checkpoints.keymap import rename, resnet_rules
from pycontrast_det.cli import main
from pycontrast_det.config import load_config
from pycontrast_det.engine import RunOptions, train
from pycontrast_det.reports import parse_log
from pycontrast_det.engine.checkpoint import load_training_checkpoint
from pycontrast_det.evaluation import evaluate
from pycontrast_det.recipes.finetune import finetune, plan_finetune
from pycontrast_det.errors import ConfigError
from pycontrast_det.modeling import load_weights
from pycontrast_det.modeling.norms import FrozenBatchNorm2d

CATEGORIES = [(3, "blorb"), (7, "zint"), (12, "quaggle")]
_COLOURS = {3: (220, 40, 40), 7: (40, 200, 60), 12: (50, 80, 230)}
CLASS_LAYERS = {"roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred",
                "roi_heads.mask_predictor.mask_fcn_logits"}
# 64 px inputs, few anchors and RoIs, stem and res2 frozen: a step takes about a second on two cores
TINY = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "100", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "100", "MODEL.BACKBONE.FREEZE_AT", "2", "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "32",
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "100", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50", "MODEL.RPN.PRE_NMS_TOPK_TEST",
        "100", "MODEL.RPN.POST_NMS_TOPK_TEST", "20", "TEST.DETECTIONS_PER_IMAGE", "20",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
        "TEST.PRECISE_BN.ENABLED", "False", "DATALOADER.NUM_WORKERS", "0", "SEED", "7"]


def _shape(cid: int, x: int, y: int, s: int) -> list[float]:
    """A square, a triangle or a diamond as a flat COCO polygon."""
    if cid == 3:
        return [x, y, x + s, y, x + s, y + s, x, y + s]
    if cid == 7:
        return [x + s / 2, y, x + s, y + s, x, y + s]
    return [x + s / 2, y, x + s, y + s / 2, x + s / 2, y + s, x, y + s / 2]


def make_dataset(root: Path, num_images: int = 2, size: int = 96) -> Path:
    """A COCO-format folder (train and val splits of the same images): 2-3 coloured shapes per image, every
    category in the first two (so that a batch of two sees the same images at every step)."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
    for i in range(num_images):
        image = Image.new("RGB", (size, size), (235, 235, 225))
        draw = ImageDraw.Draw(image)
        cells = [(4, 4), (50, 4), (4, 50), (50, 50)]
        rng.shuffle(cells)
        for (cid, _), (x, y) in zip(CATEGORIES[:2 + i % 2], cells):
            side = int(rng.integers(30, 42))
            poly = [float(v) for v in _shape(cid, x, y, side)]
            draw.polygon(poly, fill=_COLOURS[cid])
            xs, ys = poly[0::2], poly[1::2]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cid, "iscrowd": 0,
                                "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                                "area": float(side * side), "segmentation": [poly]})
        for split in ("train", "val"):
            image.save(root / split / f"img_{i}.png")
        images.append({"id": i + 1, "file_name": f"img_{i}.png", "height": size, "width": size})
    (root / "annotations").mkdir()
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": cid, "name": name} for cid, name in CATEGORIES]}
    for split in ("train", "val"):
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def pycontrast_pretrain(path: Path, d2_fixtures: Path) -> Path:
    """A PyContrast-format ResNet-50 checkpoint (``module.encoder.*`` in torchvision's names, a projection head):
    the backbone of the detectron2 FPN fixture, so that it is a trained network as a real pretrain is."""
    detector = torch.load(d2_fixtures / "fpn" / "weights_fp16.pth", weights_only=True)["model"]
    rules = resnet_rules("backbone.bottom_up.", "")
    encoder = {f"module.encoder.{rename(k, rules)}": v.float() for k, v in detector.items() if rename(k, rules)}
    assert len(encoder) == 318
    torch.save({"model": {**encoder, "module.head.0.weight": torch.randn(128, 2048)}, "epoch": 200}, path)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("blorbs") / "blorbs")


@pytest.fixture(scope="module")
def pretrain_file(tmp_path_factory, d2_fixtures) -> Path:
    return pycontrast_pretrain(tmp_path_factory.mktemp("pretrain") / "InfoMin_mine.pth", d2_fixtures)


def _finetune(tmp_path_factory, source: Path, dataset: Path, **kwargs):
    out = tmp_path_factory.mktemp("finetune")
    overrides = TINY + ["SOLVER.STEPS", "()"] + kwargs.pop("extra", [])  # 4 iterations: no lr step
    plan = plan_finetune(source, dataset, RunOptions(output_dir=out), schedule="4", overrides=overrides, **kwargs)
    result = finetune(plan, log_period=1, evaluate_at_end=False)  # evaluated below, from the checkpoint alone
    return plan, result, (out / "log.txt").read_text()


@pytest.fixture(scope="module")
def fpn_run(tmp_path_factory, d2_fixtures, dataset):
    return _finetune(tmp_path_factory, d2_fixtures / "fpn" / "weights_fp16.pth", dataset)


@pytest.fixture(scope="module")
def c4_run(tmp_path_factory, d2_fixtures, dataset):
    return _finetune(tmp_path_factory, d2_fixtures / "c4" / "weights_fp16.pth", dataset)


@pytest.fixture(scope="module")
def backbone_run(tmp_path_factory, pretrain_file, dataset):
    return _finetune(tmp_path_factory, pretrain_file, dataset, config="R_50_FPN_1x_infomin",
                     extra=["SOLVER.BASE_LR", "0.02"])


def _reinitialised(log: str) -> set[str]:
    """The layers the loading warning in ``log`` names."""
    lines = [line for line in log.splitlines() if "re-initialised" in line]
    assert len(lines) <= 1, lines
    if not lines:
        return set()
    return set(re.search(r"re-initialised (.*) \(they start untrained\)", lines[0]).group(1).split(", "))


@pytest.mark.parametrize("run", ["fpn_run", "c4_run", "backbone_run"])
def test_finetuning_loads_all_but_the_class_layers_and_learns(run, request, dataset):
    plan, result, log = request.getfixturevalue(run)
    assert plan.cfg().MODEL.ROI_HEADS.NUM_CLASSES == 3
    assert "3 classes, from blorbs_train: blorb, zint, quaggle" in log  # NUM_CLASSES from the dataset, stated
    loaded = re.search(r"loaded (\d+) of the model's (\d+) weights", log)
    done, total = int(loaded.group(1)), int(loaded.group(2))
    if run == "backbone_run":  # the backbone is loaded; the heads are not in the file and keep their init
        assert _reinitialised(log) == set()
        assert "backbone pretrain, format pycontrast" in log and 250 < done < total
        assert re.search(r"not in the file, left as initialised: \d+ weights \(backbone.fpn, rpn.head, ", log)
    else:  # exactly the class-dependent layers start again; every other weight is detectron2's
        assert "the file has 80 classes, the model 3" in log
        assert _reinitialised(log) == CLASS_LAYERS
        assert done == total - 6
    curve = parse_log(plan.output_dir / "metrics.json").losses
    assert [p.iteration for p in curve] == list(range(plan.schedule.max_iter))
    assert result.last_losses["total_loss"] < curve[0].total_loss - 0.1  # the same two images at every step
    assert result.last_losses["loss_cls"] < curve[0].losses["loss_cls"]
    # the classes are stored with the checkpoint
    stored = load_training_checkpoint(plan.output_dir / "model_final.pth")["classes"]
    assert stored == {"names": ["blorb", "zint", "quaggle"], "ids": [3, 7, 12]}


@pytest.mark.parametrize("run", ["fpn_run", "c4_run", "backbone_run"])
def test_a_finetuned_checkpoint_loads_predicts_and_evaluates_without_config(run, request, dataset, tmp_path):
    plan, _, _ = request.getfixturevalue(run)
    checkpoint = plan.output_dir / "model_final.pth"
    model = pcd.load(checkpoint)  # config.yaml beside it, classes from the checkpoint
    assert model.class_names == ["blorb", "zint", "quaggle"] and model.classes.ids == (3, 7, 12)
    assert model.arch == ("c4" if run == "c4_run" else "fpn")
    trained = load_training_checkpoint(checkpoint)["model"]
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    image = dataset / "train" / "img_0.png"
    found = model.predict(image, score_thresh=0.0)
    assert len(found["label_names"]) > 0 and set(found["label_names"]) <= {"blorb", "zint", "quaggle"}
    result = evaluate(model, dataset, output_dir=tmp_path / "eval")  # per-class AP by name, as detectron2
    assert {"AP-blorb", "AP-zint", "AP-quaggle"} <= set(result.metrics["bbox"]) & set(result.metrics["segm"])
    assert {"bbox/AP-blorb", "segm/AP-quaggle"} <= set(json.loads((tmp_path / "eval" / "metrics.json").read_text()))
    if run == "fpn_run":  # the command line: the dataset's own category ids in results.json
        assert main(["predict", str(checkpoint), str(image), "--out", str(tmp_path), "--score-thresh", "0.0",
                     "--device", "cpu"]) == 0
        records = json.loads((tmp_path / "results.json").read_text())
        assert records and {r["category_id"] for r in records} <= {3, 7, 12}


def _stable_keys(model: torch.nn.Module) -> set[str]:
    """What a training step at lr 0 leaves as it was: every parameter, and the buffers of frozen norms."""
    keys = {name for name, _ in model.named_parameters()}
    for prefix, module in model.named_modules():
        if isinstance(module, FrozenBatchNorm2d):
            keys |= {f"{prefix}.{name}" for name, _ in module.named_buffers(recurse=False)}
    return keys


@pytest.mark.parametrize("kind", ["detectron2", "ours", "backbone"])
def test_load_and_model_weights_give_the_same_tensors(kind, request, d2_fixtures, dataset, pretrain_file,
                                                      tmp_path):
    """``pcd.load(cfg, weights=F)`` and MODEL.WEIGHTS F of a training run load the same values: a detectron2
    detector (80 -> 3 classes), our own fine-tuned checkpoint, a backbone-only pretrain."""
    if kind == "detectron2":
        config, weights = d2_fixtures / "fpn" / "config.yaml", d2_fixtures / "fpn" / "weights_fp16.pth"
    elif kind == "ours":
        plan = request.getfixturevalue("fpn_run")[0]
        config, weights = plan.output_dir / "config.yaml", plan.output_dir / "model_final.pth"
    else:
        config, weights = "R_50_FPN_1x_infomin", pretrain_file
    common = TINY + ["MODEL.ROI_HEADS.NUM_CLASSES", "3"]
    cfg = load_config(config, common)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = pcd.load(cfg, weights=weights)
    assert any("re-initialised" in str(w.message) for w in caught) == (kind == "detectron2")
    loaded = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_weights(model, weights)  # again: which of them came from the file
    out = tmp_path / "run"
    run = ["SOLVER.MAX_ITER", "1", "SOLVER.BASE_LR", "0.0", "MODEL.WEIGHTS", str(weights)]
    if kind == "detectron2":  # through the command line: NUM_CLASSES comes from --dataset
        assert main(["train", "--config", str(config), "--dataset", str(dataset), "--output", str(out),
                     "--device", "cpu", *TINY, *run]) == 0
        trained = load_training_checkpoint(out / "model_final.pth")["model"]
    else:
        cfg_run = load_config(config, common + run + ["DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST", "()"])
        trained = train(cfg_run, RunOptions(output_dir=out), evaluate_at_end=False).model.state_dict()
    assert f"loaded {len(report.loaded)} of the model's" in (out / "log.txt").read_text()
    compared = set(report.loaded) & _stable_keys(model)
    assert len(compared) > 150  # at least the ResNet body
    for key in sorted(compared):
        assert torch.equal(loaded[key], trained[key]), key
    source = read_checkpoint(weights).state
    probe = {"detectron2": "backbone.bottom_up.res3.0.conv1.weight", "ours": "backbone.body.layer2.0.conv1.weight",
             "backbone": "module.encoder.layer2.0.conv1.weight"}[kind]
    torch.testing.assert_close(loaded["backbone.body.layer2.0.conv1.weight"], source[probe].float(), rtol=0, atol=0)


def test_finetune_plan_schedule_classes_and_overrides(d2_fixtures, dataset, capsys):
    source = d2_fixtures / "fpn" / "weights_fp16.pth"
    plan = plan_finetune(source, dataset)  # short: 4 epochs of 2 images at 2 images per iteration
    s = plan.schedule
    assert (s.name, s.max_iter, s.ims_per_batch, s.warmup_iters, s.steps) == ("short", 4, 2, 0, (2, 3))
    assert s.base_lr == pytest.approx(0.02)  # the fixture's recipe: 0.02 for 2 images
    cfg = plan.cfg()
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3 and cfg.MODEL.WEIGHTS == str(source)
    assert list(cfg.DATASETS.TRAIN) == list(cfg.DATASETS.TEST) == [str(dataset.resolve())]
    assert plan.config_origin == str(d2_fixtures / "fpn" / "config.yaml")  # the config beside the weights
    # a zoo entry: its config; 1x on 4 GPUs; the lr of the recipe (0.02 at 16 images) scaled to 8
    entry = plan_finetune("mask_rcnn_fpn_1x_infomin", dataset, RunOptions(num_gpus=4), schedule="1x")
    assert (entry.schedule.max_iter, entry.schedule.ims_per_batch, entry.schedule.steps) == (3, 8, (2,))
    assert entry.schedule.base_lr == pytest.approx(0.01) and entry.cfg().MODEL.WEIGHTS == "mask_rcnn_fpn_1x_infomin"
    assert entry.config.name == "R_50_FPN_1x_infomin.yaml" and "pycontrast-zoo train --config" in entry.render()
    # SOLVER values given win; the rest follows them
    given = plan_finetune(source, dataset, overrides=["SOLVER.MAX_ITER", "300", "SOLVER.BASE_LR", "0.001"])
    assert (given.schedule.max_iter, given.schedule.base_lr, given.schedule.warmup_iters) == (300, 0.001, 30)
    assert given.schedule.steps == (200, 266) and given.cfg().SOLVER.BASE_LR == 0.001
    with pytest.raises(ConfigError, match=r"NUM_CLASSES 5 conflicts with the 3 categories of blorbs_train"):
        plan_finetune(source, dataset, overrides=["MODEL.ROI_HEADS.NUM_CLASSES", "5"])
    with pytest.raises(ConfigError, match="--schedule '2y'"):
        plan_finetune(source, dataset, schedule="2y")
    # the command line: --dry-run prints the plan, trains nothing
    assert main(["finetune", str(source), "--dataset", str(dataset), "--dry-run", "--output",
                 str(dataset.parent / "never")]) == 0
    text = capsys.readouterr().out
    assert "3 classes: blorb, zint, quaggle" in text and "4 iterations of 2 images, BASE_LR 0.02" in text
    assert not (dataset.parent / "never").exists()
    assert main(["train", "--config", "R_50_FPN_1x_infomin", "--dataset", str(dataset),
                 "MODEL.ROI_HEADS.NUM_CLASSES", "80"]) == 2
    assert "NUM_CLASSES 80 conflicts with the 3 categories" in capsys.readouterr().err
