"""Push your own model: a training run (or one checkpoint) -> a Hugging Face repository of its own, with the
weights, effective config, classes, training log and metrics, and a model card carrying the AP the run measured on
its dataset (per class too) and ``base_model``: the Hub repository of the zoo entry or pretrain it started from.
The folder written is :func:`pycontrast_det.modeling.hub.save_pretrained`'s, so ``pcd.load("hf://ORG/NAME")``
loads it back."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from ..errors import PublishError
from ..zoo import FileRef, Zoo, load_manifest
from .target import HUB_NAME

if TYPE_CHECKING:
    from ..modeling import MaskRCNN
    from ..modeling.hub import CardInfo

LAST_CHECKPOINT, FINAL = "last_checkpoint", "model_final.pth"
LOG, METRICS = "log.txt", "metrics.json"
_TASK_PREFIXES = ("bbox/", "segm/")


@dataclass(frozen=True)
class Run:
    """The files of a training run that a push takes: the checkpoint, and the log and metrics beside it."""

    checkpoint: Path
    log: Optional[Path]
    metrics: Optional[Path]


def find_run(path: Union[str, os.PathLike]) -> Run:
    """A run folder (its ``last_checkpoint``, else ``model_final.pth``) or a checkpoint file, with the
    ``log.txt`` / ``metrics.json`` beside it; PublishError naming what is missing."""
    given = Path(path).expanduser()
    if given.is_dir():
        pointer = given / LAST_CHECKPOINT
        name = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else FINAL
        checkpoint = given / name
        if not checkpoint.is_file():
            raise PublishError(f"{given}: no checkpoint ({checkpoint.name} not found); give the run's OUTPUT_DIR "
                               "or a checkpoint file")
    elif given.is_file():
        checkpoint = given
    else:
        raise PublishError(f"{given}: no such run folder or checkpoint file")
    folder = checkpoint.parent

    def beside(name: str) -> Optional[Path]:
        return folder / name if (folder / name).is_file() else None

    return Run(checkpoint, beside(LOG), beside(METRICS))


def check_repo(repo: str) -> str:
    """``ORG/NAME`` (an ``hf://`` prefix allowed) -> ``ORG/NAME``; PublishError when it is not a repository name."""
    name = repo[len("hf://"):] if repo.startswith("hf://") else repo
    parts = name.strip("/").split("/")
    if len(parts) != 2 or not all(HUB_NAME.match(p) for p in parts):
        raise PublishError(f"--repo {repo!r}: give ORG/NAME (letters, digits, '-', '_', '.')")
    return "/".join(parts)


def measured(metrics: Optional[Path]) -> dict[str, dict[str, float]]:
    """The last evaluation a run's ``metrics.json`` records (``bbox/AP``, ``segm/AP-<class>``, ...) as
    task -> metric -> value; empty when the run was not evaluated."""
    if metrics is None:
        return {}
    last: dict[str, dict[str, float]] = {}
    for number, line in enumerate(metrics.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise PublishError(f"{metrics}: line {number} is not JSON; it is not a training run's metrics") from None
        tasks: dict[str, dict[str, float]] = {}
        for key, value in record.items():
            if key.startswith(_TASK_PREFIXES) and isinstance(value, (int, float)):
                task, metric = key.split("/", 1)
                tasks.setdefault(task, {})[metric] = float(value)
        if tasks:
            last = tasks
    return last


def _hub_repo(files: tuple[Optional[FileRef], ...]) -> Optional[str]:
    """The Hub repository (``org/name``) a zoo file is published in, from its ``hf://`` URLs; None: not on the Hub."""
    for ref in files:
        for url in ref.urls if ref is not None else ():
            if url.startswith("hf://"):
                org, name = url[len("hf://"):].split("/")[:2]
                return f"{org}/{name.split('@', 1)[0]}"
    return None


def base_of(weights: str, zoo: Optional[Zoo] = None) -> tuple[Optional[str], str]:
    """(``base_model``: the Hub repository, None when it is not on the Hub; the origin in words) of a run's
    MODEL.WEIGHTS: a zoo entry, a pretrain, or a file."""
    zoo = zoo or load_manifest()
    if weights in zoo.entries:
        entry = zoo.entries[weights]
        return _hub_repo((entry.model, *entry.model_alternatives)), f"zoo entry `{weights}`"
    if weights in zoo.pretrains:
        pretrain = zoo.pretrains[weights]
        return _hub_repo((pretrain.file, *pretrain.alternatives)), f"pretrain `{weights}` ({pretrain.method})"
    if weights.startswith("hf://"):
        return check_repo("/".join(weights.split("/")[2:4])), f"`{weights}`"
    return None, f"`{Path(weights).name}`" if weights else "random initialisation"


def run_card(model: "MaskRCNN", run: Run, base_model: Optional[str] = None) -> "CardInfo":
    """What the card of ``run``'s model says: its measured AP, dataset, base model, and its log and metrics."""
    from ..modeling.hub import CardInfo

    base, origin = base_of(str(model.cfg.MODEL.WEIGHTS))
    dataset = model.cfg.DATASETS.TEST[0] if model.cfg.DATASETS.TEST else None
    return CardInfo(evaluation=measured(run.metrics), dataset=dataset, base_model=base_model or base, origin=origin,
                    files=tuple(p for p in (run.log, run.metrics) if p is not None))


def push_run(path: Union[str, os.PathLike], repo: str, *, private: bool = False, create_pr: bool = False,
             revision: Optional[str] = None, base_model: Optional[str] = None,
             message: str = "pycontrast-zoo push") -> tuple[str, "CardInfo"]:
    """Push the run or checkpoint at ``path`` to ``repo`` (ORG/NAME); (the commit's or PR's URL, the card info)."""
    from ..modeling import load

    repo_id = check_repo(repo)
    if base_model is not None:
        base_model = check_repo(base_model)
    run = find_run(path)
    model = load(run.checkpoint, device="cpu")
    info = run_card(model, run, base_model)
    return model.push_to_hub(repo_id, private=private, create_pr=create_pr, revision=revision, message=message,
                             info=info), info
