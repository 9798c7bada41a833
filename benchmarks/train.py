"""Training speed and peak memory: our trainer's step on the R50-FPN entry vs torchvision's maskrcnn_resnet50_fpn.

Both train from random init (torchvision: weights=None, weights_backbone=None, every stage trainable, so plain
BatchNorm like our single-process SyncBN) on the same shapes images at the same input size and batch, with
the same RPN/RoI sample sizes and SGD settings. Architectures differ where the recipes differ: ours has the
PyContrast heads (4conv1fc box head and mask head with norms), torchvision 2fc and norm-free heads. Each
(model, device) runs in its own subprocess so that its peak memory is its own (CPU: ru_maxrss; CUDA:
torch.cuda.max_memory_allocated). The shapes protocol's own setting is the default (96 px, 2 images). Our
step runs twice: with OMP_WAIT_POLICY as set in the environment and with PASSIVE (the CLI's default), whose
difference shows on a busy CPU.

    python benchmarks/train.py                        # CPU (+ CUDA when present)
    python benchmarks/train.py --size 128 --batch 4 --iters 10 --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
ENTRY = "mask_rcnn_fpn_1x_rand"


def _cfg(args: argparse.Namespace) -> Any:
    from pycontrast_det.engine.reproduce import plan_reproduction

    plan = plan_reproduction(ENTRY, dataset="shapes", overrides=[
        "INPUT.MIN_SIZE_TRAIN", f"({args.size},)", "INPUT.MAX_SIZE_TRAIN", str(2 * args.size),
        "SOLVER.IMS_PER_BATCH", str(args.batch), "SOLVER.WARMUP_ITERS", "0"])
    return plan.config()


def _batches(cfg: Any, count: int) -> list[list[dict]]:
    from pycontrast_det.data import build_train_loader, resolve_dataset

    stream = build_train_loader(cfg, resolve_dataset("shapes", split="train"), seed=0, num_workers=0)
    return [next(stream) for _ in range(count)]


def _ours(cfg: Any, device: str) -> tuple[Any, Any]:
    from pycontrast_det.engine.optim import build_optimizer
    from pycontrast_det.modeling import build_model

    model = build_model(cfg).to(device).train()
    optimizer = build_optimizer(cfg, model)

    def step(batch: list[dict]) -> float:
        losses = model(batch)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return float(total)

    return model, step


def _polygon_mask(polygons: list, height: int, width: int) -> Any:
    import numpy as np
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (width, height), 0)
    for polygon in polygons:
        ImageDraw.Draw(canvas).polygon([float(v) for v in polygon], fill=1)
    return np.asarray(canvas, dtype=np.uint8)


def _torchvision(cfg: Any, device: str) -> tuple[Any, Any]:
    import numpy as np
    import torch
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

    def convert(item: dict) -> tuple[Any, dict]:
        image = item["image"].float().div(255)
        if cfg.INPUT.FORMAT == "BGR":
            image = image.flip(0)
        height, width = image.shape[-2:]
        inst = item["instances"]
        masks = np.stack([_polygon_mask(p, height, width) for p in inst["masks"]]) if inst["masks"] else \
            np.zeros((0, height, width), np.uint8)
        return image.to(device), {"boxes": inst["boxes"].to(device), "labels": (inst["classes"] + 1).to(device),
                                  "masks": torch.from_numpy(masks).to(device)}

    def step(batch: list[dict]) -> float:
        images, targets = zip(*(convert(item) for item in batch))
        losses = model(list(images), list(targets))
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return float(total)

    return model, step


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = _cfg(args)
    batches = _batches(cfg, args.warmup + args.iters)
    _, step = (_ours if args.child == "ours" else _torchvision)(cfg, args.device)
    cuda = args.device.startswith("cuda")
    for batch in batches[:args.warmup]:
        step(batch)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for batch in batches[args.warmup:]:
        step(batch)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps({"model": args.child, "device": args.device, "it_s": args.iters / seconds,
                      "s_it": seconds / args.iters, "peak_mib": peak, "threads": torch.get_num_threads()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=96, help="shortest input edge (default: the shapes protocol's)")
    parser.add_argument("--batch", type=int, default=2, help="images per iteration")
    parser.add_argument("--iters", type=int, default=8, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", action="append", default=None, help="cpu, cuda (repeatable)")
    parser.add_argument("--child", choices=("ours", "torchvision"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.device = args.device[0]
        _child(args)
        return
    import torch

    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"Mask R-CNN R50-FPN training step, random init, {args.batch} shapes images at {args.size} px, "
          f"{args.iters} timed iterations after {args.warmup}")
    print(f"{'model':<58}{'device':<8}{'threads':>8}{'it/s':>8}{'s/it':>8}{'peak MiB':>10}")
    # OMP_WAIT_POLICY as the environment has it, and PASSIVE (what `pycontrast-zoo train/reproduce` default to)
    wait_policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    runs = [("ours", wait_policy), ("ours", "PASSIVE"), ("torchvision", wait_policy)]
    for device in devices:
        for child, policy in runs:
            command = [sys.executable, __file__, "--child", child, "--device", device, "--size", str(args.size),
                       "--batch", str(args.batch), "--iters", str(args.iters), "--warmup", str(args.warmup),
                       "--threads", str(args.threads)]
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            if policy != "unset":
                env["OMP_WAIT_POLICY"] = policy
            done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=env)
            if done.returncode:
                print(f"{child} on {device} failed:\n{done.stderr[-2000:]}")
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            label = "ours" if child == "ours" else "torchvision maskrcnn_resnet50_fpn"
            label += f", OMP_WAIT_POLICY {policy}"
            print(f"{label:<58}{device:<8}{row['threads']:>8}{row['it_s']:>8.2f}{row['s_it']:>8.2f}"
                  f"{row['peak_mib']:>10.0f}")
    print(f"(load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    main()
