"""Training parity: the shapes protocol of one entry trained by our native engine and by detectron2, N seeds each.

Every run is ``pycontrast-zoo reproduce ENTRY --dataset shapes --engine E --output DIR SEED s`` in its own
process and its own fresh folder (the identical config and overrides for both engines; detectron2's run
seeds torch/numpy/random from SEED as its ``tools/train_net.py`` does). The report, from each run's
``metrics.json``: every loss at the same iterations (mean ± std over seeds per engine), the final losses,
box and mask AP per seed, mean ± std per engine, and native minus detectron2 with its standard error.
Where detectron2 cannot be imported it says so and runs the native engine only.

    python benchmarks/train_parity.py                          # seeds 1 2 3, both engines, 240 iterations
    python benchmarks/train_parity.py --seeds 1 2 3 4 5 --output output/train_parity
    python benchmarks/train_parity.py --output DIR --report    # only the table of the runs finished in DIR

Finished runs in ``--output`` are reused (an interrupted benchmark goes on with the missing runs); a run folder
without a final evaluation is refused.

Runs are sequential (two trainings at once would only slow both); ``--threads`` sets OMP_NUM_THREADS
(default 2). A 240-iteration run takes about 4-8 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

ENTRY = "mask_rcnn_fpn_1x_rand"
ENGINES = ("native", "detectron2")
LOSSES = ("total_loss", "loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc")


@dataclass
class Run:
    """One finished run: its losses per logged iteration and its final box / mask AP."""

    engine: str
    seed: int
    folder: Path
    losses: dict[int, dict[str, float]] = field(default_factory=dict)
    box_ap: Optional[float] = None
    mask_ap: Optional[float] = None
    seconds: Optional[float] = None


def detectron2_available() -> bool:
    return importlib.util.find_spec("detectron2") is not None


def metrics_file(engine: str, folder: Path) -> Path:
    """Where each engine's reproduce writes its detectron2-format metrics.json."""
    return folder / "detectron2" / "metrics.json" if engine == "detectron2" else folder / "metrics.json"


def read_run(engine: str, seed: int, folder: Path) -> Optional[Run]:
    """The run in ``folder``, or None when it has no final evaluation yet."""
    from pycontrast_det.reports.logs import parse_log

    path = metrics_file(engine, folder)
    if not path.is_file():
        return None
    summary = parse_log(path)
    box, mask = summary.final("bbox").get("AP"), summary.final("segm").get("AP")
    if box is None:
        return None
    run = Run(engine, seed, folder, box_ap=box, mask_ap=mask)
    for point in summary.losses:
        run.losses[point.iteration] = {"total_loss": point.total_loss, **point.losses}
    seconds = folder / "seconds.txt"
    run.seconds = float(seconds.read_text()) if seconds.is_file() else None
    return run


def train(engine: str, seed: int, folder: Path, iters: Optional[int], threads: int) -> Run:
    """Run one reproduction in a subprocess (its own fresh folder) and read its metrics."""
    if folder.exists():
        raise SystemExit(f"{folder} exists; give another --output, remove it, or read it with --report")
    command = [sys.executable, "-m", "pycontrast_det", "reproduce", ENTRY, "--dataset", "shapes",
               "--engine", engine, "--output", str(folder), "--device", "cpu"]
    if iters is not None:
        command += ["--max-iter", str(iters)]
    command += ["SEED", str(seed)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    print(f"[{engine} seed {seed}] {' '.join(command)}", flush=True)
    started = time.perf_counter()
    log = folder.with_name(folder.name + ".log")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"[{engine} seed {seed}] failed (exit {code}); see {log}")
    (folder / "seconds.txt").write_text(f"{seconds:.1f}\n")
    run = read_run(engine, seed, folder)
    if run is None:
        raise SystemExit(f"[{engine} seed {seed}] finished without a final evaluation in "
                         f"{metrics_file(engine, folder)}")
    print(f"[{engine} seed {seed}] box AP {run.box_ap:.1f}, mask AP {run.mask_ap:.1f} ({seconds:.0f} s)", flush=True)
    return run


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(values: Sequence[float], digits: int = 3) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def report(runs: Sequence[Run]) -> str:
    """The comparison text: loss curves, final losses, AP per seed, means, difference and verdict."""
    engines = [e for e in ENGINES if any(r.engine == e for r in runs)]
    by_engine = {e: sorted((r for r in runs if r.engine == e), key=lambda r: r.seed) for e in engines}
    lines = [f"{ENTRY}, shapes protocol: " + ", ".join(f"{e} seeds {[r.seed for r in by_engine[e]]}" for e in engines)]
    iterations = sorted(set.intersection(*(set(r.losses) for r in runs))) if runs else []
    for loss in LOSSES:
        lines += ["", f"{loss} (mean ± std over seeds)", f"  {'iter':>5}" + "".join(f"{e:>22}" for e in engines)]
        for it in iterations:
            cells = [_cell([r.losses[it][loss] for r in by_engine[e] if loss in r.losses[it]]) for e in engines]
            lines.append(f"  {it:>5}" + "".join(f"{c:>22}" for c in cells))
    lines += ["", "final AP per seed (box / mask)"]
    for e in engines:
        per_seed = ", ".join(f"seed {r.seed}: {r.box_ap:.1f} / {r.mask_ap:.1f}" for r in by_engine[e])
        lines.append(f"  {e:<11} {per_seed}")
    lines += ["", f"  {'engine':<11}{'box AP':>16}{'mask AP':>16}{'final total_loss':>20}{'s/run':>8}"]
    for e in engines:
        rs = by_engine[e]
        last = [r.losses[max(r.losses)]["total_loss"] for r in rs]
        secs = [r.seconds for r in rs if r.seconds]
        lines.append(f"  {e:<11}{_cell([r.box_ap for r in rs], 1):>16}{_cell([r.mask_ap for r in rs], 1):>16}"
                     f"{_cell(last):>20}{(f'{statistics.fmean(secs):.0f}' if secs else '-'):>8}")
    if len(engines) == 2:
        lines += ["", "native - detectron2 (difference of means; tolerance = max(2 AP, 2 standard errors))"]
        for task, get in (("box AP", lambda r: r.box_ap), ("mask AP", lambda r: r.mask_ap)):
            a = [get(r) for r in by_engine["native"]]
            b = [get(r) for r in by_engine["detectron2"]]
            diff = statistics.fmean(a) - statistics.fmean(b)
            se = math.sqrt(mean_std(a)[1] ** 2 / len(a) + mean_std(b)[1] ** 2 / len(b))
            tolerance = max(2.0, 2 * se)
            verdict = "within" if abs(diff) <= tolerance else "OUTSIDE"
            lines.append(f"  {task:<8} {diff:+6.1f} (standard error {se:.1f}): {verdict} the tolerance {tolerance:.1f}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="SEED values (default 1 2 3)")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--iters", type=int, default=None, help="iterations (default: the protocol's 240)")
    parser.add_argument("--output", type=Path, default=None,
                        help="folder of the runs (default: a new output/train_parity-<time>)")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS per run (default 2)")
    parser.add_argument("--report", action="store_true", help="report the finished runs in --output, train none")
    args = parser.parse_args(argv)
    root = args.output or Path("output") / time.strftime("train_parity-%Y%m%d-%H%M%S")
    engines = list(args.engines)
    if "detectron2" in engines and not detectron2_available():
        print("detectron2 is not importable here: running the native engine only (install detectron2 to compare)")
        engines.remove("detectron2")
    runs: list[Run] = []
    for seed in args.seeds:
        for engine in engines:
            folder = root / f"{engine}-seed{seed}"
            run = read_run(engine, seed, folder)  # a finished run in --output is reused
            if run is not None:
                print(f"[{engine} seed {seed}] finished run in {folder}: box AP {run.box_ap:.1f}, mask AP "
                      f"{run.mask_ap:.1f}")
            elif args.report:
                print(f"[{engine} seed {seed}] no finished run in {folder}")
                continue
            else:
                run = train(engine, seed, folder, args.iters, args.threads)
            runs.append(run)
    if not runs:
        return 1
    print(report(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
