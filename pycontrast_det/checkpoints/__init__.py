"""Read pre-trained and detectron2 checkpoints safely, find a pretrain's ResNet-50 by structure (:mod:`.encoders`),
rename keys between formats, say what a string names (:mod:`.names`) and load any weights spec onto a model
(:mod:`.weights`, the one loading path).

No torch import at package import time; each function imports what it needs.
"""
from __future__ import annotations

from .cache import CONVERTER_VERSION, converted_pretrain, converted_pretrain_path
from .detectron2 import MappingReport, backbone_to_detector, d2_to_model, model_to_d2
from .formats import TABLE, CheckpointFormat, weights_kind
from .pretrain import convert_to_detectron2
from .readers import FORMATS, Checkpoint, read_checkpoint
from .report import ConversionReport
from .encoders import EncoderChoice
from .names import Kind, Name, parse_name
from .weights import (
    LoadReport, ModelTarget, OpenedWeights, WeightsFile, classes_entry, describe_pretrain, map_weights, open_weights,
    resolve_weights, stage_backbone,
)
from .writers import write_d2_pkl, write_safetensors

__all__ = [
    "CONVERTER_VERSION", "Checkpoint", "CheckpointFormat", "ConversionReport", "EncoderChoice", "FORMATS", "Kind",
    "LoadReport", "MappingReport", "ModelTarget", "Name", "OpenedWeights", "TABLE", "WeightsFile",
    "backbone_to_detector", "classes_entry", "convert_to_detectron2", "converted_pretrain", "converted_pretrain_path",
    "d2_to_model", "describe_pretrain", "map_weights", "model_to_d2", "open_weights", "parse_name", "read_checkpoint",
    "resolve_weights", "stage_backbone", "weights_kind", "write_d2_pkl", "write_safetensors",
]
