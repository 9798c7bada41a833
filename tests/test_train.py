"""The native trainer: real training steps of the real model on the shapes dataset (tiny sizes), exact resume,
two-process CPU training, the solver's schedule and parameter groups, the non-finite-loss guard, the logs."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from pycontrast_det.config import get_cfg, load_config
from pycontrast_det.engine import RunOptions, launch, train
from pycontrast_det.reports import parse_log
from pycontrast_det.reports.curves_hook import CurvesHook
from pycontrast_det.engine.checkpoint import Checkpointer, load_training_checkpoint
from pycontrast_det.engine.optim import build_lr_scheduler, build_optimizer, param_groups
from pycontrast_det.recipes.scaling import scale_to_batch
from pycontrast_det.errors import ConfigError, NonFiniteLossError, ZooError

# R50-FPN as the rand row has it (SyncBN everywhere), shrunk: 64 px shapes, few anchors and RoIs, stem and
# res2 frozen so that a step takes about a second on two cores. Training data: two shapes images (see
# ``two_images``), so that a few steps visibly fit them.
TINY = [
    "DATASETS.TEST", "('shapes_val',)", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "100", "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "100", "MODEL.BACKBONE.FREEZE_AT", "2", "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.BASE_LR", "0.02", "SOLVER.WARMUP_ITERS", "2", "SOLVER.MAX_ITER", "8", "SOLVER.STEPS", "(6,)",
    "SOLVER.CHECKPOINT_PERIOD", "4", "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "100",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
    "TEST.PRECISE_BN.ENABLED", "False", "DATALOADER.NUM_WORKERS", "0", "SEED", "7",
]


def make_two_image_dataset(root: Path, val: bool = False) -> Path:
    """A COCO-format dataset folder holding the first two images of shapes' train split (and with ``val`` the
    first two of its val split)."""
    from pycontrast_det.data import resolve_dataset

    for split in ("train", "val") if val else ("train",):
        spec = resolve_dataset("shapes", split=split)
        data = json.loads(spec.json_file.read_text())
        data["images"] = data["images"][:2]
        kept = {image["id"] for image in data["images"]}
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in kept]
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / split).mkdir()
        for image in data["images"]:
            shutil.copy(spec.image_root / image["file_name"], root / split / image["file_name"])
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def tiny_cfg(data: Path, *overrides: str):
    return load_config("R_50_FPN_1x_rand", TINY + ["DATASETS.TRAIN", f"('{data}',)", *overrides])


@pytest.fixture(scope="module")
def two_images(tmp_path_factory) -> Path:
    return make_two_image_dataset(tmp_path_factory.mktemp("data") / "two", val=True)


def _weights(path: Path) -> dict:
    return load_training_checkpoint(path)["model"]


def _loss_rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k == "iteration" or k.endswith("loss") or k.startswith("loss_")}
            for r in rows if "total_loss" in r]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, two_images):
    """One 8-iteration run (checkpoint after iteration 3, every checkpoint kept), shared by the resume, loss and log
    tests."""
    out = tmp_path_factory.mktemp("run")
    result = train(tiny_cfg(two_images, "SOLVER.CHECKPOINTS_KEPT", "0"),
                   RunOptions(output_dir=out, export_detectron2=True), evaluate_at_end=False,
                   log_period=1)
    return out, result


def test_training_steps_lower_the_loss(uninterrupted):
    out, result = uninterrupted
    curve = parse_log(out / "metrics.json").losses
    assert [p.iteration for p in curve] == list(range(8))
    first = curve[0]  # the untrained model at iteration 0 (later rows are medians over the last 20)
    assert result.last_losses["total_loss"] < first.total_loss - 0.3
    assert result.last_losses["loss_rpn_cls"] < first.losses["loss_rpn_cls"]
    assert set(result.last_losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask",
                                       "total_loss"}


def test_checkpoints_in_detectron2_layout(uninterrupted):
    out, result = uninterrupted
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    periodic = load_training_checkpoint(out / "model_0000003.pth")
    assert periodic["iteration"] == 3 and {"model", "optimizer", "scheduler"} <= set(periodic)
    final = load_training_checkpoint(result.final_checkpoint)
    assert final["iteration"] == 7
    assert "backbone.body.conv1.weight" in final["model"]
    d2 = torch.load(result.detectron2_checkpoint, weights_only=True)["model"]
    assert torch.equal(d2["backbone.bottom_up.stem.conv1.weight"], final["model"]["backbone.body.conv1.weight"])
    assert "roi_heads.mask_head.predictor.weight" in d2
    assert load_config(out / "config.yaml").SOLVER.MAX_ITER == 8  # the effective config, loadable
    assert final["model"].keys() == result.model.state_dict().keys()


def test_resume_continues_exactly(uninterrupted, two_images, tmp_path):
    out, _ = uninterrupted
    shutil.copy(out / "model_0000003.pth", tmp_path / "model_0000003.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000003.pth")  # as an interrupted run leaves it
    resumed = train(tiny_cfg(two_images), RunOptions(output_dir=tmp_path, resume=True), evaluate_at_end=False,
                    log_period=1)
    assert resumed.start_iter == 4
    expected, got = _weights(out / "model_final.pth"), _weights(tmp_path / "model_final.pth")
    assert expected.keys() == got.keys()
    assert all(torch.equal(got[key], expected[key]) for key in expected)  # bit-identical
    assert "Resuming from" in (tmp_path / "log.txt").read_text()
    assert [p.iteration for p in parse_log(tmp_path / "metrics.json").losses] == [4, 5, 6, 7]


def test_same_seed_gives_the_same_bits_another_seed_other_weights(uninterrupted, two_images, tmp_path):
    """The tiny protocol on shapes images again with SEED 7, 4 iterations (the lr schedule of the first 4 of the
    8-iteration run): bit-identical to that run's checkpoint after iteration 3, losses included; with SEED 8:
    other weights from the first iteration on."""
    out, _ = uninterrupted
    four = ("SOLVER.MAX_ITER", "4")
    again = train(tiny_cfg(two_images, *four), RunOptions(output_dir=tmp_path / "again"), evaluate_at_end=False,
                  log_period=1)
    first, second = _weights(out / "model_0000003.pth"), _weights(again.final_checkpoint)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert _loss_rows(out / "metrics.json")[:4] == _loss_rows(tmp_path / "again" / "metrics.json")
    assert load_config(tmp_path / "again" / "config.yaml").SEED == 7 == again.seed
    other = train(tiny_cfg(two_images, *four, "SEED", "8"), RunOptions(output_dir=tmp_path / "other"),
                  evaluate_at_end=False,
                  log_period=1)
    third = _weights(other.final_checkpoint)
    kernels = [k for k in first if k.endswith("weight") and first[k].dim() > 1]  # every conv and fc
    assert len(kernels) > 70 and all(not torch.equal(second[k], third[k]) for k in kernels)
    assert _loss_rows(tmp_path / "other" / "metrics.json")[0] != _loss_rows(out / "metrics.json")[0]


def test_global_batches_are_the_same_for_any_process_count(tmp_path):
    """Images and augmentation of each iteration's global batch do not depend on the number of processes, with
    aspect-ratio grouping too; resuming skips batches without changing what follows."""
    from pycontrast_det.data import ShapesParams, build_train_loader, resolve_dataset, shapes_root

    spec = resolve_dataset(shapes_root(ShapesParams(seed=3, num_train=16, num_val=1), root=tmp_path), "train")
    cfg = load_config("R_50_FPN_1x_rand", ["INPUT.MIN_SIZE_TRAIN", "(48, 64)", "INPUT.MAX_SIZE_TRAIN", "100",
                                           "SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_WORKERS", "0"])
    assert cfg.DATALOADER.ASPECT_RATIO_GROUPING

    def global_batches(world_size: int, start_iter: int = 0, count: int = 6) -> list[list[tuple]]:
        streams = [build_train_loader(cfg, spec, rank=r, world_size=world_size, seed=11, start_iter=start_iter)
                   for r in range(world_size)]
        out = []
        for _ in range(count):
            shares = [next(stream) for stream in streams]
            items = [item for share in zip(*shares) for item in share]  # rank r holds items r, r + W, ...
            out.append([(i["image_id"], tuple(i["image"].shape), i["image"].sum().item(),
                         i["instances"]["boxes"].sum().item()) for i in items])
        return out

    one = global_batches(1)
    assert global_batches(2) == global_batches(4) == one
    assert all(len({shape[2] > shape[1] for _, shape, *_ in batch}) == 1 for batch in one)  # one orientation
    assert len({shape[2] > shape[1] for batch in one for _, shape, *_ in batch}) == 2  # both orientations seen
    assert len({shape for batch in one for _, shape, *_ in batch}) > 2  # sizes sampled from (48, 64)
    assert global_batches(2, start_iter=2, count=4) == one[2:]


def test_output_folder_refused_unless_resume_or_overwrite(two_images, tmp_path, capsys):
    from pycontrast_det.cli import main

    out = tmp_path / "run"
    out.mkdir()
    (out / "log.txt").write_text("an earlier run\n")
    (out / "notes.md").write_text("mine")
    one_step = tiny_cfg(two_images, "SOLVER.MAX_ITER", "1")
    with pytest.raises(ConfigError, match=r"OUTPUT_DIR .*run is not empty \(log.txt, notes.md\): pass --resume "
                                          r"to continue the run in it, --overwrite to replace it"):
        train(one_step, RunOptions(output_dir=out), evaluate_at_end=False)
    assert (out / "log.txt").read_text() == "an earlier run\n" and sorted(p.name for p in out.iterdir()) == [
        "log.txt", "notes.md"]
    code = main(["train", "--config", "R_50_FPN_1x_rand", "--output", str(out), "--device", "cpu", *TINY,
                 "DATASETS.TRAIN", f"('{two_images}',)"])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    # --overwrite, on a dataset without a val split (given as --dataset): the log says what is evaluated
    data = make_two_image_dataset(tmp_path / "trainonly")
    result = train(one_step, RunOptions(output_dir=out, overwrite=True), dataset=data)
    log = (out / "log.txt").read_text()
    assert "an earlier run" not in log and (out / "notes.md").read_text() == "mine"
    assert result.final_checkpoint.is_file()
    assert result.evaluation.split == "train" and result.evaluation.num_images == 2
    assert f"{data} has no val split" in log and "evaluating on its train split" in log
    assert list(load_config(out / "config.yaml").DATASETS.TEST) == [str(data)]
    # a failed start leaves no folder behind: no dataset; a model setting refused after the log was opened
    for bad in (tiny_cfg(tmp_path / "no_such_dataset"), tiny_cfg(two_images, "MODEL.KEYPOINT_ON", "True")):
        with pytest.raises(ZooError):
            train(bad, RunOptions(output_dir=tmp_path / "fresh"), evaluate_at_end=False)
        assert not (tmp_path / "fresh").exists()


def test_periodic_evaluation_retention_random_seed_and_curves(two_images, tmp_path):
    """TEST.EVAL_PERIOD 3 over 6 iterations: PreciseBN and evaluation after iteration 2 and at the end
    (detectron2's EvalHook); checkpoints every 2 with the newest 2 kept; SEED -1 picks, logs and stores a seed."""
    cfg = tiny_cfg(two_images, "DATASETS.TEST", f"('{two_images}',)", "SOLVER.MAX_ITER", "6", "SOLVER.STEPS", "(5,)",
                   "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.CHECKPOINTS_KEPT", "2", "TEST.EVAL_PERIOD", "3",
                   "TEST.PRECISE_BN.ENABLED", "True", "TEST.PRECISE_BN.NUM_ITER", "1", "SEED", "-1")
    result = train(cfg, RunOptions(output_dir=tmp_path), log_period=1, hooks=[CurvesHook()])
    summary = parse_log(tmp_path / "metrics.json")
    assert [i for i, _ in summary.evals] == [2, 5] and set(summary.evals[0][1]) == {"bbox", "segm"}
    assert result.evaluation.num_images == 2 and result.metrics == summary.evals[-1][1] | {
        t: result.metrics[t] for t in result.metrics}
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == ["model_0000003.pth", "model_final.pth"]
    log = (tmp_path / "log.txt").read_text()
    assert log.count("PreciseBN: BatchNorm statistics recomputed") == 2
    assert log.count("Inference on two_val: 2/2 done") == 2
    seed = result.seed
    assert f"SEED -1: this run uses seed {seed}; SEED {seed} repeats it" in log and seed >= 0
    assert load_config(tmp_path / "config.yaml").SEED == seed
    final = load_training_checkpoint(tmp_path / "model_final.pth")
    assert {"optimizer", "scheduler", "config"} <= set(final) and final["seed"] == seed  # what --resume needs
    assert load_config(__import__("yaml").safe_load(final["config"])).SEED == seed
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_command_finds_the_run_config(uninterrupted, two_images, tmp_path, capsys):
    """``evaluate OUTPUT/model_final.pth``: the config stored in the checkpoint, else config.yaml beside it."""
    from pycontrast_det.cli import main

    out, _ = uninterrupted
    assert main(["evaluate", str(out / "model_final.pth"), "--dataset", str(two_images), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"config: stored in {out / 'model_final.pth'}" in printed
    assert f"{out / 'model_final.pth'} on two_val (2 images" in printed
    bare = tmp_path / "bare"
    bare.mkdir()
    state = load_training_checkpoint(out / "model_final.pth")
    torch.save({"model": state["model"], "iteration": state["iteration"]}, bare / "model_final.pth")
    assert main(["evaluate", str(bare / "model_final.pth"), "--dataset", str(two_images), "--device", "cpu",
                 "--max-images", "1"]) == 2
    assert "no config in it or beside it" in capsys.readouterr().err
    shutil.copy(out / "config.yaml", bare / "config.yaml")
    assert main(["evaluate", str(bare / "model_final.pth"), "--dataset", str(two_images), "--device", "cpu",
                 "--max-images", "1"]) == 0
    assert f"config: {bare / 'config.yaml'}" in capsys.readouterr().out


REFUSED = [
    ("DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler"), ("INPUT.CROP.ENABLED", "True"),
    ("TEST.AUG.ENABLED", "True"), ("INPUT.MASK_FORMAT", "rle"),
    ("TEST.EXPECTED_RESULTS", "[['bbox', 'AP', 38, 1]]"), ("VIS_PERIOD", "20"),
    ("DATASETS.PROPOSAL_FILES_TRAIN", "('p.pkl',)"), ("DATASETS.PROPOSAL_FILES_TEST", "('p.pkl',)"),
    ("FLOAT32_PRECISION", "high"), ("GLOBAL.HACK", "2.0"), ("SOLVER.REFERENCE_WORLD_SIZE", "8"),
    ("DATASETS.TEST", "('shapes_val', 'shapes_train')"), ("DATASETS.TRAIN", "()"),
    ("SOLVER.MAX_ITER", "0"), ("SOLVER.CHECKPOINTS_KEPT", "-1"), ("TEST.EVAL_PERIOD", "-5"),
    ("SOLVER.CHECKPOINT_PERIOD", "-1"),
]


@pytest.mark.parametrize("key,value", REFUSED, ids=[k for k, _ in REFUSED])
def test_the_trainer_refuses_a_key_it_does_not_implement(key, value):
    from pycontrast_det.engine.config_check import check_engine_config

    cfg = load_config("R_50_FPN_1x_rand", ["DATASETS.TRAIN", "('shapes_train',)", key, value])
    with pytest.raises(ConfigError, match=re.escape(key)):
        check_engine_config(cfg, world_size=1)


def test_every_shipped_config_passes_the_trainer_checks_and_refusals_come_first(two_images, tmp_path):
    from pycontrast_det.config import resolve_config_path
    from pycontrast_det.engine.config_check import check_engine_config

    configs = sorted(resolve_config_path("R_50_FPN_1x").parent.glob("*.yaml"))
    assert len(configs) >= 10
    for path in configs:
        check_engine_config(load_config(path, ["DATASETS.TRAIN", "('shapes_train',)"]), world_size=8)
    with pytest.raises(ConfigError, match="SOLVER.REFERENCE_WORLD_SIZE = 8 with 2 process"):
        check_engine_config(load_config("R_50_FPN_1x", ["SOLVER.REFERENCE_WORLD_SIZE", "8"]), world_size=2)
    with pytest.raises(ConfigError, match="TEST.AUG.ENABLED"):  # before the folder is touched
        train(tiny_cfg(two_images, "TEST.AUG.ENABLED", "True"), RunOptions(output_dir=tmp_path / "never"))
    assert not (tmp_path / "never").exists()


def test_logs_parse_with_the_log_parser(uninterrupted):
    out, result = uninterrupted
    text = parse_log(out / "log.txt")
    rows = parse_log(out / "metrics.json")
    assert [p.iteration for p in text.losses] == [p.iteration for p in rows.losses] == list(range(8))
    assert text.losses[-1].total_loss == pytest.approx(rows.losses[-1].total_loss, rel=1e-3)
    assert rows.losses[0].lr == pytest.approx(0.02 * 0.001)  # warmup starts at WARMUP_FACTOR
    line = next(text for text in (out / "log.txt").read_text().splitlines() if " iter: 7 " in text)
    for word in ("eta:", "total_loss:", "loss_cls:", "loss_mask:", "lr:", "time:", "data_time:"):
        assert word in line
    first = json.loads((out / "metrics.json").read_text().splitlines()[0])
    assert {"iteration", "total_loss", "loss_rpn_cls", "lr", "time", "data_time"} <= set(first)


def test_non_finite_loss_stops_with_the_iteration(two_images, tmp_path):
    cfg = tiny_cfg(two_images, "SOLVER.BASE_LR", "1e8", "SOLVER.WARMUP_ITERS", "0", "SOLVER.MAX_ITER", "4")
    with pytest.raises(NonFiniteLossError, match=r"iteration=[1-3]\b.*SOLVER.BASE_LR"):
        train(cfg, RunOptions(output_dir=tmp_path), evaluate_at_end=False)
    assert not (tmp_path / "model_final.pth").exists()


def _two_process_worker(data: str, out: str) -> None:
    """Train 2 steps in each of two processes, evaluate on the 2 val images; record what this rank inferred and
    whether it scored (the evaluation module's functions, wrapped in this process)."""
    from pycontrast_det.utils import comm
    from pycontrast_det.evaluation import evaluator as ev

    seen: dict = {"inferred": [], "scored": 0}
    infer, score = ev.instances_to_coco, ev.score_results

    def recording_infer(image_id, *args, **kwargs):
        seen["inferred"].append(image_id)
        return infer(image_id, *args, **kwargs)

    def recording_score(*args, **kwargs):
        seen["scored"] += 1
        return score(*args, **kwargs)

    ev.instances_to_coco, ev.score_results = recording_infer, recording_score
    cfg = tiny_cfg(Path(data), "SOLVER.MAX_ITER", "2", "TEST.PRECISE_BN.ENABLED", "True",
                   "TEST.PRECISE_BN.NUM_ITER", "2",
                   "DATASETS.TEST", f"('{data}',)")
    result = train(cfg, RunOptions(output_dir=out))
    rank = comm.get_rank()
    torch.save(result.model.state_dict(), Path(out) / f"rank{rank}.pth")
    seen.update(shards=result.evaluation.shards, num_images=result.evaluation.num_images,
                box_ap=result.metrics["bbox"]["AP"])
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(seen))


@pytest.mark.slow
def test_two_cpu_processes_end_with_identical_weights_and_evaluate_once(two_images, tmp_path):
    """Two gloo processes: identical weights and statistics on both; each infers on its own share of the val
    images, rank 0 gathers and scores once, both get the same result."""
    launch(_two_process_worker, 2, device="cpu", args=(str(two_images), str(tmp_path)))
    rank0 = torch.load(tmp_path / "rank0.pth", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pth", weights_only=True)
    for key in rank0:  # weights, SyncBN running stats, PreciseBN statistics
        assert torch.equal(rank0[key], rank1[key]), key
    norm_weight = rank0["backbone.fpn.layer_blocks.0.1.weight"]  # SyncBN affine weight: trained, from 1.0
    assert not torch.equal(norm_weight, torch.ones_like(norm_weight))
    saved = load_training_checkpoint(tmp_path / "model_final.pth")["model"]
    assert torch.equal(saved["backbone.fpn.layer_blocks.0.1.running_var"],
                       rank1["backbone.fpn.layer_blocks.0.1.running_var"])
    assert not (tmp_path / "log.txt.rank1").exists()  # one log, by rank 0
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    val_ids = sorted(i["id"] for i in json.loads((two_images / "annotations" / "instances_val.json").read_text())[
        "images"])
    assert [s["inferred"] for s in seen] == [[val_ids[0]], [val_ids[1]]]  # contiguous shares, one image each
    assert [s["scored"] for s in seen] == [1, 0]
    assert seen[0]["shards"] == seen[1]["shards"] == [1, 1] and seen[0]["num_images"] == 2
    assert seen[0]["box_ap"] == seen[1]["box_ap"]
    assert parse_log(tmp_path / "metrics.json").final_bbox_ap == pytest.approx(seen[0]["box_ap"], abs=1e-9)


def _solver_cfg(**solver):
    cfg = get_cfg()
    cfg.SOLVER.update(BASE_LR=0.1, MAX_ITER=20, WARMUP_ITERS=10, WARMUP_FACTOR=0.001, STEPS=(12, 16), GAMMA=0.1,
                      **solver)
    return cfg


def _toy() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.Conv2d(4, 2, 1, bias=True))


def test_warmup_then_multistep_lr():
    cfg = _solver_cfg()
    optimizer = build_optimizer(cfg, _toy())
    scheduler = build_lr_scheduler(cfg, optimizer)
    seen = []
    for _ in range(20):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(0.1 * 0.001)
    assert seen[5] == pytest.approx(0.1 * (0.001 * 0.5 + 0.5))
    assert seen[9] == pytest.approx(0.1 * (0.001 * 0.1 + 0.9))
    assert seen[10] == seen[11] == pytest.approx(0.1)
    assert seen[12] == seen[15] == pytest.approx(0.01)
    assert seen[16] == seen[19] == pytest.approx(0.001)

    constant = build_optimizer(cfg, _toy())
    build_lr_scheduler(_solver_cfg(WARMUP_METHOD="constant"), constant)
    assert constant.param_groups[0]["lr"] == pytest.approx(0.1 * 0.001)
    with pytest.raises(ConfigError, match="WARMUP_METHOD"):
        build_lr_scheduler(_solver_cfg(WARMUP_METHOD="cosine"), constant)


def test_weight_decay_zero_on_every_norm_parameter():
    from pycontrast_det.modeling import build_model

    model = build_model(load_config("R_50_FPN_1x_rand"))
    norms = [m for m in model.modules() if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm))]
    assert len(norms) > 60  # SyncBN in backbone, FPN, box and mask heads
    decay = {id(p): g["weight_decay"] for g in param_groups(model, load_config("R_50_FPN_1x_rand").SOLVER)
             for p in g["params"]}
    assert all(decay[id(p)] == 0.0 for m in norms for p in m.parameters())
    assert decay[id(model.backbone.body.conv1.weight)] == pytest.approx(1e-4)
    assert decay[id(model.roi_heads.box_predictor.cls_score.bias)] == pytest.approx(1e-4)
    assert len(decay) == sum(1 for p in model.parameters() if p.requires_grad)

    cfg = _solver_cfg(BIAS_LR_FACTOR=2.0, WEIGHT_DECAY_BIAS=0.0)
    groups = {(round(g["lr"], 6), g["weight_decay"]): len(g["params"]) for g in param_groups(_toy(), cfg.SOLVER)}
    # conv weights; every bias (conv and norm) at 2x lr without decay; norm weights without decay
    assert groups == {(0.1, 1e-4): 2, (0.2, 0.0): 4, (0.1, 0.0): 2}


def test_checkpointer_round_trip(tmp_path):
    cfg = _solver_cfg()
    model = _toy()
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    for _ in range(3):
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        optimizer.step()
        scheduler.step()
    Checkpointer(model, tmp_path, optimizer=optimizer, scheduler=scheduler).save("model_0000002", 2, seed=5)

    fresh = _toy()
    fresh_opt = build_optimizer(cfg, fresh)
    fresh_sched = build_lr_scheduler(cfg, fresh_opt)
    state = Checkpointer(fresh, tmp_path, optimizer=fresh_opt, scheduler=fresh_sched).resume()
    assert state == {"iteration": 2, "seed": 5}
    assert fresh_opt.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert fresh_sched.last_epoch == 3
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    momentum = next(iter(fresh_opt.state.values()))["momentum_buffer"]
    assert torch.equal(momentum, next(iter(optimizer.state.values()))["momentum_buffer"])


def test_checkpoint_retention_keeps_the_newest(tmp_path):
    model = _toy()
    for keep, expected in ((1, ["model_final.pth"]), (2, ["model_0000005.pth", "model_final.pth"]),
                           (0, ["model_0000001.pth", "model_0000003.pth", "model_0000005.pth", "model_final.pth"])):
        folder = tmp_path / str(keep)
        checkpointer = Checkpointer(model, folder, keep=keep)
        for iteration in (1, 3, 5):
            checkpointer.save(f"model_{iteration:07d}", iteration)
            assert (folder / "last_checkpoint").read_text() == f"model_{iteration:07d}.pth"
        checkpointer.save("model_final", 6)
        assert sorted(p.name for p in folder.iterdir() if p.suffix == ".pth") == expected, keep
        assert checkpointer.last_checkpoint() == folder / "model_final.pth"


def test_scale_to_batch_applies_the_linear_rule():
    cfg = load_config("R_50_FPN_1x")
    scaled, message = scale_to_batch(cfg, 4)
    assert (scaled.SOLVER.IMS_PER_BATCH, scaled.SOLVER.BASE_LR, scaled.SOLVER.MAX_ITER) == (4, 0.005, 360000)
    assert list(scaled.SOLVER.STEPS) == [240000, 320000] and scaled.SOLVER.WARMUP_ITERS == 4000
    assert cfg.SOLVER.MAX_ITER == 90000  # the original is untouched
    assert "BASE_LR 0.02 -> 0.005" in message


@pytest.mark.slow
def test_train_command_two_cpu_processes(two_images, tmp_path, capsys):
    from pycontrast_det.cli import main

    out = tmp_path / "cli"
    code = main(["train", "--config", "R_50_FPN_1x_rand", "--output", str(out), "--device", "cpu", "--num-gpus", "2",
                 *TINY, "DATASETS.TRAIN", f"('{two_images}',)", "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "2"])
    assert code == 0
    assert "trained to iteration 2" in capsys.readouterr().out
    assert load_training_checkpoint(out / "model_final.pth")["iteration"] == 1
    assert "Training on two_train (2 process(es)" in (out / "log.txt").read_text()
    assert load_config(out / "config.yaml").OUTPUT_DIR == str(out)


@pytest.mark.parametrize("config", ["R_50_FPN_1x_infomin", "R_50_C4_1x_infomin"])
def test_model_weights_from_a_user_resnet(config, two_images, tmp_path):
    """MODEL.WEIGHTS may be a plain torchvision ResNet-50: converted (cached) and loaded into the backbone
    (C4: res5 into the ROI head). With lr 0 the trained model still holds exactly those weights."""
    import torchvision

    resnet = torchvision.models.resnet50()
    source = tmp_path / "resnet50.pth"
    torch.save(resnet.state_dict(), source)
    cfg = load_config(config, TINY + ["DATASETS.TRAIN", f"('{two_images}',)", "MODEL.WEIGHTS", str(source),
                                      "SOLVER.BASE_LR", "0.0", "SOLVER.MAX_ITER", "1"])
    model = train(cfg, RunOptions(output_dir=tmp_path / "out"), evaluate_at_end=False).model.state_dict()
    body = "backbone.body."
    assert torch.equal(model[body + "conv1.weight"], resnet.conv1.weight)
    assert torch.equal(model[body + "layer3.5.bn3.weight"], resnet.layer3[5].bn3.weight)
    res5 = "roi_heads.res5.0.conv2.weight" if config.startswith("R_50_C4") else body + "layer4.0.conv2.weight"
    assert torch.equal(model[res5], resnet.layer4[0].conv2.weight)
    log = (tmp_path / "out" / "log.txt").read_text()
    assert f"Initial weights: weights {source}: backbone pretrain, format torchvision" in log


def test_detectron2_weight_names_go_through_the_zoo(monkeypatch):
    from pycontrast_det.checkpoints import resolve_weights
    from pycontrast_det.errors import OfflineError

    monkeypatch.setenv("PYCONTRAST_ZOO_OFFLINE", "1")
    with pytest.raises(OfflineError, match="R-50.pkl"):  # the supervised pretrain's file, from the cache only
        resolve_weights("detectron2://ImageNetPretrained/MSRA/R-50.pkl")
    with pytest.raises(ConfigError, match="not a pretrain of the zoo"):
        resolve_weights("detectron2://ImageNetPretrained/MSRA/R-101.pkl")
    with pytest.raises(ConfigError, match="no such file"):
        resolve_weights("/nonexistent/weights.pkl")


@pytest.mark.parametrize("kind", ["value", "norm", "full_model"])
def test_gradient_clipping(kind):
    from pycontrast_det.engine.optim import gradient_clipper

    cfg = _solver_cfg()
    assert gradient_clipper(cfg) is None  # disabled by default, as in detectron2
    cfg.SOLVER.CLIP_GRADIENTS.update(ENABLED=True, CLIP_TYPE=kind, CLIP_VALUE=0.5)
    model = _toy()
    optimizer = build_optimizer(cfg, model)
    (model(torch.randn(2, 3, 8, 8)) * 1000).sum().backward()
    gradient_clipper(cfg)(optimizer)
    grads = [p.grad for g in optimizer.param_groups for p in g["params"]]
    if kind == "value":
        assert max(float(g.abs().max()) for g in grads) <= 0.5
    elif kind == "norm":
        for group in optimizer.param_groups:
            assert float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in group["params"]]))) <= 0.5 + 1e-5
    else:
        assert float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))) <= 0.5 + 1e-5


def test_amp_needs_cuda(two_images, tmp_path):
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        train(tiny_cfg(two_images), RunOptions(output_dir=tmp_path, amp=True))
    with pytest.raises(ConfigError, match="IMS_PER_BATCH 0 is not a positive multiple of the 1 processes"):
        train(tiny_cfg(two_images, "SOLVER.IMS_PER_BATCH", "0"), RunOptions(output_dir=tmp_path))
