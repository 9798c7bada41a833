"""Read pre-trained and detectron2 checkpoints safely and rename their keys between formats.

No torch import at package import time; each function imports what it needs.
"""
from __future__ import annotations

from .detectron2 import MappingReport, d2_to_model, model_to_d2

__all__ = ["MappingReport", "d2_to_model", "model_to_d2"]
