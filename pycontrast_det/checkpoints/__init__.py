"""Read pre-trained and detectron2 checkpoints safely and rename their keys between formats.

No torch import at package import time; each function imports what it needs.
"""
from __future__ import annotations

from .cache import CONVERTER_VERSION, converted_pretrain, converted_pretrain_path
from .detectron2 import MappingReport, backbone_to_detector, d2_to_model, model_to_d2
from .pretrain import convert_to_detectron2
from .readers import FORMATS, Checkpoint, read_checkpoint
from .report import ConversionReport
from .writers import write_d2_pkl, write_safetensors

__all__ = [
    "CONVERTER_VERSION", "Checkpoint", "ConversionReport", "FORMATS", "MappingReport", "backbone_to_detector",
    "convert_to_detectron2", "converted_pretrain", "converted_pretrain_path", "d2_to_model", "model_to_d2",
    "read_checkpoint", "write_d2_pkl", "write_safetensors",
]
