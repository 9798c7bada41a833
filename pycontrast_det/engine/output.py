"""The output folder of a run: refuse to mix two runs in one folder, and leave nothing behind when a run fails
before it recorded anything.

A run writes into ``OUTPUT_DIR``: config.yaml, log.txt, metrics.json, checkpoints, inference/, curves.png,
TensorBoard events (and for ``reproduce``: plan.txt, the converted pretrain, seed_*/ for ``--seeds``). A folder that
already holds anything is refused unless the run resumes (``--resume``: append to it) or replaces the previous one
(``--overwrite``: the files a run writes are deleted first; anything else in the folder is left alone). ``slurm/``
(the launcher's job files, see :mod:`pycontrast_det.recipes.slurm`) never counts as a run.
"""
from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError

LAUNCHER_DIR = "slurm"
_RUN_FILES = ("config.yaml", "log.txt", "metrics.json", "last_checkpoint", "curves.png", "plan.txt")
_RUN_PATTERNS = ("model_*.pth", "pretrain_*.pkl", ".*.tmp", "inference", "seed_*", "detectron2",
                 "events.out.tfevents.*")


def run_files(folder: Path) -> list[Path]:
    """The entries of ``folder`` that a run writes (what ``--overwrite`` deletes), sorted."""
    found = {folder / name for name in _RUN_FILES if (folder / name).exists()}
    for pattern in _RUN_PATTERNS:
        found.update(folder.glob(pattern))
    return sorted(found)


def _contents(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name != LAUNCHER_DIR)


@dataclass
class Claim:
    """An output folder a run may write into; ``created``: it did not exist before this run."""

    path: Path
    created: bool


def claim_output_dir(path: Path, *, resume: bool = False, overwrite: bool = False) -> Claim:
    """Check that a run may write into ``path`` (nothing is created here); with ``overwrite`` delete the files of
    the previous run first. ConfigError when it holds something and neither ``resume`` nor ``overwrite`` is set."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"OUTPUT_DIR {path} is a file; give a folder (--output DIR)")
    contents = _contents(path)
    if contents and not (resume or overwrite):
        shown = ", ".join(p.name for p in contents[:5]) + (", ..." if len(contents) > 5 else "")
        raise ConfigError(f"OUTPUT_DIR {path} is not empty ({shown}): pass --resume to continue the run in it, "
                          "--overwrite to replace it, or choose another folder with --output")
    if overwrite and not resume:
        for entry in run_files(path):
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    return Claim(path=path, created=not path.exists())


def recorded_anything(path: Path) -> bool:
    """True once a run in ``path`` (or a folder in it: ``seed_*/``) logged an iteration or saved a checkpoint; then
    a failure keeps the folder."""
    return any(next(path.rglob(name), None) is not None for name in ("metrics.json", "last_checkpoint"))


@contextlib.contextmanager
def removed_if_nothing_recorded(claim: Claim) -> Iterator[None]:
    """On an exception, delete the folder this run created if the run recorded nothing in it yet (a failed start
    leaves no half-made folder); a run that got as far as logging keeps its folder for the post-mortem."""
    try:
        yield
    except BaseException:
        if claim.created and claim.path.is_dir() and not recorded_anything(claim.path):
            shutil.rmtree(claim.path, ignore_errors=True)
        raise


__all__ = ["Claim", "LAUNCHER_DIR", "claim_output_dir", "recorded_anything", "removed_if_nothing_recorded",
           "run_files"]
