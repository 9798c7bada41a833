"""A pickle reader that builds only numpy arrays, numpy dtypes/scalars and plain containers.

detectron2 model-zoo ``.pkl`` files (and MSRA's caffe2 blobs) are pickles; a plain ``pickle.load`` would run
whatever a crafted file asks for. Any other global is refused before it is called.
"""
from __future__ import annotations

import collections
import pickle
from pathlib import Path
from typing import Any, Callable

from ..errors import CheckpointFormatError, UnsafeCheckpointError


def _allowed_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    import codecs

    import numpy as np

    try:  # numpy >= 2 moved the internals to numpy._core; old pickles still name numpy.core
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Callable[..., Any]] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles spell bytes (array buffers)
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = getattr(numeric, "_frombuffer")  # noqa: B009 (untyped; protocol 5 arrays)
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file, encoding="latin1")  # latin1: Python 2 pickles (MSRA's R-50.pkl) hold str buffers
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise UnsafeCheckpointError(
                f"{self._source}: refused to unpickle: it asks for the global {module}.{name}, which could run "
                "code; only numpy arrays and plain containers are allowed in a .pkl checkpoint. "
                "Re-save the weights as a plain dict of arrays (or safetensors) from a trusted environment.")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(
            f"{self._source}: refused to unpickle: it uses persistent ids (a torch.save file?); "
            "load it as a .pth file instead")


def _refuse_object_arrays(obj: Any, path: Path) -> None:
    """Weights are numbers: an array of Python objects (dtype 'O') has no business in a checkpoint."""
    import numpy as np

    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, np.ndarray) and item.dtype.hasobject:
            raise UnsafeCheckpointError(f"{path}: refused: it holds an array of Python objects (dtype {item.dtype})")


def load_pickle(path: Path) -> Any:
    """Unpickle ``path`` allowing only data (numpy arrays, dtypes, scalars, dicts, lists, tuples, str, numbers)."""
    with open(path, "rb") as f:
        try:
            obj = _RestrictedUnpickler(f, str(path)).load()
        except UnsafeCheckpointError:
            raise
        except Exception as exc:  # truncated or not a pickle at all
            raise CheckpointFormatError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from exc
    _refuse_object_arrays(obj, path)
    return obj
