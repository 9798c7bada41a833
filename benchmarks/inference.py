"""Inference speed and peak memory: our Mask R-CNN vs torchvision's maskrcnn_resnet50_fpn_v2, side by side.

Both models get the same images, already resized to the same input size, one image per forward pass,
randomly initialised (torchvision: weights=None; ours: the config's architecture, no checkpoint) with the
same number of classes, and the same detection workload (score threshold 0, at most 100 detections, so both
paste the same number of masks). Each (model, device, precision) runs in its own subprocess so that its
peak memory is its own: CPU peak resident set size (ru_maxrss) and its growth during inference; CUDA
torch.cuda.max_memory_allocated. A last row gives our CPU seconds per image at the configs' default
800-pixel input size.

    python benchmarks/inference.py                      # fixture images (or generated), CPU (+ CUDA if present)
    python benchmarks/inference.py --images 8 --size 640 --threads 2
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
from typing import Any, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_SIZE = 1333
DEFAULT_CONFIG = "R_50_FPN_1x_infomin"


def _fixture_images() -> list[Path]:
    root = Path(os.environ.get("PYCONTRAST_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))
    return sorted((root / "d2-parity" / "images").glob("*.png"))


def _load_images(args: argparse.Namespace, short: int) -> list[Any]:
    """``args.images`` HWC uint8 RGB arrays at shortest edge ``short`` (fixture images, cycled, or generated)."""
    import numpy as np
    from PIL import Image

    from pycontrast_det.modeling.preprocess import resize_shortest_edge

    sources = [Path(p) for p in args.image_files] or ([] if args.generated else _fixture_images())
    images = []
    rng = np.random.default_rng(0)
    for index in range(args.images):
        if sources:
            with Image.open(sources[index % len(sources)]) as image:
                array = np.array(image.convert("RGB"))
        else:  # smooth random colour fields, 480x640 like COCO's typical image
            low = rng.integers(0, 256, size=(15, 20, 3), dtype=np.uint8)
            array = np.array(Image.fromarray(low).resize((640, 480), Image.BILINEAR))
        images.append(resize_shortest_edge(array, short, MAX_SIZE))
    return images


def _build(kind: str, device: str, num_classes: int, short: int, config: str) -> tuple[Any, Any]:
    """(model in eval mode on device, callable running one HWC uint8 image -> detections)."""
    import torch

    if kind == "ours":
        import pycontrast_det as pcd

        overrides = ["INPUT.MIN_SIZE_TEST", str(short), "INPUT.MAX_SIZE_TEST", str(MAX_SIZE),
                     "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "100",
                     "MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes)]
        model = pcd.load(config, pretrained=False, device=device, overrides=overrides)

        def run(image: Any) -> int:
            return len(model.predict(image)["scores"])
        return model, run

    from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

    model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=num_classes + 1,
                                     min_size=short, max_size=MAX_SIZE, box_score_thresh=0.0,
                                     box_detections_per_img=100).eval().to(device)

    def run(image: Any) -> int:
        tensor = torch.from_numpy(image).permute(2, 0, 1).to(device=device, dtype=torch.float32) / 255.0
        return len(model([tensor])[0]["scores"])
    return model, run


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Run one configuration in this process; returns the figures as a dict."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = _load_images(args, args.size)
    device = args.device
    cuda = device.startswith("cuda")
    model, run = _build(args.model, device, args.num_classes, args.size, args.config)
    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    autocast = torch.autocast("cuda", dtype=torch.float16, enabled=args.amp) if cuda else torch.autocast(
        "cpu", enabled=False)
    detections = []
    with torch.inference_mode(), autocast:
        for image in images[:args.warmup]:
            run(image)
        if cuda:
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        for image in images:
            detections.append(run(image))
        if cuda:
            torch.cuda.synchronize()
        elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu_start
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "model": args.model, "device": device, "amp": bool(args.amp), "size": args.size,
        "mpix": sum(im.shape[0] * im.shape[1] for im in images) / len(images) / 1e6, "images": len(images),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "images_per_s": len(images) / elapsed, "s_per_image": elapsed / len(images),
        "cpu_s_per_image": cpu_elapsed / len(images),
        "mean_detections": sum(detections) / len(detections),
        "peak_rss_mib": rss_peak, "rss_growth_mib": rss_peak - rss_built,
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }


def _spawn(args: argparse.Namespace, model: str, device: str, amp: bool, size: int) -> dict[str, Any]:
    """Run ``worker`` for one configuration in a fresh interpreter and parse its JSON line."""
    command = [sys.executable, __file__, "--worker", "--model", model, "--device", device, "--size", str(size),
               "--images", str(args.images), "--warmup", str(args.warmup), "--threads", str(args.threads),
               "--num-classes", str(args.num_classes), "--config", args.config]
    command += ["--amp"] if amp else []
    command += ["--generated"] if args.generated else []
    for path in args.image_files:
        command += ["--image-file", path]
    pythonpath = [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(pythonpath))
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return {"model": model, "device": device, "amp": amp, "size": size, "error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(result: dict[str, Any]) -> str:
    label = f"{result['model']:<12} {result['device']:<6} {'amp' if result['amp'] else 'fp32':<5} {result['size']:>5}"
    if "error" in result:
        return f"{label}  FAILED: {result['error']}"
    cuda = f"{result['cuda_peak_mib']:9.0f}" if result["cuda_peak_mib"] is not None else f"{'-':>9}"
    figures = [f"{result['mpix']:6.3f}", f"{result['params_m']:7.2f}", f"{result['images_per_s']:8.3f}",
               f"{result['s_per_image']:8.3f}", f"{result['cpu_s_per_image']:8.3f}",
               f"{result['mean_detections']:6.1f}", f"{result['peak_rss_mib']:9.0f}",
               f"{result['rss_growth_mib']:9.0f}", cuda]
    return f"{label} {' '.join(figures)}"


_HEADER = (("model", 12, "<"), ("device", 6, "<"), ("prec", 5, "<"), ("size", 5, ">"), ("MPix", 6, ">"),
           ("Mparam", 7, ">"), ("img/s", 8, ">"), ("s/img", 8, ">"), ("CPUs/img", 8, ">"), ("dets", 6, ">"),
           ("peakRSS", 9, ">"), ("RSS+inf", 9, ">"), ("CUDApeak", 9, ">"))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4, help="timed images per run (default: %(default)s)")
    parser.add_argument("--size", type=int, default=512,
                        help="shortest edge of the input, both models (max edge 1333; default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed images first (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    parser.add_argument("--num-classes", type=int, default=80, help="classes of both models (default: 80)")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="our config (default: %(default)s)")
    parser.add_argument("--image-file", dest="image_files", action="append", default=[],
                        help="use this image (repeatable; default: the detectron2 fixture images)")
    parser.add_argument("--generated", action="store_true", help="use generated images, not the fixtures")
    parser.add_argument("--no-cuda", action="store_true", help="skip CUDA even when present")
    parser.add_argument("--skip-800", action="store_true", help="skip our CPU seconds per image at 800 px")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=("ours", "torchvision"), help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--amp", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    import torch

    runs = [(model, "cpu", False, args.size) for model in ("ours", "torchvision")]
    if torch.cuda.is_available() and not args.no_cuda:
        runs += [(model, "cuda", amp, args.size) for amp in (False, True) for model in ("ours", "torchvision")]
    if not args.skip_800:
        runs.append(("ours", "cpu", False, 800))
    source = ", ".join(args.image_files) or ("generated" if args.generated or not _fixture_images()
                                              else "detectron2 fixture images")
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), {args.images} image(s) + {args.warmup} "
          f"warm-up, batch 1, images: {source}; score threshold 0, <= 100 detections, {args.num_classes} classes")
    print(" ".join(f"{name:{align}{width}}" for name, width, align in _HEADER))
    for run in runs:
        print(_row(_spawn(args, *run)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
