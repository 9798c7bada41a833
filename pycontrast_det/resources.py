"""Where the shipped data lives: ``zoo.yaml`` and ``configs/``. A source checkout reads its own files (the
repository root); an installed wheel reads the copies built into the package (``pycontrast_det/_shipped``, put there
by setup.py's build step), found with importlib.resources wherever the package was installed (site-packages,
``--target``, ``--prefix``, a user install)."""
from __future__ import annotations

import atexit
import contextlib
from functools import lru_cache
from importlib import resources
from pathlib import Path

MANIFEST = "zoo.yaml"
CONFIGS = "configs"
#: The folder inside the package that a built wheel holds the shipped data in (see setup.py).
SHIPPED = "_shipped"

_PACKAGE_DIR = Path(__file__).resolve().parent
_EXTRACTED = contextlib.ExitStack()  # a package imported from a zip: its data extracted once, removed at exit
atexit.register(_EXTRACTED.close)


@lru_cache(maxsize=None)
def data_root() -> Path:
    """The folder that holds ``zoo.yaml`` and ``configs/``: the checkout root, else the package's shipped copy."""
    checkout = _PACKAGE_DIR.parent
    if (checkout / MANIFEST).is_file() and (checkout / "pyproject.toml").is_file():
        return checkout
    shipped = resources.files(__package__) / SHIPPED
    if isinstance(shipped, Path):
        return shipped
    return Path(_EXTRACTED.enter_context(resources.as_file(shipped)))


def manifest_path() -> Path:
    """The shipped manifest."""
    return data_root() / MANIFEST


def configs_dir() -> Path:
    """The shipped detectron2-format configs."""
    return data_root() / CONFIGS
