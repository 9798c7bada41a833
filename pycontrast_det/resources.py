"""Where the shipped data lives: zoo.yaml and configs/ (a source checkout, or an installed share dir)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def data_root() -> Path:
    """The folder that holds ``zoo.yaml`` and ``configs/``: the checkout root, else ``<prefix>/share``."""
    checkout = _PACKAGE_DIR.parent
    if (checkout / "zoo.yaml").is_file():
        return checkout
    for prefix in (sys.prefix, sys.base_prefix, os.path.expanduser("~/.local")):
        candidate = Path(prefix) / "share" / "pycontrast-det"
        if (candidate / "zoo.yaml").is_file():
            return candidate
    return checkout


def manifest_path() -> Path:
    """The shipped manifest."""
    return data_root() / "zoo.yaml"


def configs_dir() -> Path:
    """The shipped detectron2-format configs."""
    return data_root() / "configs"
