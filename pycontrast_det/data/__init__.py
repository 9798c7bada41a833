"""Datasets (COCO, any COCO-format json, the layouts annotation tools export, Pascal VOC, the synthetic
``shapes``), detectron2-style mapping and loaders, and the dataset report."""
from __future__ import annotations

from .catalog import (DatasetSpec, check_num_classes, has_val_split, known_datasets, resolve_dataset,
                      resolve_datasets)
from .coco import CategoryMap, load_records, scan_dataset
from .loader import build_test_loader, build_train_loader
from .mapper import DatasetMapper
from .report import DatasetReport
from .shapes import SHAPES_CATEGORIES, ShapesParams, shapes_root

__all__ = [
    "CategoryMap", "DatasetMapper", "DatasetReport", "DatasetSpec", "SHAPES_CATEGORIES", "ShapesParams",
    "build_test_loader", "build_train_loader", "check_num_classes", "has_val_split", "known_datasets",
    "load_records", "resolve_dataset", "resolve_datasets", "scan_dataset", "shapes_root",
]
