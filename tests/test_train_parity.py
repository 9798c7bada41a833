"""Training parity with detectron2, layer by layer, on the shapes protocol of ``mask_rcnn_fpn_1x_rand``.

Each layer is checked twice: against numbers detectron2 produced (``tests/data/d2_train_reference.json``, written
by ``tests/data/make_train_reference.py`` in an environment with detectron2; no detectron2 needed here), and,
where detectron2 is importable, against detectron2 itself (tests marked ``needs detectron2``):

- the initial weights of a freshly built model (mean and std per tensor, seeded);
- one training step from identical weights on an identical batch: the five losses, every gradient and every
  BatchNorm's running statistics, with sampling sizes that take every candidate and with the protocol's real
  sampling sizes (the same RNG state draws the same anchors and RoIs);
- the optimizer's parameter groups (lr, weight decay per parameter) and the lr of every iteration;
- the data: the mapped image, boxes, classes and polygons of each record (flipped and not), and the training
  stream's sizes, flips and aspect-ratio grouping;
- BatchNorm statistics after PreciseBN (fvcore's population estimator).
"""
from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import math
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from torch import nn

from pycontrast_det.engine import RunOptions
from pycontrast_det.checkpoints.detectron2 import d2_to_model, model_to_d2, model_to_d2_key
from pycontrast_det.data import (DatasetMapper, ShapesParams, build_train_loader, load_records, resolve_dataset,
                                 shapes_root)
from pycontrast_det.engine.optim import build_lr_scheduler, build_optimizer
from pycontrast_det.engine.precise_bn import update_bn_stats
from pycontrast_det.recipes.reproduce import plan_reproduction
from pycontrast_det.modeling import build_model

ENTRY = "mask_rcnn_fpn_1x_rand"
REFERENCE = Path(__file__).parent / "data" / "d2_train_reference.json"
ALL_CANDIDATES = ("MODEL.RPN.BATCH_SIZE_PER_IMAGE", "1000000", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "1000000")
STEP_SEED = 5  # torch seed right before the step's forward (the sampling draws from it)
SHAPES = ShapesParams(num_train=40, num_val=1)  # the first 40 images of shapes' train split
STREAM_BATCHES = 100
SIZES = {"all_candidates": ALL_CANDIDATES, "real_sizes": ()}

needs_detectron2 = pytest.mark.skipif(importlib.util.find_spec("detectron2") is None, reason="needs detectron2")


# ----------------------------------------------------------------------------------------------- shared setup
# (tests/data/make_train_reference.py builds detectron2's side of the reference with these same helpers)

def protocol_cfg(*overrides: str) -> Any:
    """The effective config of the shapes protocol of ENTRY (what both engines train), plus ``overrides``; its config
    file as it is, without the entry's config_fixes (the reference in tests/data was made with the file as it is)."""
    return plan_reproduction(ENTRY, RunOptions(output_dir=Path("unused")), dataset="shapes",
                             config="R_50_FPN_1x_rand", overrides=list(overrides)).config()


def fill_weights(model: nn.Module) -> None:
    """Deterministic weights, independent of module order and seeds: each tensor from a generator seeded by its
    detectron2 name (norm weights near 1, other vectors small, matrices scaled by 1/sqrt(fan in))."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            d2_name = model_to_d2_key(name, "fpn")
            noise = torch.randn(tensor.shape, generator=torch.Generator().manual_seed(zlib.crc32(d2_name.encode())))
            if tensor.dim() > 1:
                tensor.copy_(noise / math.sqrt(tensor[0].numel()))
            elif name.endswith("running_var"):
                tensor.copy_(1 + 0.1 * noise.abs())
            elif ".norm." in d2_name and name.endswith("weight"):
                tensor.copy_(1 + 0.1 * noise)
            else:
                tensor.copy_(0.01 * noise if name.endswith("bias") else 0.1 * noise)


class ForcedAugmentation:
    """An rng for DatasetMapper that always takes the first short side and flips exactly when told to."""

    def __init__(self, flip: bool) -> None:
        self.flip = flip

    def random(self) -> float:
        return 0.0 if self.flip else 0.99

    def integers(self, high: int, *args: Any) -> int:
        return 0


def shapes_spec(root: Path) -> Any:
    return resolve_dataset(str(shapes_root(SHAPES, root)), split="train")


def step_batch(root: Path, cfg: Any) -> list[dict]:
    """The step's batch: the first two train images, the second flipped."""
    mapper = DatasetMapper(cfg, is_train=True)
    return [mapper(r, ForcedAugmentation(flip)) for r, flip in zip(load_records(shapes_spec(root))[:2], (False, True))]


def toy_bn_model() -> nn.Module:
    """Two BatchNorms behind convs, seeded weights: PreciseBN's estimator on varied batches."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1),
                         nn.BatchNorm2d(3)).train()


def toy_batches() -> list[torch.Tensor]:
    """Batches of different sizes and means, so that element counts and the spread of batch means matter."""
    generator = torch.Generator().manual_seed(11)
    shapes = ((2, 3, 9, 9), (5, 3, 7, 11), (1, 3, 12, 6), (3, 3, 8, 8))
    return [torch.randn(s, generator=generator) * (1 + i) + 2 * i for i, s in enumerate(shapes)]


def named_grad_norms(model: nn.Module) -> dict[str, float]:
    return {model_to_d2_key(n, "fpn"): float(p.grad.norm()) for n, p in model.named_parameters() if p.grad is not None}


def running_sums(model: nn.Module) -> dict[str, float]:
    """Sum of every BatchNorm buffer (running mean / var) under detectron2's names."""
    return {model_to_d2_key(n, "fpn"): float(t.double().sum()) for n, t in model.state_dict().items()
            if "running_" in n}


def init_stats(state: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """[mean, std, numel] of every floating tensor (std 0 for a single element)."""
    out = {}
    for name, tensor in state.items():
        if tensor.is_floating_point():
            t = tensor.double()
            out[name] = [float(t.mean()), float(t.std()) if t.numel() > 1 else 0.0, t.numel()]
    return out


def flipped(image: torch.Tensor, record: dict, mapper: DatasetMapper) -> bool:
    """Whether a mapped training image is the record's image mirrored (asserts it is one or the other)."""
    plain = mapper(record, ForcedAugmentation(False))["image"]
    if torch.equal(plain, image):
        return False
    assert torch.equal(plain.flip(-1), image), record["file_name"]
    return True


def stream_stats(batches: Iterator[list[dict]], records: dict[str, dict], mapper: DatasetMapper) -> dict[str, Any]:
    """Sizes, flip fraction and batch composition (L landscape, P portrait, S square) of STREAM_BATCHES batches."""
    sizes, flips, kinds = set(), [], {}
    for batch in itertools.islice(batches, STREAM_BATCHES):
        kind = []
        for item in batch:
            h, w = item["image"].shape[-2:]
            sizes.add((int(h), int(w)))
            flips.append(flipped(item["image"], records[item["file_name"]], mapper))
            kind.append("L" if w > h else "S" if w == h else "P")
        key = "".join(sorted(kind))
        kinds[key] = kinds.get(key, 0) + 1
    return {"sizes": sorted(sizes), "flip_fraction": float(np.mean(flips)), "kinds": kinds}


# ------------------------------------------------------------------------------------- against saved numbers

@lru_cache(maxsize=1)
def reference() -> dict[str, Any]:
    return json.loads(REFERENCE.read_text())


def test_reference_file_says_how_it_was_made():
    ref = reference()
    assert "make_train_reference.py" in ref["note"] and ref["versions"]["detectron2"]


def assert_same_distribution(ours: dict[str, list[float]], theirs: dict[str, list[float]]) -> None:
    """Per tensor: the same element count; constants equal; mean and std within sampling error."""
    assert set(ours) == set(theirs)
    for name, (mean, std, count) in theirs.items():
        got_mean, got_std, got_count = ours[name]
        assert got_count == count, name
        if std == 0:  # constants: norms (1, 0), biases and running statistics
            assert (got_mean, got_std) == (mean, 0.0), name
            continue
        # the sample std of n normal draws is off by about 1/sqrt(2n) (relative); 5 of those is a real difference
        assert got_std == pytest.approx(std, rel=5 / math.sqrt(2 * count)), name
        assert abs(got_mean - mean) <= 5 * std / math.sqrt(count), name


def our_initial_stats() -> dict[str, list[float]]:
    torch.manual_seed(0)
    return init_stats(model_to_d2(build_model(protocol_cfg()).state_dict(), "fpn"))


def test_initial_weights_have_detectron2s_distribution():
    assert_same_distribution(our_initial_stats(), reference()["init"])


@pytest.mark.parametrize("sizes", SIZES)
def test_one_training_step_matches_detectron2(sizes, tmp_path):
    """Identical weights and batch: the same losses, gradients and BatchNorm running statistics as detectron2
    (with the real sampling sizes too: the same RNG state samples the same anchors and RoIs)."""
    cfg = protocol_cfg(*SIZES[sizes])
    model = build_model(cfg).train()
    fill_weights(model)
    batch = step_batch(tmp_path, cfg)
    torch.manual_seed(STEP_SEED)
    losses = model(batch)
    sum(losses.values()).backward()
    ref = reference()["step"][sizes]
    assert {k: pytest.approx(v, rel=1e-4, abs=1e-7) for k, v in ref["losses"].items()} == {
        k: float(v.detach()) for k, v in losses.items()}
    norms = named_grad_norms(model)
    assert set(norms) == set(ref["grad_norms"])
    # bit-equal at detectron2's thread count (2); other thread counts sum in another order, which 50 layers of
    # random weights and batch norms amplify to 0.4% in the stem's gradients
    for name, value in ref["grad_norms"].items():
        assert norms[name] == pytest.approx(value, rel=1e-2, abs=1e-9), name
    # which layers hold running statistics, and their momentum update (sums over channels: absolute tolerance)
    assert {k: pytest.approx(v, rel=1e-4, abs=1e-4) for k, v in ref["running"].items()} == running_sums(model)


def test_parameter_groups_and_lr_per_iteration():
    cfg = protocol_cfg()
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    ref = reference()["optimizer"]
    names = {id(p): model_to_d2_key(n, "fpn") for n, p in model.named_parameters()}
    groups = {names[id(p)]: [g["lr"], g["weight_decay"]] for g in optimizer.param_groups for p in g["params"]}
    assert groups == ref["param_groups"]
    options = optimizer.defaults
    assert {k: options[k] for k in ref["sgd"]} == ref["sgd"]
    lrs = []
    for _ in range(cfg.SOLVER.MAX_ITER):
        lrs.append(sorted({g["lr"] for g in optimizer.param_groups}))
        optimizer.step()
        scheduler.step()
    assert lrs == [pytest.approx(v, rel=1e-12) for v in ref["lr"]]


def test_mapper_gives_detectron2s_images_and_targets(tmp_path):
    cfg = protocol_cfg()
    mapper = DatasetMapper(cfg, is_train=True)
    records = {Path(r["file_name"]).name: r for r in load_records(shapes_spec(tmp_path))}
    for expected in reference()["mapper"]:
        out = mapper(records[expected["file"]], ForcedAugmentation(expected["flip"]))
        image = out["image"]
        assert (list(image.shape), image.dtype) == (expected["shape"], torch.uint8)
        assert hashlib.sha256(image.numpy().tobytes()).hexdigest() == expected["image_sha256"]
        inst = out["instances"]
        assert inst["classes"].tolist() == expected["classes"]
        np.testing.assert_allclose(inst["boxes"].numpy(), expected["boxes"], atol=1e-4)
        assert [len(m) for m in inst["masks"]] == [len(m) for m in expected["polygons"]]
        for ours, theirs in zip(inst["masks"], expected["polygons"]):
            for a, b in zip(ours, theirs):
                np.testing.assert_allclose(a, b, atol=1e-9)


def test_training_stream_sizes_flips_and_grouping(tmp_path):
    cfg = protocol_cfg()
    spec = shapes_spec(tmp_path)
    records = {r["file_name"]: r for r in load_records(spec)}
    ours = stream_stats(build_train_loader(cfg, spec, seed=1), records, DatasetMapper(cfg, is_train=True))
    ref = reference()["stream"]
    assert ours["sizes"] == [tuple(s) for s in ref["sizes"]]
    # 200 fair coin flips: 0.5 +- 0.035 (1 sd); 3.5 sd apart would be a different flip rule
    assert abs(ours["flip_fraction"] - 0.5) < 0.125 and abs(ref["flip_fraction"] - 0.5) < 0.125
    # detectron2's grouping: landscape images together, portrait and square ones together (w > h or not), so
    # landscape batches take the landscape images' share
    assert set(ours["kinds"]) <= set(ref["kinds"]) == {"LL", "PP", "PS", "SS"}
    assert abs(ours["kinds"].get("LL", 0) - ref["kinds"]["LL"]) <= 0.1 * STREAM_BATCHES


def test_precise_bn_gives_fvcores_population_statistics():
    model = toy_bn_model()
    assert update_bn_stats(model, iter(toy_batches()), 4) == 4
    ref = reference()["precise_bn"]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn, expected in zip(bns, ref):
        np.testing.assert_allclose(bn.running_mean.numpy(), expected["mean"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bn.running_var.numpy(), expected["var"], rtol=1e-5, atol=1e-6)
        assert bn.momentum == 0.1
    # the older rule (mean of per-batch variances) is far from it: the batches' means differ
    assert np.all(np.asarray(ref[0]["var"]) > 1.1 * np.asarray(ref[0]["mean_of_batch_vars"]))


# --------------------------------------------------------------------------------- against detectron2 itself

def to_detectron2_inputs(batch: list[dict]) -> list[dict]:
    """Our mapped training dicts as detectron2's (Instances with gt_boxes, gt_classes, PolygonMasks)."""
    from detectron2.structures import Boxes, Instances, PolygonMasks

    out = []
    for item in batch:
        inst = Instances(tuple(item["image"].shape[-2:]))
        inst.gt_boxes = Boxes(item["instances"]["boxes"].clone())
        inst.gt_classes = item["instances"]["classes"].clone()
        inst.gt_masks = PolygonMasks([[np.asarray(p, dtype=np.float64) for p in m] for m in item["instances"]["masks"]])
        out.append({"image": item["image"], "instances": inst, "height": item["height"], "width": item["width"]})
    return out


def detectron2_cfg(cfg: Any) -> Any:
    from pycontrast_det.recipes.d2_backend import _to_detectron2_cfg

    return _to_detectron2_cfg(cfg, "cpu")


def detectron2_model(cfg: Any) -> nn.Module:
    from detectron2.modeling import build_model as d2_build_model

    return d2_build_model(detectron2_cfg(cfg))


@needs_detectron2
def test_live_initial_weights_match_detectron2s():
    torch.manual_seed(1)
    assert_same_distribution(our_initial_stats(), init_stats(detectron2_model(protocol_cfg()).state_dict()))


@needs_detectron2
def test_live_training_steps_match_detectron2(tmp_path):
    """Two SGD steps of both models from identical weights on the same batches with the real sampling sizes
    and the same RNG state: every loss, weight and buffer stays equal."""
    from detectron2.solver import build_lr_scheduler as d2_scheduler
    from detectron2.solver import build_optimizer as d2_optimizer
    from detectron2.utils.events import EventStorage

    cfg = protocol_cfg()
    theirs = detectron2_model(cfg).train()
    ours = build_model(cfg).train()
    fill_weights(ours)
    theirs.load_state_dict(model_to_d2(ours.state_dict(), "fpn"))
    d2cfg = detectron2_cfg(cfg)
    their_opt, our_opt = d2_optimizer(d2cfg, theirs), build_optimizer(cfg, ours)
    their_sched, our_sched = d2_scheduler(d2cfg, their_opt), build_lr_scheduler(cfg, our_opt)
    batches = build_train_loader(cfg, shapes_spec(tmp_path), seed=3)
    with EventStorage(0):
        for iteration in range(2):
            batch = next(batches)
            torch.manual_seed(100 + iteration)
            their_losses = theirs(to_detectron2_inputs(batch))
            torch.manual_seed(100 + iteration)
            our_losses = ours(batch)
            assert {k: pytest.approx(float(v.detach()), rel=1e-5, abs=1e-8) for k, v in their_losses.items()} \
                == {k: float(v.detach()) for k, v in our_losses.items()}
            for optimizer, scheduler, losses in ((their_opt, their_sched, their_losses),
                                                 (our_opt, our_sched, our_losses)):
                optimizer.zero_grad()
                sum(losses.values()).backward()
                optimizer.step()
                scheduler.step()
    expected, _ = d2_to_model(theirs.state_dict(), "fpn", ours.state_dict().keys())
    for name, value in ours.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-7, msg=name)


@needs_detectron2
def test_live_mapper_and_stream_match_detectron2(tmp_path):
    import copy

    import detectron2.data.transforms as T
    from detectron2.data import DatasetCatalog, DatasetMapper as D2Mapper
    from detectron2.data.datasets import register_coco_instances

    cfg = protocol_cfg()
    spec = shapes_spec(tmp_path)
    name = f"parity_{tmp_path.name}"
    register_coco_instances(name, {}, str(spec.json_file), str(spec.image_root))
    d2cfg = detectron2_cfg(cfg)
    ours = DatasetMapper(cfg, is_train=True)
    records = {r["file_name"]: r for r in load_records(spec)}
    for flip in (False, True):
        theirs = D2Mapper(d2cfg, is_train=True, augmentations=[
            T.ResizeShortestEdge(tuple(cfg.INPUT.MIN_SIZE_TRAIN), cfg.INPUT.MAX_SIZE_TRAIN, "choice"),
            T.RandomFlip(prob=float(flip))])
        for d in DatasetCatalog.get(name)[:10]:
            a, b = theirs(copy.deepcopy(d)), ours(records[d["file_name"]], ForcedAugmentation(flip))
            assert torch.equal(a["image"], b["image"])
            torch.testing.assert_close(a["instances"].gt_boxes.tensor, b["instances"]["boxes"])
            assert torch.equal(a["instances"].gt_classes, b["instances"]["classes"])
            for p, q in zip(a["instances"].gt_masks.polygons, b["instances"]["masks"]):
                np.testing.assert_allclose(np.concatenate(p), np.concatenate(q), atol=1e-9)


@needs_detectron2
def test_live_precise_bn_matches_fvcore(tmp_path):
    """fvcore's update_bn_stats (what detectron2's PreciseBN hook calls) and ours on the real model, the same
    batches and RNG state: identical running statistics."""
    from detectron2.utils.events import EventStorage
    from fvcore.nn.precise_bn import update_bn_stats as fvcore_update_bn_stats

    cfg = protocol_cfg()
    ours = build_model(cfg).train()
    fill_weights(ours)
    theirs = detectron2_model(cfg).train()
    theirs.load_state_dict(model_to_d2(ours.state_dict(), "fpn"))
    batches = list(itertools.islice(build_train_loader(cfg, shapes_spec(tmp_path), seed=2), 2))

    def seeded(convert: Any) -> Iterator[list[dict]]:
        for i, batch in enumerate(batches):
            torch.manual_seed(i)
            yield convert(batch)

    with EventStorage(0):
        fvcore_update_bn_stats(theirs, seeded(to_detectron2_inputs), 2)
    update_bn_stats(ours, seeded(lambda b: b), 2)
    their_sums = {k: float(t.double().sum()) for k, t in theirs.state_dict().items() if "running_" in k}
    assert {k: pytest.approx(v, rel=1e-6) for k, v in their_sums.items()} == running_sums(ours)
    toy = toy_bn_model()
    fvcore_update_bn_stats(toy, iter(toy_batches()), 4)
    for bn, expected in zip([m for m in toy.modules() if isinstance(m, nn.BatchNorm2d)], reference()["precise_bn"]):
        np.testing.assert_allclose(bn.running_var.numpy(), expected["var"], rtol=1e-6)


@needs_detectron2
def test_live_parameter_groups_and_schedule_match_detectron2():
    from detectron2.solver import build_lr_scheduler as d2_scheduler
    from detectron2.solver import build_optimizer as d2_optimizer

    cfg = protocol_cfg()
    theirs, ours = detectron2_model(cfg), build_model(cfg)
    names = {id(p): n for n, p in theirs.named_parameters()}
    their_opt = d2_optimizer(detectron2_cfg(cfg), theirs)
    their_groups = {names[id(p)]: [g["lr"], g["weight_decay"]] for g in their_opt.param_groups for p in g["params"]}
    our_names = {id(p): model_to_d2_key(n, "fpn") for n, p in ours.named_parameters()}
    our_opt = build_optimizer(cfg, ours)
    assert {our_names[id(p)]: [g["lr"], g["weight_decay"]] for g in our_opt.param_groups for p in g["params"]} \
        == their_groups
    their_sched, our_sched = d2_scheduler(detectron2_cfg(cfg), their_opt), build_lr_scheduler(cfg, our_opt)
    for _ in range(cfg.SOLVER.MAX_ITER):
        assert our_opt.param_groups[0]["lr"] == pytest.approx(their_opt.param_groups[0]["lr"], rel=1e-12)
        for optimizer, scheduler in ((their_opt, their_sched), (our_opt, our_sched)):
            optimizer.step()
            scheduler.step()
