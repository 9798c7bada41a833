"""Time and peak memory of converting a full PyContrast R-50 checkpoint to a detectron2 .pkl.

Side by side: PyContrast's original method (``torch.load`` of the whole file + substring renames +
``pickle.dump``, written out below) and ``pycontrast_det.checkpoints`` (safe, memory-mapped read of the
encoder only). Each run is a fresh subprocess so that its peak RSS (ru_maxrss) is its own.

    python benchmarks/convert.py [--memory-rows 1281167] [--repeats 3]

The checkpoint mimics InstDis/PIRL files: encoder + projection head, SGD momentum for every parameter and
the ImageNet memory bank (1,281,167 x 128 float32, 656 MB); ``--memory-rows 16384`` mimics a MoCo queue.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_checkpoint(path: Path, memory_rows: int, legacy: bool = False) -> None:
    """A PyContrast-format file from random torchvision R-50 weights (``legacy``: torch < 1.6's non-zip format)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    encoder = torchvision.models.resnet50(weights=None)
    state = {f"module.encoder.{k}": (torch.randn_like(v) if v.is_floating_point() else v)
             for k, v in encoder.state_dict().items() if not k.startswith("fc.")}
    state["module.head.0.weight"] = torch.randn(2048, 2048)
    state["module.head.2.weight"] = torch.randn(128, 2048)
    momentum = {i: {"momentum_buffer": torch.randn_like(v)} for i, v in enumerate(state.values())
                if v.is_floating_point()}
    torch.save({"model": state, "contrast": {"memory": torch.empty(memory_rows, 128).uniform_()},
                "optimizer": {"state": momentum, "param_groups": [{"lr": 0.03, "momentum": 0.9}]},
                "epoch": 200}, path, _use_new_zipfile_serialization=not legacy)


def original_method(src: str, dst: str) -> None:
    """PyContrast's convert_pretrained.py, as it runs: full load, rename by substring, pickle.dump."""
    import torch

    obj = torch.load(src, map_location="cpu", weights_only=False)["model"]
    prefix = "module.encoder."
    newmodel = {}
    for k, v in obj.items():
        if not k.startswith(prefix):
            continue
        k = k.replace(prefix, "")
        if "layer" not in k:
            k = "stem." + k
        for t in (1, 2, 3, 4):
            k = k.replace(f"layer{t}", f"res{t + 1}")
        for t in (1, 2, 3):
            k = k.replace(f"bn{t}", f"conv{t}.norm")
        k = k.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        newmodel[k] = v.numpy()
    with open(dst, "wb") as f:
        pickle.dump({"model": newmodel, "__author__": "Yonglong", "matching_heuristics": True}, f)


def ours(src: str, dst: str) -> None:
    from pycontrast_det.checkpoints import convert_to_detectron2, write_d2_pkl

    state, report = convert_to_detectron2(src)
    assert report.ok, report.missing
    write_d2_pkl(state, dst, author="Yonglong")


ORIGINAL = "original (torch.load + rename + pickle.dump)"
OURS = "pycontrast_det (safe mmap read + rename + write)"
OURS_LEGACY = "pycontrast_det, legacy non-zip file (no mmap)"
METHODS = {ORIGINAL: original_method, OURS: ours, OURS_LEGACY: ours}


def _rss_mib() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MiB.

    Linux: VmRSS / VmHWM, which belong to this process image (ru_maxrss would carry the parent's peak
    across fork+exec). Elsewhere: ru_maxrss for both.
    """
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
        return peak, peak


def child(method: str, src: str, dst: str) -> None:
    """Run one method in this (fresh) process and print its figures as JSON."""
    import torch  # noqa: F401  imported before timing: both methods need it

    import pycontrast_det.checkpoints  # noqa: F401

    rss_before, _ = _rss_mib()
    start = time.perf_counter()
    METHODS[method](src, dst)
    seconds = time.perf_counter() - start
    _, peak = _rss_mib()
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "added_mib": peak - rss_before}))


def run_child(method: str, src: Path, dst: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, __file__, "--child", method, str(src), str(dst)],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-rows", type=int, default=1281167)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "InsDis.pth"
        make_checkpoint(src, args.memory_rows)
        legacy = Path(tmp) / "InsDis_legacy.pth"
        make_checkpoint(legacy, args.memory_rows, legacy=True)
        print(f"checkpoint: {src.stat().st_size / 2**20:.0f} MiB (memory bank {args.memory_rows} x 128), "
              f"python {sys.version.split()[0]}, {args.repeats} runs each, median")
        results = {}
        for method in METHODS:
            source = legacy if method == OURS_LEGACY else src
            runs = [run_child(method, source, Path(tmp) / f"{len(results)}.pkl") for _ in range(args.repeats)]
            results[method] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        outputs = []
        for i in range(len(METHODS)):
            with open(Path(tmp) / f"{i}.pkl", "rb") as f:  # files this script just wrote
                outputs.append(pickle.load(f)["model"])
        same = all(o.keys() == outputs[0].keys() and all(
            o[k].dtype == v.dtype and (o[k] == v).all() for k, v in outputs[0].items()) for o in outputs[1:])
    print(f"{'method':50s} {'seconds':>8s} {'peak RSS MiB':>13s} {'added MiB':>10s}")
    for method, r in results.items():
        print(f"{method:50s} {r['seconds']:8.2f} {r['peak_mib']:13.0f} {r['added_mib']:10.0f}")
    base = results[ORIGINAL]
    for method in (OURS, OURS_LEGACY):
        new = results[method]
        print(f"ratio original / {method}: time x{base['seconds'] / new['seconds']:.1f}, "
              f"added memory x{base['added_mib'] / max(new['added_mib'], 1):.1f}")
    print(f"outputs identical (keys, dtypes, values): {same}")


if __name__ == "__main__":
    main()
