"""pycontrast-det: the PyContrast detection-transfer model zoo.

Public API, resolved lazily so that ``import pycontrast_det`` stays light (no torch)::

    import pycontrast_det as pcd
    pcd.list_entries(detector="fpn", schedule="2x")
    model = pcd.load("mask_rcnn_fpn_2x_infomin")
    model.predict("image.jpg")
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (relative to this package)
_API = {
    # manifest
    "load_manifest": "zoo", "list_entries": "zoo", "get_entry": "zoo", "get_pretrain": "zoo",
    "DetectorEntry": "zoo", "PretrainEntry": "zoo", "FileRef": "zoo", "Zoo": "zoo", "render_table": "zoo",
    # store
    "fetch_file": "store", "cache_dir": "store",
    # checkpoints
    "read_checkpoint": "checkpoints", "convert_to_detectron2": "checkpoints", "d2_to_model": "checkpoints",
    # config
    "get_cfg": "config", "load_config": "config",
    # modeling
    "build_model": "modeling", "load": "modeling",
    # drawing
    "draw": "visualize",
    # evaluation, engine, recipes
    "evaluate": "evaluation", "train": "engine", "Trainer": "engine", "HookBase": "engine", "RunOptions": "engine",
    "reproduce": "recipes", "finetune": "recipes", "plan_finetune": "recipes",
    # export
    "export": "export", "load_exported": "export", "ExportedModel": "export",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'pycontrast_det' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
