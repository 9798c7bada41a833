"""Tensor <-> numpy conversions for checkpoint values, without copying where the dtype allows."""
from __future__ import annotations

from typing import Any


def as_numpy(value: Any) -> Any:
    """A numpy view of a tensor or array (bfloat16, which numpy lacks, becomes float32)."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return value
    import torch

    tensor = value.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.cpu().numpy()


def as_float32_tensor(value: Any) -> Any:
    """A tensor sharing the value's memory; floating values of another precision are cast to float32."""
    import numpy as np
    import torch

    if isinstance(value, np.ndarray):  # copied only when not contiguous or read-only (torch needs writable memory)
        tensor = torch.from_numpy(np.require(value, requirements=["C", "W"]))
    else:
        tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    return tensor.float() if tensor.is_floating_point() and tensor.dtype != torch.float32 else tensor
