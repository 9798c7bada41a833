"""Benchmark workers: one process per model (its memory is its own), taking turns round after round so that a
busy machine slows every model alike. The parent writes one line per round; a worker answers with one JSON line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]


def use_this_checkout() -> str:
    """Put this checkout first on sys.path (and on the workers' PYTHONPATH, see :func:`repo_env`), so that the
    benchmark measures the code next to it, not a pycontrast_det installed elsewhere; returns where it comes from."""
    if sys.path[:1] != [str(REPO_ROOT)]:
        sys.path.insert(0, str(REPO_ROOT))
    import pycontrast_det

    return str(Path(pycontrast_det.__file__).parent)


def repo_env(**extra: str) -> dict[str, str]:
    """This environment with the checkout first on PYTHONPATH (workers may run another interpreter)."""
    paths = [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **extra}


def start(name: str, command: list[str], env: Optional[dict[str, str]] = None) -> Optional[subprocess.Popen]:
    """Start a worker and wait until it is ready; None (and a line saying why) when it cannot start."""
    errors = tempfile.TemporaryFile(mode="w+")  # a pipe could fill up with warnings and stall the worker
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True,
                            env=env or repo_env(), cwd=REPO_ROOT)
    if not proc.stdout.readline():
        proc.wait()
        errors.seek(0)
        tail = (errors.read().strip().splitlines() or ["(no output)"])[-1]
        print(f"  {name}: not run ({tail})", flush=True)
        return None
    return proc


def take_turns(workers: dict[str, subprocess.Popen], rounds: int) -> dict[str, list[dict[str, Any]]]:
    """Every worker's reply per round, the workers taking turns; they are stopped at the end."""
    replies: dict[str, list[dict[str, Any]]] = {name: [] for name in workers}
    try:
        for _ in range(rounds):
            for name, proc in workers.items():
                proc.stdin.write("run\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"worker {name} stopped (exit status {proc.wait()})")
                replies[name].append(json.loads(line))
    finally:
        stop(workers.values())
    return replies


def stop(procs: Iterable[Optional[subprocess.Popen]]) -> None:
    """End the workers that started (closing their input ends their loop) and wait for them."""
    for proc in procs:
        if proc is not None:
            proc.stdin.close()
            proc.wait()


def required_started(started: dict[str, Optional[subprocess.Popen]], required: Iterable[str]) -> bool:
    """Whether every worker in ``required`` started; when one did not, the others are stopped."""
    if all(started.get(name) is not None for name in required):
        return True
    stop(started.values())
    return False


def serve(ready: Any, run_round: Callable[[], Any]) -> None:
    """Worker side: say ready, then answer each line from the parent with one round's figures."""
    print(json.dumps({"ready": ready}), flush=True)
    for _ in sys.stdin:
        print(json.dumps(run_round()), flush=True)
