"""Process-group helpers: who am I, wait for the others, average tensors; all no-ops in a single process.

Every function works whether or not ``torch.distributed`` is initialised, so training code calls them
unconditionally.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, TypeVar

T = TypeVar("T")


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


def any_process(flag: bool) -> bool:
    """True on every process when ``flag`` is True on at least one (one all-reduce; ``flag`` alone in one process)."""
    if not is_distributed():
        return bool(flag)
    import torch

    value = torch.tensor([1.0 if flag else 0.0])
    _dist().all_reduce(value, op=_dist().ReduceOp.MAX)
    return bool(value.item() > 0)


def main_process_first(fn: Callable[[], T]) -> Optional[T]:
    """Run ``fn`` on rank 0 while the others wait, and raise its error on every process (so that no process
    is left waiting at a barrier when rank 0 fails). Returns ``fn``'s value on rank 0, None elsewhere."""
    import pickle

    value, error = None, None
    if is_main_process():
        try:
            value = fn()
        except Exception as exc:  # re-raised below, on every process
            error = exc
    if is_distributed():
        portable = error
        if error is not None:
            try:
                pickle.dumps(error)
            except Exception:  # an exception type that cannot travel: its text can
                portable = RuntimeError(f"{type(error).__name__}: {error}")
        portable = broadcast_object(portable)
        if error is None and portable is not None:
            raise portable
    if error is not None:
        raise error
    return value
