"""Datasets (COCO, any COCO-format json, the synthetic ``shapes``), detectron2-style mapping and loaders."""
from __future__ import annotations

from .catalog import DatasetSpec, check_num_classes, known_datasets, resolve_dataset
from .coco import CategoryMap, load_records
from .loader import build_test_loader, build_train_loader
from .mapper import DatasetMapper
from .shapes import SHAPES_CATEGORIES, ShapesParams, shapes_root

__all__ = [
    "CategoryMap", "DatasetMapper", "DatasetSpec", "SHAPES_CATEGORIES", "ShapesParams", "build_test_loader",
    "build_train_loader", "check_num_classes", "known_datasets", "load_records",
    "resolve_dataset", "shapes_root",
]
