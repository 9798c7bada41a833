"""Process-group helpers: who am I, wait for the others, average tensors; all no-ops in a single process.

Every function works whether or not ``torch.distributed`` is initialised, so training code calls them
unconditionally.
"""
from __future__ import annotations

from typing import Any, Sequence


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    dist = _dist()
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    dist = _dist()
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    """Wait until every process reaches this point (rank 0 downloads, the others wait)."""
    if is_distributed():
        _dist().barrier()


def all_reduce_mean(tensors: Sequence[Any]) -> None:
    """Average each tensor in place across processes (one flat all-reduce for the whole list)."""
    if not is_distributed() or not tensors:
        return
    import torch

    flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
    _dist().all_reduce(flat)
    flat /= get_world_size()
    offset = 0
    for tensor in tensors:
        count = tensor.numel()
        tensor.copy_(flat[offset:offset + count].view_as(tensor).to(tensor.dtype))
        offset += count


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from process ``src`` on every process (plain picklable data only)."""
    if not is_distributed():
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=src)
    return box[0]
