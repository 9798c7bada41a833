"""Start one training process per device: spawn them here, or join the group torchrun already set up.

``launch(main, num_gpus_per_machine=N, device="cpu")`` runs N CPU processes on gloo (what the tests use);
on CUDA the backend is nccl and process ``i`` owns GPU ``i``. Under torchrun (RANK / WORLD_SIZE /
LOCAL_RANK in the environment) nothing is spawned: this process joins the group and calls ``main``.
The value ``main`` returns on global rank 0 is returned to the caller.
"""
from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any, Callable, Optional, Sequence

from ..errors import ConfigError

DEFAULT_TIMEOUT = timedelta(minutes=30)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _backend(device: str) -> str:
    return "nccl" if str(device).startswith("cuda") else "gloo"


def under_torchrun() -> bool:
    """True when torchrun (or any env:// launcher) started this process."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


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


def _worker(local_rank: int, main_func: Callable[..., Any], world_size: int, num_gpus_per_machine: int,
            machine_rank: int, backend: str, dist_url: str, args: Sequence[Any], results: Any) -> None:
    import torch.distributed as dist

    rank = machine_rank * num_gpus_per_machine + local_rank
    _setup_process(backend, dist_url, world_size, rank, local_rank, num_gpus_per_machine)
    try:
        value = main_func(*args)
        if rank == 0:
            results.put(value)
    finally:
        dist.destroy_process_group()


def launch(main_func: Callable[..., Any], num_gpus_per_machine: int, num_machines: int = 1,
           machine_rank: int = 0, dist_url: str = "auto", args: Sequence[Any] = (),
           device: str = "cuda") -> Optional[Any]:
    """Run ``main_func(*args)`` in ``num_machines * num_gpus_per_machine`` processes and return rank 0's value
    (None on other machines). One process total runs in place, without a process group."""
    import torch

    backend = _backend(device)
    if under_torchrun():
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        _setup_process(backend, "env://", int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"]),
                       int(os.environ["LOCAL_RANK"]), local_world)
        try:
            return main_func(*args)
        finally:
            torch.distributed.destroy_process_group()

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

    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(_worker, nprocs=num_gpus_per_machine, start_method="spawn", daemon=False,
                       args=(main_func, world_size, num_gpus_per_machine, machine_rank, backend, dist_url,
                             tuple(args), results))
    return None if results.empty() else results.get()
