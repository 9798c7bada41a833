"""Device names -> a torch device that exists here, or one ConfigError line saying what to use instead.

Every command and ``load`` go through :func:`resolve_device`, so ``cuda`` on a machine without CUDA is the same
message everywhere, never a traceback from deep inside torch.
"""
from __future__ import annotations

from typing import Union

import torch

from ..config import AUTO_DEVICE as AUTO
from ..errors import ConfigError


def resolve_device(device: Union[str, torch.device], *, what: str = "device") -> torch.device:
    """``device`` checked against this machine: ``auto`` -> cuda when available, else cpu; ``cuda`` -> the current
    CUDA device (a process launched per GPU has set its own). ``what`` names the setting in messages
    (``--device``, ``MODEL.DEVICE``)."""
    name = str(device)
    if name == AUTO:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        out = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{what} {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if out.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{what} {name}: CUDA is not available on this machine (torch {torch.__version__}); "
                              "use cpu, or auto (cuda when available, else cpu)")
        count = torch.cuda.device_count()
        if out.index is None:
            out = torch.device("cuda", torch.cuda.current_device())
        elif out.index >= count:
            raise ConfigError(f"{what} {name}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    elif out.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{what} {name}: MPS is not available on this machine; use cpu")
    return out


__all__ = ["AUTO", "resolve_device"]
