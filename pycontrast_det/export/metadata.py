"""What an exported file says about itself (stored as JSON in its metadata), and the optional packages it needs."""
from __future__ import annotations

import importlib
import json
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

from ..errors import ExportError, MissingDependencyError

if TYPE_CHECKING:
    from ..modeling import MaskRCNN

FORMATS = ("onnx", "torchscript")
METADATA_KEY = "pycontrast_det"  # ONNX metadata_props key; TorchScript extra file "<key>.json"
OUTPUTS = ("boxes", "scores", "labels", "masks")
FORMAT_VERSION = 1


@dataclass
class ExportMetadata:
    """The facts a runtime needs besides the graph: class names, and how the model was set up when exported."""

    class_names: list[str]
    category_ids: list[int]  # the dataset's id of each class (COCO's for the zoo detectors), index = label
    arch: str
    input_format: str  # the channel order the network was trained on (the graph takes RGB either way)
    min_size_test: int
    max_size_test: int
    score_thresh: float
    package_version: str
    format_version: int = FORMAT_VERSION
    outputs: list[str] = field(default_factory=lambda: list(OUTPUTS))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str, source: str) -> "ExportMetadata":
        """Parse the stored JSON; ExportError naming ``source`` when it is missing fields or of a newer format."""
        try:
            data = json.loads(text)
            meta = cls(**data)
        except (ValueError, TypeError) as exc:
            raise ExportError(f"{source}: unreadable {METADATA_KEY} metadata ({exc}); re-export the model") from None
        if meta.format_version > FORMAT_VERSION:
            raise ExportError(f"{source}: exported by a newer pycontrast-det (format {meta.format_version}); "
                              "upgrade pycontrast-det to run it")
        return meta


def require(module: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or MissingDependencyError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"{purpose} needs the '{module}' package, which is not installed; "
                                      "install it with: pip install 'pycontrast-det[export]'") from None


def describe(model: "MaskRCNN") -> ExportMetadata:
    """The metadata of ``model`` (a MaskRCNN) as it is now."""
    from .. import __version__

    cfg = model.cfg
    return ExportMetadata(class_names=list(model.classes.names), category_ids=list(model.classes.ids),
                          arch=model.arch, input_format=cfg.INPUT.FORMAT,
                          min_size_test=int(cfg.INPUT.MIN_SIZE_TEST), max_size_test=int(cfg.INPUT.MAX_SIZE_TEST),
                          score_thresh=float(model.roi_heads.score_thresh), package_version=__version__,
                          outputs=list(OUTPUTS if model.roi_heads.mask_on else OUTPUTS[:-1]))  # box-only: no masks
