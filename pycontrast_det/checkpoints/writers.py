"""Write converted weights: detectron2's ``.pkl`` layout (as PyContrast's converter writes it) or safetensors."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from .. import atomic
from .arrays import as_numpy

DEFAULT_AUTHOR = "pycontrast-det"


def write_d2_pkl(state: Mapping[str, Any], path: Union[str, Path], author: str = DEFAULT_AUTHOR) -> Path:
    """``{"model": {name: ndarray}, "__author__": author, "matching_heuristics": True}`` pickled to ``path``.

    detectron2 reads this layout from ``.pkl`` files only (and then matches names by suffix).
    """
    path = Path(path)
    obj = {"model": {k: as_numpy(v) for k, v in state.items()}, "__author__": author, "matching_heuristics": True}
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickler = pickle.Pickler(f, protocol=4)  # 4: readable by every Python 3 detectron2 runs on
        pickler.fast = True  # no memo: each array's byte copy is freed once written (the dict has no cycles)
        pickler.dump(obj)
    return path


def write_safetensors(state: Mapping[str, Any], path: Union[str, Path],
                      metadata: Optional[Mapping[str, str]] = None) -> Path:
    """The flat state dict as a safetensors file (string ``metadata`` stored in its header)."""
    import numpy as np
    from safetensors.numpy import save_file

    path = Path(path)
    # np.require, not ascontiguousarray, which would turn 0-d buffers (num_batches_tracked) into 1-d
    arrays = {k: np.require(as_numpy(v), requirements="C") for k, v in state.items()}
    with atomic.atomic_path(path) as tmp:
        save_file(arrays, str(tmp), metadata=dict(metadata) if metadata else None)
    return path
