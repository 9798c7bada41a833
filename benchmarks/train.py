"""Training speed and peak memory: our training step vs detectron2's (when importable) and torchvision's.

All train the R50-FPN entry's architecture (``mask_rcnn_fpn_1x_rand``: SyncBN everywhere, which in one process
is BatchNorm, 4conv1fc box head, normed mask head) from random init, on the same ``shapes`` batches (our
loader, seed 0: detectron2 gets them converted to its Instances), at the same input size, batch and RoIs per
image, with SGD over the config's parameter groups. detectron2 builds its model from the same config
(``recipes.d2_backend``'s conversion), so the norms, heads and sampling sizes are the same; torchvision's
maskrcnn_resnet50_fpn has its own heads (2fc box head, norm-free heads) and stands in when detectron2 is
missing. Each model trains in its own worker process; the workers take turns, round after round (see
workers.py). CPU seconds per iteration are the steadier figure on a busy machine.

    /path/to/d2venv/bin/python benchmarks/train.py     # 320 px, batch 2, 128 RoIs/img (this checkout's code)
    python benchmarks/train.py --device cuda --iters 20
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from typing import Any, Callable

import workers

PACKAGE = workers.use_this_checkout()
ENTRY = "mask_rcnn_fpn_1x_rand"


def _cfg(args: argparse.Namespace) -> Any:
    from pycontrast_det.recipes.reproduce import plan_reproduction

    plan = plan_reproduction(ENTRY, dataset="shapes", overrides=[
        "INPUT.MIN_SIZE_TRAIN", f"({args.size},)", "INPUT.MAX_SIZE_TRAIN", str(2 * args.size),
        "SOLVER.IMS_PER_BATCH", str(args.batch), "SOLVER.WARMUP_ITERS", "0",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", str(args.rois)])
    return plan.config()


def _batches(cfg: Any, count: int) -> list[list[dict]]:
    from pycontrast_det.data import build_train_loader, resolve_dataset

    stream = build_train_loader(cfg, resolve_dataset("shapes", split="train"), seed=0, num_workers=0)
    return [next(stream) for _ in range(count)]


def _step(model: Any, optimizer: Any, convert: Callable[[list[dict]], Any]) -> Callable[[list[dict]], float]:
    def step(batch: list[dict]) -> float:
        losses = model(convert(batch))
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return float(total)

    return step


def _ours(cfg: Any, device: str) -> Callable[[list[dict]], float]:
    from pycontrast_det.engine.optim import build_optimizer
    from pycontrast_det.modeling import build_model

    model = build_model(cfg).to(device).train()
    return _step(model, build_optimizer(cfg, model), lambda batch: batch)


def _detectron2(cfg: Any, device: str) -> Callable[[list[dict]], float]:
    import numpy as np
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer
    from detectron2.structures import Boxes, Instances, PolygonMasks
    from detectron2.utils.events import EventStorage

    from pycontrast_det.recipes.d2_backend import _to_detectron2_cfg

    d2cfg = _to_detectron2_cfg(cfg, device)
    model = build_model(d2cfg).train()
    EventStorage(0).__enter__()  # detectron2's heads log to the current storage; this worker's lifetime

    def convert(batch: list[dict]) -> list[dict]:
        items = []
        for item in batch:
            height, width = item["image"].shape[-2:]
            inst = Instances((height, width))
            inst.gt_boxes = Boxes(item["instances"]["boxes"])
            inst.gt_classes = item["instances"]["classes"]
            inst.gt_masks = PolygonMasks([[np.asarray(p, dtype=np.float64) for p in polygons]
                                          for polygons in item["instances"]["masks"]])
            items.append({"image": item["image"], "instances": inst, "height": height, "width": width})
        return items

    return _step(model, build_optimizer(d2cfg, model), convert)


def _torchvision(cfg: Any, device: str) -> Callable[[list[dict]], float]:
    import numpy as np
    import torch
    from PIL import Image, ImageDraw
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    size = int(cfg.INPUT.MIN_SIZE_TRAIN[0])
    model = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1,
        trainable_backbone_layers=5, min_size=size, max_size=int(cfg.INPUT.MAX_SIZE_TRAIN),
        rpn_batch_size_per_image=cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE,
        rpn_pre_nms_top_n_train=cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN,
        rpn_post_nms_top_n_train=cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN,
        box_batch_size_per_image=cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.SOLVER.BASE_LR, momentum=0.9, weight_decay=1e-4)

    def mask(polygons: list, height: int, width: int) -> Any:
        canvas = Image.new("L", (width, height), 0)
        for polygon in polygons:
            ImageDraw.Draw(canvas).polygon([float(v) for v in polygon], fill=1)
        return np.asarray(canvas, dtype=np.uint8)

    def step(batch: list[dict]) -> float:
        images, targets = [], []
        for item in batch:
            image = item["image"].float().div(255)
            image = image.flip(0) if cfg.INPUT.FORMAT == "BGR" else image
            height, width = image.shape[-2:]
            inst = item["instances"]
            masks = np.stack([mask(p, height, width) for p in inst["masks"]]) if inst["masks"] else \
                np.zeros((0, height, width), np.uint8)
            images.append(image.to(device))
            targets.append({"boxes": inst["boxes"].to(device), "labels": (inst["classes"] + 1).to(device),
                            "masks": torch.from_numpy(masks).to(device)})
        losses = model(images, targets)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return float(total)

    return step


BUILDERS = {"ours": _ours, "detectron2": _detectron2, "torchvision": _torchvision}


def worker(args: argparse.Namespace) -> None:
    """Build the model and the batches, warm up, then time ``--iters`` steps per round (workers.serve)."""
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cfg = _cfg(args)
    batches = _batches(cfg, args.warmup + args.iters * args.rounds)
    step = BUILDERS[args.worker](cfg, args.device)
    cuda = args.device.startswith("cuda")
    for batch in batches[:args.warmup]:
        step(batch)
    queue = iter(batches[args.warmup:])

    def run_round() -> dict:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start, cpu_start = time.perf_counter(), time.process_time()
        losses = [step(next(queue)) for _ in range(args.iters)]
        if cuda:
            torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return {"s_it": (time.perf_counter() - start) / args.iters,
                "cpu_s_it": (time.process_time() - cpu_start) / args.iters, "peak_mib": peak,
                "loss": sum(losses) / len(losses)}

    workers.serve(args.worker, run_round)


def main() -> int:
    """Run the benchmark (or, with --worker, one worker); 1 when ours or the baseline could not run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=320, help="shortest input edge (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=2, help="images per iteration (default: %(default)s)")
    parser.add_argument("--rois", type=int, default=128, help="sampled RoIs per image (default: %(default)s)")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per round (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all workers; the best counts")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--torchvision", action="store_true",
                        help="also torchvision's model when detectron2 is the baseline")
    parser.add_argument("--worker", choices=tuple(BUILDERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    try:
        import detectron2  # noqa: F401
        baseline = "detectron2"
    except ImportError:
        baseline = "torchvision"
    names = [baseline, "ours"] + (["torchvision"] if baseline == "detectron2" and args.torchvision else [])
    load = os.getloadavg()[0]
    print(f"pycontrast_det from {PACKAGE}")
    print(f"Mask R-CNN R50-FPN ({ENTRY}) training step, random init, {args.batch} shapes images at {args.size} px, "
          f"{args.rois} RoIs/img, {args.threads} thread(s), device {args.device}; {args.iters} iterations x "
          f"{args.rounds} round(s) after {args.warmup}, best round; load average {load:.1f} on {os.cpu_count()} CPUs"
          f"{' (under load: wall times are not final)' if load > 0.5 * (os.cpu_count() or 1) else ''}")
    common = ["--size", str(args.size), "--batch", str(args.batch), "--rois", str(args.rois), "--iters",
              str(args.iters), "--rounds", str(args.rounds), "--warmup", str(args.warmup), "--threads",
              str(args.threads), "--device", args.device]
    started = {name: workers.start(name, [sys.executable, __file__, "--worker", name] + common) for name in names}
    if not workers.required_started(started, (baseline, "ours")):
        return 1
    replies = workers.take_turns({n: p for n, p in started.items() if p is not None}, args.rounds)
    best = {name: {key: min(r[key] for r in rounds) for key in ("s_it", "cpu_s_it")}
            for name, rounds in replies.items()}
    print(f"{'model':<46}{'s/it':>8}{'CPU s/it':>10}{'peak MiB':>10}{'x base (CPU)':>14}{'x base (wall)':>15}"
          f"{'mean loss':>11}")
    for name, rounds in replies.items():
        row, base = best[name], best.get(baseline)
        label = {"ours": "ours", "detectron2": f"detectron2 {__import__('detectron2').__version__}"
                 if baseline == "detectron2" else "", "torchvision": "torchvision maskrcnn_resnet50_fpn"}[name]
        ratio_cpu = base["cpu_s_it"] / row["cpu_s_it"] if base else float("nan")
        ratio_wall = base["s_it"] / row["s_it"] if base else float("nan")
        print(f"{label:<46}{row['s_it']:>8.2f}{row['cpu_s_it']:>10.2f}{rounds[-1]['peak_mib']:>10.0f}"
              f"{ratio_cpu:>14.2f}{ratio_wall:>15.2f}{rounds[-1]['loss']:>11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
