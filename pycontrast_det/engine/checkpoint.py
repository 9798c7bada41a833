"""Training checkpoints in detectron2's layout: ``model_{iter:07d}.pth``, ``model_final.pth``, ``last_checkpoint``.

Each file is ``{"model": state (our keys), "optimizer", "scheduler", "iteration", "classes", ...extra}`` where
``iteration`` is the last completed (0-based) iteration, as detectron2 stores it, so a resumed run starts at
``iteration + 1``; ``model_final.pth`` holds the same, so ``--resume`` with a longer SOLVER.MAX_ITER goes on
from it. Only the newest ``keep`` checkpoints (model_final.pth included) stay on disk: SOLVER.CHECKPOINTS_KEPT.
Files are written by rank 0 only, atomically (temp file + rename), and read back with
``torch.load(weights_only=True)``: a checkpoint never runs code on load.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional

from .. import atomic
from ..errors import CheckpointFormatError
from ..utils import comm

LAST_CHECKPOINT = "last_checkpoint"
FINAL_NAME = "model_final"
_CHECKPOINT_GLOBS = ("model_[0-9]*.pth", f"{FINAL_NAME}.pth")


def unwrap(model: Any) -> Any:
    """The bare model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def periodic_name(iteration: int) -> str:
    """detectron2's name for the checkpoint saved after 0-based ``iteration``."""
    return f"model_{iteration:07d}"


def _atomic_save(obj: Any, path: Path) -> None:
    import torch

    with atomic.atomic_path(path) as tmp:
        torch.save(obj, tmp)


class Checkpointer:
    """Saves and restores model, optimizer, scheduler (and AMP scaler) under ``output_dir``."""

    def __init__(self, model: Any, output_dir: os.PathLike | str, *, optimizer: Any = None, scheduler: Any = None,
                 scaler: Any = None, arch: Optional[str] = None, keep: int = 0) -> None:
        self.model = model
        self.keep = int(keep)  # newest checkpoints left on disk after each save; 0: every one
        self.output_dir = Path(output_dir)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.arch = arch

    def save(self, name: str, iteration: int, **extra: Any) -> Optional[Path]:
        """Write ``<output_dir>/<name>.pth`` and point ``last_checkpoint`` at it (rank 0; others return None)."""
        if not comm.is_main_process():
            return None
        model = unwrap(self.model)
        data: dict[str, Any] = {"model": model.state_dict(), "iteration": int(iteration), **extra}
        if getattr(model, "classes", None) is not None:  # the class names travel with the weights
            from ..checkpoints import classes_entry

            data.update(classes_entry(model.classes))
        if self.optimizer is not None:
            data["optimizer"] = self.optimizer.state_dict()
        if self.scheduler is not None:
            data["scheduler"] = self.scheduler.state_dict()
        if self.scaler is not None and self.scaler.is_enabled():
            data["grad_scaler"] = self.scaler.state_dict()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / f"{name}.pth"
        _atomic_save(data, path)
        atomic.write_text(self.output_dir / LAST_CHECKPOINT, path.name)
        self._prune(path)
        return path

    def _prune(self, newest: Path) -> None:
        """Delete all but the ``keep`` newest checkpoints (by write time; ``newest``, just saved, always stays)."""
        if self.keep <= 0:
            return
        found = {p for pattern in _CHECKPOINT_GLOBS for p in self.output_dir.glob(pattern)} - {newest}
        older = sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
        for path in older[self.keep - 1:]:
            path.unlink(missing_ok=True)

    def export_detectron2(self, name: str = FINAL_NAME) -> Optional[Path]:
        """Write ``<name>_detectron2.pth``: the weights under detectron2's key names, loadable by stock
        detectron2 (``MODEL.WEIGHTS``); rank 0 only. Needs ``arch`` ("fpn" or "c4")."""
        if not comm.is_main_process() or self.arch is None:
            return None
        from ..checkpoints import model_to_d2

        state = model_to_d2(unwrap(self.model).state_dict(), self.arch)
        path = self.output_dir / f"{name}_detectron2.pth"
        _atomic_save({"model": state, "__author__": "pycontrast-det"}, path)
        return path

    def last_checkpoint(self) -> Optional[Path]:
        """The file ``last_checkpoint`` names, or None when there is none yet."""
        pointer = self.output_dir / LAST_CHECKPOINT
        if not pointer.is_file():
            return None
        path = self.output_dir / pointer.read_text().strip()
        if not path.is_file():
            raise CheckpointFormatError(f"{pointer} names {path.name}, which does not exist; delete {pointer} "
                                        "to start over or restore the file")
        return path

    def resume(self) -> Optional[dict[str, Any]]:
        """Restore everything from the last checkpoint; returns its remaining entries (``iteration``, extra)
        or None when ``output_dir`` has no checkpoint yet."""
        path = self.last_checkpoint()
        if path is None:
            return None
        data = load_training_checkpoint(path)
        unwrap(self.model).load_state_dict(data.pop("model"))
        for key, target in (("optimizer", self.optimizer), ("scheduler", self.scheduler),
                            ("grad_scaler", self.scaler)):
            state = data.pop(key, None)
            if target is not None and state is not None:
                target.load_state_dict(state)
        return data


def load_training_checkpoint(path: os.PathLike | str) -> dict[str, Any]:
    """A training checkpoint as a dict (weights-only load, CPU tensors); CheckpointFormatError if not one."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable or unsafe files
        raise CheckpointFormatError(f"{path}: cannot read as a training checkpoint: {exc}") from exc
    if not isinstance(data, Mapping) or "model" not in data or "iteration" not in data:
        raise CheckpointFormatError(f"{path}: not a training checkpoint (needs 'model' and 'iteration')")
    return dict(data)
