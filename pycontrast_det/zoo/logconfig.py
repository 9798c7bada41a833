"""The config a detectron2 training log ran with, and how it differs from an entry's effective config.

Every detectron2 ``log.txt`` (since 0.1) begins with ``Command line arguments: ...``, ``Contents of
args.config_file=FILE:`` followed by that file, and ``Running with full config:`` followed by the whole config as
YAML, which ends at the next ``[MM/DD HH:MM:SS ...]`` log line. Keys are compared by class: the
model-defining ones (:data:`MODEL_KEYS`: what the weights mean and how the row was trained) decide; keys that
cannot matter (:data:`IGNORED_KEYS`: paths, output dirs, dataset roots, workers, devices) are never compared; any
other differing key is shown. Plain text and dicts: no torch, no config module (the caller builds the config).
"""
from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import yaml

from ..errors import yaml_problem
from .records import DetectorEntry

#: Config keys (a trailing dot: every key under that section) whose difference changes what the weights mean or
#: how the row was trained and evaluated: input format and normalisation, backbone, norms, heads, class count,
#: anchors, proposal counts, train/test sizes, solver schedule and batch, datasets.
MODEL_KEYS = (
    "INPUT.FORMAT", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "MODEL.META_ARCHITECTURE", "MODEL.MASK_ON",
    "MODEL.LOAD_PROPOSALS", "MODEL.BACKBONE.", "MODEL.RESNETS.", "MODEL.FPN.", "MODEL.ANCHOR_GENERATOR.",
    "MODEL.PROPOSAL_GENERATOR.", "MODEL.RPN.", "MODEL.ROI_HEADS.", "MODEL.ROI_BOX_HEAD.", "MODEL.ROI_MASK_HEAD.",
    "INPUT.MIN_SIZE_TRAIN", "INPUT.MIN_SIZE_TRAIN_SAMPLING", "INPUT.MAX_SIZE_TRAIN", "INPUT.MIN_SIZE_TEST",
    "INPUT.MAX_SIZE_TEST", "INPUT.MASK_FORMAT", "INPUT.CROP.", "SOLVER.IMS_PER_BATCH", "SOLVER.BASE_LR",
    "SOLVER.STEPS", "SOLVER.MAX_ITER", "SOLVER.GAMMA", "SOLVER.LR_SCHEDULER_NAME", "SOLVER.MOMENTUM",
    "SOLVER.WEIGHT_DECAY", "SOLVER.WEIGHT_DECAY_NORM", "SOLVER.WARMUP_", "SOLVER.BIAS_LR_FACTOR",
    "TEST.DETECTIONS_PER_IMAGE", "TEST.PRECISE_BN.", "TEST.AUG.", "DATASETS.TRAIN", "DATASETS.TEST",
)
#: Keys never compared: where files were (weights, outputs, dataset roots), how many workers and which device ran,
#: how often checkpoints and evaluations were written, and the config format's version.
IGNORED_KEYS = (
    "MODEL.WEIGHTS", "MODEL.DEVICE", "OUTPUT_DIR", "DATALOADER.NUM_WORKERS", "SOLVER.CHECKPOINT_PERIOD",
    "TEST.EVAL_PERIOD", "VIS_PERIOD", "CUDNN_BENCHMARK", "VERSION", "GLOBAL.", "SEED", "DATASETS.ROOT",
)

_LOG_LINE = re.compile(r"^\[\d\d/\d\d \d\d:\d\d:\d\d")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_COMMAND = re.compile(r"Command line arguments: (.*)$")
_CONFIG_FILE = re.compile(r"Contents of args\.config_file=(.*):\s*$")
_FULL = re.compile(r"Running with full config:\s*$")


@dataclass(frozen=True)
class LogConfig:
    """What a training log says about its config: the command line and the config file it names, the full config
    (None when the log has no dump), and why a dump could not be read."""

    source: str
    command_line: Optional[str] = None
    config_file: Optional[str] = None
    full: Optional[Mapping[str, Any]] = None
    problem: Optional[str] = None


@dataclass(frozen=True)
class KeyDiff:
    """One compared key whose values differ: the entry's and the log's, and whether it defines the model."""

    key: str
    ours: Any
    logged: Any
    model_defining: bool


@dataclass(frozen=True)
class ConfigAudit:
    """An entry's effective config against its log's: the differing keys, and what could not be compared."""

    diffs: tuple[KeyDiff, ...]
    compared: int
    only_in_log: tuple[str, ...]
    only_here: tuple[str, ...]

    @property
    def model_diffs(self) -> tuple[KeyDiff, ...]:
        return tuple(d for d in self.diffs if d.model_defining)


class _DumpLoader(yaml.SafeLoader):
    """The safe loader, reading ``!!python/tuple`` (older detectron2 dumps) as a list."""


_DumpLoader.add_constructor("tag:yaml.org,2002:python/tuple",
                            lambda loader, node: loader.construct_sequence(node))  # type: ignore[arg-type]


def read_log_config(text: str, source: str = "log") -> LogConfig:
    """The config header of a detectron2 ``log.txt`` (``source`` names it in messages)."""
    command = config_file = None
    dump: Optional[list[str]] = None  # the full config's lines, once its header line is seen
    inside = False
    for raw in text.splitlines():
        line = _ANSI.sub("", raw)
        if _LOG_LINE.match(line):
            inside = False
            if (m := _COMMAND.search(line)) and command is None:
                command = m.group(1).strip()
            elif (m := _CONFIG_FILE.search(line)) and config_file is None:
                config_file = m.group(1).strip()
            elif _FULL.search(line) and dump is None:
                dump, inside = [], True
        elif inside and dump is not None:
            dump.append(line)
    if dump is None:
        return LogConfig(source, command, config_file)
    try:
        full = yaml.load("\n".join(dump), Loader=_DumpLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        return LogConfig(source, command, config_file, problem=yaml_problem(source, exc))
    if not isinstance(full, dict):
        return LogConfig(source, command, config_file, problem=f"{source}: the full config is not a mapping")
    return LogConfig(source, command, config_file, full)


def read_log_config_file(path: Path) -> LogConfig:
    """:func:`read_log_config` of a log file."""
    return read_log_config(path.read_text(encoding="utf-8", errors="replace"), str(path))


def _flat(node: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in node.items():
        if isinstance(value, Mapping):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) or (p.endswith("_") and key.startswith(p))
               for p in patterns)


def _normal(value: Any) -> Any:
    """A value for comparison: lists and tuples alike, Python-literal strings (``(60000, 80000)``) decoded."""
    if isinstance(value, str):
        try:
            decoded = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
        return _normal(decoded) if isinstance(decoded, (list, tuple)) else value
    if isinstance(value, (list, tuple)):
        return tuple(_normal(v) for v in value)
    return value


def _same(a: Any, b: Any) -> bool:
    a, b = _normal(a), _normal(b)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return bool(a == b)


def compare_configs(ours: Mapping[str, Any], logged: Mapping[str, Any]) -> ConfigAudit:
    """Every key both configs have and :data:`IGNORED_KEYS` does not name, compared value by value."""
    here, there = dict(_flat(ours)), dict(_flat(logged))
    keys = [k for k in here if k in there and not _matches(k, IGNORED_KEYS)]
    diffs = tuple(KeyDiff(k, here[k], there[k], _matches(k, MODEL_KEYS)) for k in keys if not _same(here[k], there[k]))
    return ConfigAudit(diffs=tuple(sorted(diffs, key=lambda d: (not d.model_defining, d.key))), compared=len(keys),
                       only_in_log=tuple(sorted(k for k in there if k not in here and not _matches(k, IGNORED_KEYS))),
                       only_here=tuple(sorted(k for k in here if k not in there and not _matches(k, IGNORED_KEYS))))


def drift_line(entry: DetectorEntry, audit: ConfigAudit) -> Optional[str]:
    """One line naming the model-defining keys an entry's config (with its config_fixes) sets otherwise than its
    training log; None when they agree."""
    diffs = audit.model_diffs
    if not diffs:
        return None
    shown = ", ".join(f"{d.key} {show_value(d.ours)} (log: {show_value(d.logged)})" for d in diffs[:4])
    more = f" and {len(diffs) - 4} more" if len(diffs) > 4 else ""
    return (f"{entry.name}: its config differs from its cached training log on {shown}{more}; the model may not "
            f"match its weights (`pycontrast-zoo audit {entry.name}` lists them; --write-manifest records them)")


def show_value(value: Any) -> str:
    """A config value as the audit table and warnings print it (a list in brackets)."""
    value = _normal(value)
    return str(list(value)) if isinstance(value, tuple) else str(value)
