"""Stop a training run cleanly when the cluster asks: a signal only sets a flag; the trainer looks at it between
iterations (all processes agree with one all-reduce), saves a checkpoint of the last finished iteration and
returns, so the job can be requeued with ``--resume`` and go on exactly where it stopped.

Installed by the SLURM launcher (:mod:`pycontrast_det.recipes.slurm`) for its preemption and timeout signals.
Ctrl-C (SIGINT) works the same way while the training loop runs (:func:`ctrl_c_stops_after_the_step`): the first
one stops after the step with a checkpoint, a second one interrupts at once.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator, Sequence

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


@contextlib.contextmanager
def ctrl_c_stops_after_the_step() -> Iterator[None]:
    """Within: the first SIGINT asks to stop after the step (as a preemption signal does), the second raises
    KeyboardInterrupt at once. The previous handler is back afterwards (only the main thread can do this)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if _state["requested"]:
            signal.signal(signal.SIGINT, previous)
            _state["requested"] = False  # answered: by stopping at once
            raise KeyboardInterrupt
        _handler(signum, frame)

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def requested() -> bool:
    """True once one of the installed signals arrived in this process."""
    return bool(_state["requested"])


def received() -> str:
    """The name of the signal that asked to stop ("" if none)."""
    return str(_state["signal"])


def mark_stopped() -> None:
    """Called by the trainer once it saved its checkpoint and stopped early because of a signal (the request is
    then answered: a later run in this process starts afresh)."""
    _state["stopped"] = True
    _state["requested"] = False


def stopped() -> bool:
    """True when a training run in this process stopped early (checkpointed) because of a signal."""
    return bool(_state["stopped"])


__all__ = ["ctrl_c_stops_after_the_step", "install", "installed", "mark_stopped", "received", "requested", "stopped"]
