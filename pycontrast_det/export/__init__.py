"""Export a detector to one self-contained file (ONNX or TorchScript) and run such a file again.

The file takes one HxWx3 uint8 RGB image of any size and returns boxes (XYXY, input pixels), scores, 0-based
labels and (N, H, W) bool masks; the class names and settings travel in its metadata.
"""
from __future__ import annotations

from .exporter import FORMATS, export
from .runtime import ExportedModel, load_exported

__all__ = ["FORMATS", "ExportedModel", "export", "load_exported"]
