"""The ``pycontrast-zoo`` command with rank 1 failing at its second training step, for the launcher tests.

Run as a script (``python tests/runs_faults.py ARGS``, ``torchrun ... tests/runs_faults.py ARGS``): the patch is
made on import, so the processes the local launcher spawns (which import this file as their main module) and
submitit's tasks (which unpickle :func:`failing_main`, importable with ``tests/`` on PYTHONPATH) fail the same way.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

from pycontrast_det import cli
from pycontrast_det.engine.train import Trainer
from pycontrast_det.utils import comm

MESSAGE = "injected failure on rank 1"
RAISED_AT = "raised_at"  # written into the working folder when rank 1 raises: the time (time.time())
_real_step = Trainer.step
_real_main = cli.main


def _step(self: Trainer, model, batch, iteration: int):
    if comm.get_rank() == 1 and iteration == 1:
        Path(RAISED_AT).write_text(str(time.time()))
        raise RuntimeError(MESSAGE)
    return _real_step(self, model, batch, iteration)


def failing_main(argv: Sequence[str]) -> int:
    """``pycontrast-zoo ARGV`` with rank 1's second step raising (and the SLURM job's tasks running this too)."""
    Trainer.step = _step  # type: ignore[method-assign]
    cli.main = failing_main  # what cli.runs.submit pickles for each task
    return _real_main(list(argv))


Trainer.step = _step  # type: ignore[method-assign]

if __name__ == "__main__":
    import runs_faults  # noqa: F401  (the same functions under an importable name, for submitit's pickles)

    sys.exit(runs_faults.failing_main(sys.argv[1:]))
