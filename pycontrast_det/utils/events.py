"""Training logs in detectron2's formats, so one parser reads ours and the published ones.

- ``log.txt``: ``[MM/DD HH:MM:SS name]: message`` lines; every ``period`` iterations
  `` eta: 0:01:02  iter: 19  total_loss: 2.1  loss_cls: ...  time: 0.41  data_time: 0.01  lr: 0.0004``
  (losses are medians over the last 20 iterations, time the average since start, as detectron2 prints);
  evaluation ends with detectron2's ``copypaste:`` lines.
- ``metrics.json``: one strict-JSON object per line (``iteration``, ``total_loss``, ``loss_*``, ``lr``,
  ``data_time``, ``time``, ``eta_seconds``) and, after each evaluation, ``bbox/AP``, ``segm/AP50`` ...
  (a metric COCO cannot compute, e.g. APl without large objects, is ``null``, never a bare ``NaN``).
- progress lines (:func:`progress`) during inference and PreciseBN, so nothing long is silent.
Only rank 0 writes files; the other ranks log warnings to stderr.
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import statistics
import sys
import time
from collections import deque
from pathlib import Path
from typing import IO, Iterable, Iterator, Mapping, Optional, Sequence, TypeVar

T = TypeVar("T")

LOGGER_NAME = "pycontrast_det.train"
_FORMAT = "[%(asctime)s %(name)s]: %(message)s"
_DATEFMT = "%m/%d %H:%M:%S"


def setup_logger(output_dir: Optional[Path], rank: int, name: str = LOGGER_NAME,
                 stream: Optional[IO[str]] = None) -> logging.Logger:
    """A logger writing to ``stream`` (default: stdout on rank 0, stderr elsewhere) and, on rank 0,
    ``<output_dir>/log.txt`` (appending, for resumed runs)."""
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = False
    formatter = logging.Formatter(_FORMAT, datefmt=_DATEFMT)
    console = logging.StreamHandler(stream or (sys.stdout if rank == 0 else sys.stderr))
    console.setFormatter(formatter)
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.addHandler(console)
    if rank == 0 and output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(output_dir) / "log.txt", mode="a", encoding="utf-8")
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    logger.setLevel(logging.INFO)
    return logger


def _format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


def _finite(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def strict_json(row: Mapping[str, object]) -> str:
    """``row`` as one line of strict JSON: NaN and infinities (at any depth) become ``null`` (``json.dumps`` alone
    writes a bare ``NaN``, which strict parsers such as ``jq`` or JavaScript's ``JSON.parse`` refuse)."""
    return json.dumps(_finite(row), sort_keys=True, allow_nan=False)


def progress(items: Iterable[T], total: int, what: str, logger: logging.Logger, period: float = 5.0) -> Iterator[T]:
    """Yield ``items``, logging ``what: done/total`` with the time per item and an ETA at most every ``period``
    seconds, and a last line when done (the time between items includes the caller's work on each)."""
    started = last = time.perf_counter()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.perf_counter()
        if now - last >= period and done < total:
            last = now
            each = (now - started) / done
            logger.info(f"{what}: {done}/{total} done, {each:.3f} s each, ETA {_format_eta(each * (total - done))}")
    logger.info(f"{what}: {done}/{total} done in {time.perf_counter() - started:.1f} s")


class MetricsWriter:
    """Collects per-iteration scalars and writes detectron2-style log lines and ``metrics.json`` rows."""

    def __init__(self, logger: logging.Logger, output_dir: Optional[Path], max_iter: int, *, window: int = 20,
                 enabled: bool = True) -> None:
        self.logger = logger
        self.max_iter = max_iter
        self.window = window
        self.enabled = enabled
        self.json_path = Path(output_dir) / "metrics.json" if output_dir is not None and enabled else None
        self._losses: dict[str, deque[float]] = {}
        self._times: deque[float] = deque(maxlen=window)
        self._data_times: deque[float] = deque(maxlen=window)
        self._time_sum = 0.0
        self._time_count = 0
        self._lr = 0.0

    def put(self, losses: Mapping[str, float], *, lr: float, time: float, data_time: float) -> None:
        """Record one iteration: its (process-averaged) losses, the lr it used and its timings."""
        for key, value in losses.items():
            self._losses.setdefault(key, deque(maxlen=self.window)).append(float(value))
        self._times.append(time)
        self._data_times.append(data_time)
        self._time_sum += time
        self._time_count += 1
        self._lr = lr

    def write(self, iteration: int) -> None:
        """Log the smoothed values after 0-based ``iteration`` and append them to metrics.json."""
        if not self.enabled or not self._time_count:
            return
        avg_time = self._time_sum / self._time_count
        eta_seconds = avg_time * (self.max_iter - iteration - 1)
        losses = {k: statistics.median(v) for k, v in self._losses.items()}
        data_time = statistics.median(self._data_times)
        loss_text = "  ".join(f"{k}: {v:.4g}" for k, v in losses.items())
        self.logger.info(f" eta: {_format_eta(eta_seconds)}  iter: {iteration}  {loss_text}  "
                         f"time: {avg_time:.4f}  data_time: {data_time:.4f}  lr: {self._lr:.6g}")
        row = {"iteration": iteration, **losses, "lr": self._lr, "data_time": data_time,
               "time": statistics.median(self._times), "eta_seconds": eta_seconds}
        self._append(row)

    def write_eval(self, iteration: int, results: Mapping[str, Mapping[str, float]]) -> None:
        """Log evaluation results (task -> metric -> value, in percent) as detectron2's copypaste lines and
        append them to metrics.json as ``task/metric`` keys."""
        if not self.enabled:
            return
        row: dict[str, float | int] = {"iteration": iteration}
        for task, metrics in results.items():
            names = list(metrics)
            self.logger.info(f"Evaluation results for {task}: "
                             + "  ".join(f"{n}: {metrics[n]:.3f}" for n in names))
            self.logger.info(f"copypaste: Task: {task}")
            self.logger.info("copypaste: " + ",".join(names))
            self.logger.info("copypaste: " + ",".join(f"{metrics[n]:.4f}" for n in names))
            row.update({f"{task}/{n}": float(metrics[n]) for n in names})
        self._append(row)

    def _append(self, row: Mapping[str, object]) -> None:
        if self.json_path is None:
            return
        with open(self.json_path, "a", encoding="utf-8") as fh:
            fh.write(strict_json(row) + "\n")


def loss_order(keys: Sequence[str]) -> list[str]:
    """``total_loss`` first, then the losses in sorted order (detectron2's printing order)."""
    return ["total_loss"] + sorted(k for k in keys if k != "total_loss")
