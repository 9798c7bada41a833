"""Inference speed and peak memory: ours (fast path, each optimisation off in turn) vs detectron2, interleaved.

Every model gets the same weights (the detectron2 parity fixtures, FPN and C4, stored float16 and run in
float32), the same images resized the same way (detectron2's ResizeShortestEdge, 800 px by default), one image
per forward pass, the same number of CPU threads. detectron2 runs when it is importable (run this script with
its interpreter, e.g. ``/path/to/d2venv/bin/python benchmarks/inference.py``: the pycontrast_det measured is
always this checkout's, whatever that interpreter has installed); otherwise torchvision's
maskrcnn_resnet50_fpn_v2 (random init, same input size, score threshold 0 and at most 100 detections: about the
mask-pasting workload of ours) stands in. Rows:

- ``ours``: the default fast path (norms folded, channels_last, fused sum/ReLU); then the same model with one
  optimisation switched off (``no fold``, ``no channels_last``, ``no fused ReLU``, ``no parallel RoIAlign``) and all
  of them (``reference``);
  on CUDA each precision (fp32, fp16 and bf16 autocast) for ``ours`` and ``reference``.
- ``onnxruntime``: our model exported to ONNX (its resize is inside the graph), run by onnxruntime on the CPU.

Each model lives in its own worker process (peak memory: ru_maxrss after building and a first image, shown for
the first row of each worker; CUDA: max allocated per row); the workers take turns, round after round, so that
a busy machine slows all of them alike. CPU seconds per image are the steadier figure on a loaded machine.
Ratios are images/s over the baseline's (detectron2's, else torchvision's).

    /path/to/d2venv/bin/python benchmarks/inference.py --arch fpn c4 --images 2 --rounds 2 \
        --onnx-python .venv/bin/python                 # onnxruntime from another interpreter
    python benchmarks/inference.py --device cuda          # fp32 / fp16 / bf16 rows on the GPU
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import workers

PACKAGE = workers.use_this_checkout()
REPO_ROOT = workers.REPO_ROOT
OFF = {"ours": {}, "no fold": {"fold_norms": False}, "no channels_last": {"channels_last": False},
       "no fused ReLU": {"fuse_activations": False}, "no parallel RoIAlign": {"parallel_roi_align": False},
       "reference": {"fold_norms": False, "channels_last": False, "fuse_activations": False,
                     "parallel_roi_align": False}}
DEFAULT_IMAGES = ("coffee", "chelsea", "shapes_0000")


def _fixtures() -> Path:
    return Path(os.environ.get("PYCONTRAST_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures")) / "d2-parity"


def _weights(arch: str) -> dict[str, Any]:
    import torch

    state = torch.load(_fixtures() / arch / "weights_fp16.pth", weights_only=True)["model"]
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _overrides(args: argparse.Namespace) -> list[str]:
    return ["INPUT.MIN_SIZE_TEST", str(args.size), "INPUT.MAX_SIZE_TEST", str(args.max_size)]


def _ours(args: argparse.Namespace) -> Any:
    import pycontrast_det as pcd

    path = _fixtures() / args.arch
    return pcd.load(path / "config.yaml", weights=path / "weights_fp16.pth", device=args.device,
                    overrides=_overrides(args))


def _images(args: argparse.Namespace) -> list[Any]:
    import numpy as np
    from PIL import Image

    names = (args.image or list(DEFAULT_IMAGES))[:args.images]
    return [np.asarray(Image.open(_fixtures() / "images" / f"{name}.png").convert("RGB")) for name in names]


def _item(image: Any, cfg: Any) -> dict:
    """detectron2's test-time input for one RGB image (channel order of the config, ResizeShortestEdge)."""
    import numpy as np
    import torch

    from pycontrast_det.modeling.preprocess import resize_shortest_edge

    array = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
    resized = resize_shortest_edge(np.ascontiguousarray(array), cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    return {"image": torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))),
            "height": image.shape[0], "width": image.shape[1]}


def _detections(out: dict) -> dict:
    """boxes and scores as lists (to compare models' outputs in the parent)."""
    return {"boxes": out["boxes"].float().cpu().tolist(), "scores": out["scores"].float().cpu().tolist()}


# ------------------------------------------------------------------------------------------ workers

def _build(args: argparse.Namespace) -> dict[str, Callable[[Any], dict]]:
    """{row name: run one image -> output dict} for this worker's model."""
    import torch

    kind = args.worker
    if kind == "ours":
        from pycontrast_det.modeling.fuse import FastPath
        from pycontrast_det.modeling.meta_arch import precision_context

        model = _ours(args)
        rows: dict[str, Callable[[Any], dict]] = {}
        precisions = ["fp32", "fp16", "bf16"] if args.device.startswith("cuda") else ["fp32"]
        settings = {name: FastPath(**off) for name, off in OFF.items()}
        for precision in precisions:
            for name, path in settings.items():
                if precision != "fp32" and name not in ("ours", "reference"):
                    continue

                def run(image: Any, path: FastPath = path, precision: str = precision) -> dict:
                    model.fast_path = path
                    with torch.inference_mode(), precision_context(precision, model.device):
                        return model([model.to_input(image)])[0]
                rows[name if precision == "fp32" else f"{name} {precision}"] = run
        return rows
    if kind == "detectron2":
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model

        from pycontrast_det.recipes.d2_backend import register_res5_extra_norm

        register_res5_extra_norm()
        cfg = get_cfg()
        cfg.set_new_allowed(True)
        cfg.merge_from_file(str(_fixtures() / args.arch / "config.yaml"))
        cfg.merge_from_list(_overrides(args) + ["MODEL.DEVICE", args.device])
        model = build_model(cfg).eval()
        missing = model.load_state_dict(_weights(args.arch), strict=False)
        assert not missing.missing_keys, missing.missing_keys

        def run_d2(image: Any) -> dict:
            with torch.inference_mode():
                inst = model([_item(image, cfg)])[0]["instances"]
            return {"boxes": inst.pred_boxes.tensor, "scores": inst.scores}
        return {f"detectron2 {__import__('detectron2').__version__}": run_d2}
    if kind == "torchvision":
        from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

        tv = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=81, min_size=args.size,
                                      max_size=args.max_size, box_score_thresh=0.0,  # random init: scores ~1/81; keep
                                      box_detections_per_img=100).eval().to(args.device)  # 100, as ours

        def run_tv(image: Any) -> dict:
            tensor = torch.from_numpy(image).permute(2, 0, 1).to(args.device, torch.float32) / 255.0
            with torch.inference_mode():
                return tv([tensor])[0]
        return {"torchvision maskrcnn_resnet50_fpn_v2 (random init)": run_tv}
    if kind == "onnxruntime":
        import onnxruntime as ort

        import pycontrast_det as pcd

        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        with tempfile.TemporaryDirectory(prefix="pcd-bench-") as folder:  # the session holds the graph in memory
            path = pcd.export(_ours(args).cpu(), Path(folder) / f"{args.arch}.onnx", format="onnx")
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def run_ort(image: Any) -> dict:
            boxes, scores, _, _ = session.run(None, {"image": image})
            return {"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores)}
        return {f"onnxruntime {ort.__version__} (CPU)": run_ort}
    raise ValueError(kind)


def worker(args: argparse.Namespace) -> None:
    """Build the model, then per round run every row over the images (see workers.serve)."""
    import torch

    torch.set_num_threads(args.threads)
    rows = _build(args)
    images = _images(args)
    cuda = args.device.startswith("cuda")
    # warm-up (and one-time work: folds, cuDNN autotuning); the first row's peak is its own
    runs = list(rows.values())
    runs[0](images[0])
    first_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for run in runs[1:]:
        run(images[0])

    def run_round() -> dict:
        result = {}
        for name, run in rows.items():
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start, cpu_start = time.perf_counter(), time.process_time()
            outputs = [run(image) for image in images]
            if cuda:
                torch.cuda.synchronize()
            result[name] = {"s": (time.perf_counter() - start) / len(images),
                            "cpu_s": (time.process_time() - cpu_start) / len(images),
                            "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
                            "detections": _detections(outputs[0])}
        return {"rows": result, "peak_rss_mib": first_peak}

    workers.serve(list(rows), run_round)


# ------------------------------------------------------------------------------------------ parent

def _command(args: argparse.Namespace, kind: str, python: str) -> list[str]:
    command = [python, __file__, "--worker", kind, "--arch", args.arch, "--device", args.device,
               "--size", str(args.size), "--max-size", str(args.max_size), "--images", str(args.images),
               "--threads", str(args.threads)]
    for name in args.image:
        command += ["--image", name]
    return command


def _matched_difference(a: dict, b: dict) -> tuple[int, float, float]:
    """(count difference, max box difference, max score difference) over greedily matched detections."""
    import numpy as np

    boxes_a, boxes_b = np.array(a["boxes"]).reshape(-1, 4), np.array(b["boxes"]).reshape(-1, 4)
    scores_a, scores_b = np.array(a["scores"]), np.array(b["scores"])
    box_err = score_err = 0.0
    unused = set(range(len(scores_b)))
    for i in range(len(scores_a)):
        if not unused:
            break
        j = min(unused, key=lambda k: np.abs(boxes_b[k] - boxes_a[i]).max() + abs(scores_b[k] - scores_a[i]))
        unused.remove(j)
        box_err = max(box_err, float(np.abs(boxes_b[j] - boxes_a[i]).max()))
        score_err = max(score_err, float(abs(scores_b[j] - scores_a[i])))
    return len(scores_a) - len(scores_b), box_err, score_err


def _run_arch(args: argparse.Namespace) -> bool:
    """Print one architecture's table; False when ours or the baseline could not run."""
    try:
        import detectron2  # noqa: F401
        baseline = "detectron2"
    except ImportError:
        baseline = "torchvision"
    kinds = [(baseline, sys.executable), ("ours", sys.executable)]
    if not args.no_onnx and not args.device.startswith("cuda"):
        kinds.append(("onnxruntime", args.onnx_python or sys.executable))
    started = {kind: workers.start(kind, _command(args, kind, python)) for kind, python in kinds}
    if not workers.required_started(started, ("ours", baseline)):
        return False
    replies = workers.take_turns({kind: proc for kind, proc in started.items() if proc is not None}, args.rounds)
    figures: dict[str, list[dict]] = {}
    peaks: dict[str, float] = {}
    for kind, rounds in replies.items():
        for reply in rounds:
            peaks[kind] = reply["peak_rss_mib"]
            for name, row in reply["rows"].items():
                figures.setdefault(name, []).append({**row, "worker": kind})
    base_name = next((n for n, rows in figures.items() if rows[0]["worker"] == baseline), None)
    best = {name: {key: min(r[key] for r in rows) for key in ("s", "cpu_s")} for name, rows in figures.items()}
    print(f"{'':<52}{'s/img':>8}{'CPU s/img':>11}{'peak MiB':>10}{'x base (CPU)':>14}{'x base (wall)':>15}"
          f"   output vs base (count, box px, score)")
    first_rows = {}
    for name, rows in figures.items():
        first_rows.setdefault(rows[0]["worker"], name)
    for name, rows in figures.items():
        row, kind = best[name], rows[0]["worker"]
        peak = rows[-1]["cuda_peak_mib"] if rows[-1]["cuda_peak_mib"] is not None else (
            peaks[kind] if first_rows[kind] == name else float("nan"))  # CPU: one process per model
        ratio_cpu = best[base_name]["cpu_s"] / row["cpu_s"] if base_name else float("nan")
        ratio_wall = best[base_name]["s"] / row["s"] if base_name else float("nan")
        same = ""
        if base_name and name != base_name and baseline == "detectron2":
            count, box, score = _matched_difference(rows[0]["detections"], figures[base_name][0]["detections"])
            same = f"   {count:+d}, {box:.2g}, {score:.2g}"
        peak_text = f"{peak:>10.0f}" if peak == peak else f"{'-':>10}"  # nan: the worker's first row has it
        print(f"{name:<52}{row['s']:>8.2f}{row['cpu_s']:>11.2f}{peak_text}{ratio_cpu:>14.2f}{ratio_wall:>15.2f}"
              f"{same}")
    return True


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["fpn", "c4"], choices=("fpn", "c4"))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--size", type=int, default=800, help="shortest edge (default: %(default)s)")
    parser.add_argument("--max-size", type=int, default=1333, help="longest edge cap (default: %(default)s)")
    parser.add_argument("--images", type=int, default=2, help="timed images per round (default: %(default)s)")
    parser.add_argument("--image", action="append", default=[], help="fixture image name (repeatable; default: "
                        f"{', '.join(DEFAULT_IMAGES)})")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all workers; the best counts (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per model (default: %(default)s)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime row")
    parser.add_argument("--onnx-python", default=None,
                        help="interpreter for the onnxruntime worker, when this one lacks onnxruntime")
    parser.add_argument("--worker", choices=("ours", "detectron2", "torchvision", "onnxruntime"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.arch = args.arch[0]
        worker(args)
        return 0
    import torch

    load = os.getloadavg()[0]
    busy = " (under load: wall times are not final)" if load > 0.5 * (os.cpu_count() or 1) else ""
    print(f"pycontrast_det from {PACKAGE}; torch {torch.__version__}, {args.threads} thread(s), device {args.device}, "
          f"{args.size}/{args.max_size} px, batch 1, {args.images} image(s) x {args.rounds} round(s), best round; "
          f"load average {load:.1f} on {os.cpu_count()} CPUs{busy}")
    for arch in args.arch:
        print(f"\nR50-{arch.upper()} (detectron2 parity fixture weights)")
        ok = _run_arch(argparse.Namespace(**{**vars(args), "arch": arch}))
        if not ok:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
