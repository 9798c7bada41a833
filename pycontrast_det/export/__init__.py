"""Export a detector to one self-contained file (ONNX or TorchScript) and run such a file again.

The file takes one HxWx3 uint8 RGB image of any size and returns boxes (XYXY, input pixels), scores, 0-based
labels and (N, H, W) bool masks; the class names and settings travel in its metadata. ``export`` and
``load_exported`` are imported on first use, so that the command line can read ``FORMATS`` without numpy.

This package and ``pycontrast_det.export`` (the function) share a name, and importing the package makes it the
attribute ``pycontrast_det.export``: so the package is callable too, as the function.
"""
from __future__ import annotations

import sys
import types
from typing import Any

from .metadata import FORMATS, exported_format

__all__ = ["FORMATS", "ExportedModel", "export", "exported_format", "load_exported"]


def __getattr__(name: str) -> Any:
    """``export`` (from .exporter), ``load_exported`` and ``ExportedModel`` (from .runtime), on first use."""
    if name == "export":
        from .exporter import export

        return export
    if name in ("ExportedModel", "load_exported"):
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _CallablePackage(types.ModuleType):
    """This package, callable as :func:`.exporter.export`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .exporter import export

        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
