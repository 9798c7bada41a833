"""Write ``d2_train_reference.json``: detectron2's numbers for ``tests/test_train_parity.py``.

Run it where detectron2 (and fvcore) can be imported, with this package installed, on CPU:

    OMP_NUM_THREADS=2 python tests/data/make_train_reference.py

It uses the test module's own helpers (config, weights, batch, toy PreciseBN setup), so both sides see the same
inputs; everything detectron2 computes here comes from detectron2's and fvcore's own code.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import test_train_parity as tp  # noqa: E402  (the tests' helpers)


def initial_weights() -> dict:
    torch.manual_seed(0)
    return tp.init_stats(tp.detectron2_model(tp.protocol_cfg()).state_dict())


def training_steps(root: Path) -> dict:
    """One step of detectron2's model from tp.fill_weights on tp.step_batch, for both sampling sizes."""
    from detectron2.utils.events import EventStorage

    from pycontrast_det.modeling import build_model

    out = {}
    for sizes, overrides in tp.SIZES.items():
        cfg = tp.protocol_cfg(*overrides)
        ours = build_model(cfg)
        tp.fill_weights(ours)
        model = tp.detectron2_model(cfg).train()
        model.load_state_dict(tp.model_to_d2(ours.state_dict(), "fpn"))
        batch = tp.to_detectron2_inputs(tp.step_batch(root, cfg))
        torch.manual_seed(tp.STEP_SEED)
        with EventStorage(0):
            losses = model(batch)
        sum(losses.values()).backward()
        out[sizes] = {
            "losses": {k: float(v) for k, v in losses.items()},
            "grad_norms": {n: float(p.grad.norm()) for n, p in model.named_parameters() if p.grad is not None},
            "running": {n: float(t.double().sum()) for n, t in model.state_dict().items() if "running_" in n},
        }
    return out


def optimizer() -> dict:
    from detectron2.solver import build_lr_scheduler, build_optimizer

    cfg = tp.protocol_cfg()
    d2cfg = tp.detectron2_cfg(cfg)
    model = tp.detectron2_model(cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    opt = build_optimizer(d2cfg, model)
    scheduler = build_lr_scheduler(d2cfg, opt)
    groups = {names[id(p)]: [g["lr"], g["weight_decay"]] for g in opt.param_groups for p in g["params"]}
    lrs = []
    for _ in range(cfg.SOLVER.MAX_ITER):
        lrs.append(sorted({g["lr"] for g in opt.param_groups}))
        opt.step()
        scheduler.step()
    sgd = {k: opt.defaults[k] for k in ("momentum", "dampening", "nesterov", "weight_decay")}
    return {"param_groups": groups, "lr": lrs, "sgd": sgd}


def mapper_and_stream(root: Path) -> tuple[list, dict]:
    """detectron2's DatasetMapper on the first records (flipped and not) and its training loader's statistics."""
    import detectron2.data.transforms as T
    from detectron2.data import DatasetCatalog, DatasetMapper, build_detection_train_loader
    from detectron2.data.datasets import register_coco_instances
    from detectron2.utils.env import seed_all_rng

    cfg = tp.protocol_cfg()
    spec = tp.shapes_spec(root)
    register_coco_instances("parity_shapes", {}, str(spec.json_file), str(spec.image_root))
    d2cfg = tp.detectron2_cfg(cfg)
    d2cfg.DATASETS.TRAIN = ("parity_shapes",)
    d2cfg.DATALOADER.NUM_WORKERS = 0
    mapped = []
    size = (tuple(cfg.INPUT.MIN_SIZE_TRAIN), cfg.INPUT.MAX_SIZE_TRAIN, "choice")
    for flip in (False, True):
        mapper = DatasetMapper(d2cfg, is_train=True, augmentations=[T.ResizeShortestEdge(*size),
                                                                      T.RandomFlip(prob=float(flip))])
        for record in DatasetCatalog.get("parity_shapes")[:3]:
            out = mapper(copy.deepcopy(record))
            inst = out["instances"]
            mapped.append({
                "file": Path(record["file_name"]).name, "flip": flip, "shape": list(out["image"].shape),
                "image_sha256": hashlib.sha256(out["image"].numpy().tobytes()).hexdigest(),
                "classes": inst.gt_classes.tolist(), "boxes": inst.gt_boxes.tensor.tolist(),
                "polygons": [[p.tolist() for p in m] for m in inst.gt_masks.polygons]})
    seed_all_rng(1)
    records = {r["file_name"]: r for r in tp.load_records(spec)}
    stream = tp.stream_stats(iter(build_detection_train_loader(d2cfg)), records, tp.DatasetMapper(cfg, is_train=True))
    return mapped, stream


def precise_bn() -> list:
    """fvcore's update_bn_stats on the toy model and batches, and the older rule's variance for contrast."""
    from fvcore.nn.precise_bn import update_bn_stats

    model = tp.toy_bn_model()
    batches = tp.toy_batches()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    per_batch: list[list[torch.Tensor]] = [[] for _ in bns]
    with torch.no_grad():
        for x in batches:
            for bn in bns:
                bn.momentum = 1.0
            model(x)
            for i, bn in enumerate(bns):
                per_batch[i].append(bn.running_var.clone())
                bn.momentum = 0.1
    model = tp.toy_bn_model()
    update_bn_stats(model, iter(batches), len(batches))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    return [{"mean": bn.running_mean.tolist(), "var": bn.running_var.tolist(),
             "mean_of_batch_vars": torch.stack(v).mean(0).tolist()} for bn, v in zip(bns, per_batch)]


def rounded(value: object) -> object:
    """Floats to 9 significant digits (every float32 survives), in nested lists and dicts."""
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    return value


def main() -> None:
    torch.set_num_threads(2)
    d2_dir = Path(importlib.util.find_spec("detectron2").origin).parent.parent
    commit = subprocess.run(["git", "-C", str(d2_dir), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        mapped, stream = mapper_and_stream(Path(tmp))
        reference = {
            "note": "detectron2's side of tests/test_train_parity.py, written by tests/data/make_train_reference.py "
                    "(CPU, float32); regenerate with that script where detectron2 is importable",
            "versions": {"detectron2": f"{importlib.metadata.version('detectron2')} ({commit})",
                         "fvcore": importlib.metadata.version("fvcore"), "torch": torch.__version__},
            "init": initial_weights(),
            "step": training_steps(Path(tmp)),
            "optimizer": optimizer(),
            "mapper": mapped,
            "stream": stream,
            "precise_bn": precise_bn(),
        }
    text = json.dumps(rounded(reference), indent=None, separators=(",", ":"), sort_keys=True)
    (HERE / "d2_train_reference.json").write_text(text + "\n")
    print(f"wrote {HERE / 'd2_train_reference.json'} ({len(text) // 1024} KiB)")


if __name__ == "__main__":
    main()
