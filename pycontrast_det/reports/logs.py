"""Read detectron2 training logs (``log.txt`` or ``metrics.json``) into loss curves and final AP (pictures of
them: :mod:`pycontrast_det.reports.curves`).

``log.txt``: the ``d2.utils.events`` lines (``iter: 19  total_loss: 2.1  loss_cls: ...  lr: 0.0004``) and the
``copypaste: Task: bbox`` / ``copypaste: AP,AP50,...`` / ``copypaste: 40.6,61.2,...`` blocks.
``metrics.json``: one JSON object per line (``iteration``, ``total_loss``, ``loss_*``, ``lr``; evaluation rows
with ``bbox/AP``, ``segm/AP``, ...). Our trainer writes both in these formats, so one parser reads all.
A log that restarted (resumed training) keeps the latest value per iteration. No torch import.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from ..errors import LogFormatError

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ITER = re.compile(r"\biter: (\d+)\s+(.*)$")
_PAIR = re.compile(r"([A-Za-z_][\w/]*): ([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))(?=\s|$)")
_COPYPASTE = re.compile(r"copypaste: (.*)$")


@dataclass
class LossPoint:
    """The logged (smoothed) losses at one iteration (0-based, as detectron2 prints it)."""

    iteration: int
    total_loss: float
    losses: dict[str, float] = field(default_factory=dict)  # loss_cls, loss_box_reg, ...
    lr: Optional[float] = None


@dataclass
class LogSummary:
    """A training log's loss curve and evaluations (task -> metric -> percent) by iteration."""

    source: Path
    label: str
    losses: list[LossPoint]
    evals: list[tuple[int, dict[str, dict[str, float]]]]

    @property
    def last_iteration(self) -> Optional[int]:
        iterations = [p.iteration for p in self.losses] + [i for i, _ in self.evals]
        return max(iterations) if iterations else None

    def final(self, task: str) -> dict[str, float]:
        """The last evaluation's metrics for ``task`` (``bbox``, ``segm``); empty if never evaluated."""
        for _, results in reversed(self.evals):
            if task in results:
                return results[task]
        return {}

    @property
    def final_bbox_ap(self) -> Optional[float]:
        return self.final("bbox").get("AP")

    @property
    def final_segm_ap(self) -> Optional[float]:
        return self.final("segm").get("AP")

    def loss_at(self, iteration: int) -> Optional[LossPoint]:
        """The logged point nearest to ``iteration``."""
        if not self.losses:
            return None
        return min(self.losses, key=lambda p: (abs(p.iteration - iteration), p.iteration))


def parse_log(path: Union[str, os.PathLike], label: Optional[str] = None) -> LogSummary:
    """Parse a detectron2 ``log.txt`` or ``metrics.json`` (detected from the content), or a run folder's
    ``metrics.json`` (else its ``log.txt``)."""
    path = Path(path)
    if path.is_dir():
        path = next((path / n for n in ("metrics.json", "log.txt") if (path / n).is_file()), path / "metrics.json")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise LogFormatError(f"log file not found: {path}") from None
    first = text.lstrip()[:1]
    losses, evals = (_parse_metrics_json if first == "{" else _parse_log_txt)(text, path)
    if not losses and not evals:
        raise LogFormatError(f"{path}: no training iterations or evaluation results found; expected detectron2's "
                             f"log.txt ('iter: N  total_loss: ...' lines) or metrics.json (one JSON object per line)")
    latest = {p.iteration: p for p in losses}  # a resumed run logs some iterations twice: keep the latest
    return LogSummary(source=path, label=label or path.name, losses=[latest[i] for i in sorted(latest)],
                      evals=evals)


def _parse_log_txt(text: str, path: Path) -> tuple[list[LossPoint], list]:
    losses: list[LossPoint] = []
    evals: list[tuple[int, dict[str, dict[str, float]]]] = []
    iteration = -1
    task: Optional[str] = None
    names: Optional[list[str]] = None
    for line in text.splitlines():
        line = _ANSI.sub("", line)
        match = _ITER.search(line)
        if match:
            iteration = int(match.group(1))
            values = {k: float(v) for k, v in _PAIR.findall(match.group(2))}
            if "total_loss" in values:
                losses.append(LossPoint(iteration, values["total_loss"],
                                        {k: v for k, v in values.items() if k.startswith("loss_")}, values.get("lr")))
            continue
        match = _COPYPASTE.search(line)
        if not match:
            continue
        body = match.group(1).strip()
        if body.startswith("Task: "):
            task, names = body[len("Task: "):].strip(), None
        elif task is not None and names is None:
            names = [n.strip() for n in body.split(",")]
        elif task is not None and names is not None:
            numbers = [_number(v) for v in body.split(",")]
            if len(numbers) != len(names):
                raise LogFormatError(f"{path}: copypaste values {body!r} do not match the header {names}")
            if not evals or evals[-1][0] != iteration or task in evals[-1][1]:
                evals.append((iteration, {}))
            evals[-1][1][task] = dict(zip(names, numbers))
            task, names = None, None
    return losses, evals


def _parse_metrics_json(text: str, path: Path) -> tuple[list[LossPoint], list]:
    losses: list[LossPoint] = []
    evals: list[tuple[int, dict[str, dict[str, float]]]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise LogFormatError(f"{path}:{number}: not a JSON object ({exc})") from None
        if not isinstance(row, dict):
            raise LogFormatError(f"{path}:{number}: not a JSON object")
        iteration = int(row.get("iteration", -1))
        if "total_loss" in row:
            losses.append(LossPoint(iteration, float(row["total_loss"]),
                                    {k: float(v) for k, v in row.items() if k.startswith("loss_") and v is not None},
                                    float(row["lr"]) if row.get("lr") is not None else None))
        results: dict[str, dict[str, float]] = {}
        for key, value in row.items():
            task, _, metric = key.partition("/")
            if metric.startswith("AP") and isinstance(value, (int, float)):
                results.setdefault(task, {})[metric] = float(value)
        if results:
            evals.append((iteration, results))
    return losses, evals


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")
