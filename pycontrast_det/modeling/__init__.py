"""detectron2-compatible Mask R-CNN (FPN and C4) built from torchvision parts: build, load, predict."""
from __future__ import annotations

from .api import ModelSource, load, load_weights, resolve_source
from .build import build_model
from .meta_arch import MaskRCNN

__all__ = ["MaskRCNN", "ModelSource", "build_model", "load", "load_weights", "resolve_source"]
