"""Start one training process per device: spawn them here, or join the group torchrun (or a SLURM task) set up.

``launch(main, num_gpus_per_machine=N, device="cpu")`` runs N CPU processes on gloo (what the tests use);
on CUDA the backend is nccl and process ``i`` owns GPU ``i``. Under torchrun (RANK / WORLD_SIZE /
LOCAL_RANK in the environment) nothing is spawned: this process joins the group and calls ``main``.
The value ``main`` returns on global rank 0 is returned to the caller (None on the other ranks).

No process waits for a dead one: when a spawned process fails, the others are killed at once and its error is
raised here (a :class:`~pycontrast_det.errors.ZooError` as it was, anything else as
:class:`~pycontrast_det.errors.RankFailedError` naming the rank, its traceback printed by that process). The
first Ctrl-C reaches every process (the trainer finishes its step, saves and stops); a second one kills them.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import traceback
from datetime import timedelta
from typing import Any, Callable, Iterator, Optional, Sequence

from ..errors import ConfigError, RankFailedError, ZooError
from .run_options import torchrun_group

DEFAULT_TIMEOUT = timedelta(minutes=30)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _backend(device: str) -> str:
    return "nccl" if str(device).startswith("cuda") else "gloo"


def under_torchrun() -> bool:
    """True when torchrun (or any env:// launcher) started this process."""
    return torchrun_group() is not None


def _setup_process(backend: str, init_method: str, world_size: int, rank: int, local_rank: int,
                   local_world_size: int) -> None:
    import torch
    import torch.distributed as dist

    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    else:  # CPU processes share the cores instead of each grabbing all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world_size)))
    dist.init_process_group(backend, init_method=init_method, world_size=world_size, rank=rank,
                            timeout=DEFAULT_TIMEOUT)
    dist.barrier()


def _lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another process of the group died (not this one's fault)."""
    text = str(exc)
    return type(exc).__name__ == "DistBackendError" or "Connection closed by peer" in text or \
        "Connection reset by peer" in text


def _failure(exc: BaseException, rank: int) -> ZooError:
    """The error the launcher shows for ``exc`` raised on ``rank``: a ZooError as it is, a collective broken by a
    dead peer as one line saying so, anything else (a bug) as RankFailedError naming the rank, with the traceback
    printed by this process."""
    if isinstance(exc, ZooError):
        return exc
    if _lost_peer(exc):
        return RankFailedError(f"rank {rank} stopped: another process of the run failed (its error is shown)")
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    return RankFailedError(f"rank {rank} failed: {type(exc).__name__}: {exc}")


def _run_as_rank(main_func: Callable[..., Any], args: Sequence[Any], rank: int) -> Any:
    """``main_func(*args)`` in a process of a group; its failure as :func:`_failure` says, the group torn down."""
    import torch.distributed as dist

    try:
        return main_func(*args)
    except Exception as exc:
        raise _failure(exc, rank) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _worker(local_rank: int, main_func: Callable[..., Any], world_size: int, num_gpus_per_machine: int,
            machine_rank: int, backend: str, dist_url: str, args: Sequence[Any], results: Any, errors: Any) -> None:
    rank = machine_rank * num_gpus_per_machine + local_rank
    try:
        _setup_process(backend, dist_url, world_size, rank, local_rank, num_gpus_per_machine)
        value = _run_as_rank(main_func, args, rank)
    except KeyboardInterrupt:  # a Ctrl-C outside the training loop: the parent, which saw it too, reports it
        raise SystemExit(130) from None
    except Exception as exc:
        errors.put((rank, _portable(_failure(exc, rank))))
        raise SystemExit(1) from None
    if rank == 0:
        results.put(value)


def _portable(error: ZooError) -> ZooError:
    """``error`` if it survives pickling, else a RankFailedError with its text."""
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RankFailedError(str(error))


@contextlib.contextmanager
def _second_ctrl_c_kills() -> Iterator[list[bool]]:
    """While the spawned processes run: the first SIGINT (which the terminal sends them too) is only noted, so they
    can finish their step and save; the second raises KeyboardInterrupt here."""
    noted: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return

    def handler(signum: int, frame: Any) -> None:
        if noted:
            raise KeyboardInterrupt
        noted.append(True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield noted
    finally:
        signal.signal(signal.SIGINT, previous)


def launch(main_func: Callable[..., Any], num_gpus_per_machine: int, num_machines: int = 1,
           machine_rank: int = 0, dist_url: str = "auto", args: Sequence[Any] = (),
           device: str = "cuda") -> Optional[Any]:
    """Run ``main_func(*args)`` in ``num_machines * num_gpus_per_machine`` processes and return rank 0's value
    (None on other ranks and machines). One process total runs in place, without a process group."""
    import torch

    backend = _backend(device)
    group = torchrun_group()
    if group is not None:
        rank, local_rank, local_world, world = group
        try:
            _setup_process(backend, "env://", world, rank, local_rank, local_world)
        except Exception as exc:
            raise _failure(exc, rank) from None
        value = _run_as_rank(main_func, args, rank)
        return value if rank == 0 else None

    if num_gpus_per_machine < 1 or num_machines < 1 or not 0 <= machine_rank < num_machines:
        raise ConfigError(f"launch: need num_gpus >= 1, num_machines >= 1 and 0 <= machine_rank < num_machines; "
                          f"got {num_gpus_per_machine}, {num_machines}, {machine_rank}")
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        return main_func(*args)
    if backend == "nccl" and torch.cuda.device_count() < num_gpus_per_machine:
        raise ConfigError(f"--num-gpus {num_gpus_per_machine} asked for, but only {torch.cuda.device_count()} "
                          "CUDA devices are visible; lower --num-gpus or use --device cpu")
    if dist_url == "auto":
        if num_machines != 1:
            raise ConfigError("dist_url='auto' only works on one machine; pass --dist-url tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    return _spawn(main_func, num_gpus_per_machine, world_size, machine_rank, backend, dist_url, args)


def _spawn(main_func: Callable[..., Any], nprocs: int, world_size: int, machine_rank: int, backend: str,
           dist_url: str, args: Sequence[Any]) -> Optional[Any]:
    """Start ``nprocs`` processes and watch them: the first that fails kills the others (torch's join) and its
    error is raised here."""
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    context = mp.get_context("spawn")
    results, errors = context.SimpleQueue(), context.SimpleQueue()
    with _second_ctrl_c_kills() as interrupted:
        processes = mp.start_processes(_worker, nprocs=nprocs, start_method="spawn", daemon=False, join=False,
                                       args=(main_func, world_size, nprocs, machine_rank, backend, dist_url,
                                             tuple(args), results, errors))
        try:
            while not processes.join():
                pass
        except KeyboardInterrupt:
            for process in processes.processes:
                process.kill()
            raise
        except ProcessException as exc:  # one failed; torch's join has killed the others
            if interrupted:
                raise KeyboardInterrupt from None
            reported: dict[int, ZooError] = {}
            while not errors.empty():
                rank, error = errors.get()
                reported.setdefault(rank, error)
            rank = machine_rank * nprocs + exc.error_index
            raise reported.get(rank) or RankFailedError(f"rank {rank} failed: {exc}") from None
    if interrupted and results.empty():
        raise KeyboardInterrupt
    return None if results.empty() else results.get()
