"""Export a detector to one self-contained file (ONNX or TorchScript) and run such a file again.

The file takes one HxWx3 uint8 RGB image of any size and returns boxes (XYXY, input pixels), scores, 0-based
labels and (N, H, W) bool masks; the class names and settings travel in its metadata. ``export`` and
``load_exported`` are imported on first use, so that the command line can read ``FORMATS`` without numpy.
"""
from __future__ import annotations

import importlib
from typing import Any

from .metadata import FORMATS

_LAZY = {"export": "exporter", "ExportedModel": "runtime", "load_exported": "runtime"}

__all__ = ["FORMATS", "ExportedModel", "export", "load_exported"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
