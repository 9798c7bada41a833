"""detectron2-compatible Mask R-CNN (FPN and C4) built from torchvision parts: build, load, predict."""
from __future__ import annotations

from .api import load, load_weights
from .build import build_model
from .meta_arch import MaskRCNN

__all__ = ["MaskRCNN", "build_model", "load", "load_weights"]
