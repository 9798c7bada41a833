"""Stop a training run cleanly when the cluster asks: a signal only sets a flag; the trainer looks at it between
iterations (all processes agree with one all-reduce), saves a checkpoint of the last finished iteration and
returns, so the job can be requeued with ``--resume`` and go on exactly where it stopped.

Installed by the SLURM launcher (:mod:`pycontrast_det.recipes.slurm`) for its preemption and timeout signals;
without :func:`install` nothing changes and the trainer never checks.
"""
from __future__ import annotations

import signal
from typing import Any, Sequence

_state = {"installed": False, "requested": False, "signal": "", "stopped": False}


def _handler(signum: int, frame: Any) -> None:
    _state["requested"] = True
    _state["signal"] = signal.Signals(signum).name


def install(signals: Sequence[int]) -> None:
    """From now on, each of ``signals`` asks the running training to checkpoint and stop."""
    for sig in signals:
        signal.signal(sig, _handler)
    _state["installed"] = True


def installed() -> bool:
    return bool(_state["installed"])


def requested() -> bool:
    """True once one of the installed signals arrived in this process."""
    return bool(_state["requested"])


def received() -> str:
    """The name of the signal that asked to stop ("" if none)."""
    return str(_state["signal"])


def mark_stopped() -> None:
    """Called by the trainer once it saved its checkpoint and stopped early because of a signal."""
    _state["stopped"] = True


def stopped() -> bool:
    """True when a training run in this process stopped early (checkpointed) because of a signal."""
    return bool(_state["stopped"])


__all__ = ["install", "installed", "mark_stopped", "received", "requested", "stopped"]
