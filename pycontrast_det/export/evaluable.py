"""An exported detector as ``evaluate()`` takes a model: a callable on batched inputs with a ``.cfg`` that makes the
test loader give each image at its own size, in RGB (the exported file resizes it itself, as it was exported to)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import CfgNode
    from .runtime import ExportedModel


class EvaluableExport:
    """``model(batched_inputs) -> [{"boxes", "scores", "classes", "masks"}]`` in original pixels, on an
    :class:`~.runtime.ExportedModel`; ``classes`` and ``cfg`` as ``evaluate()`` reads them from a MaskRCNN."""

    def __init__(self, exported: "ExportedModel") -> None:
        self.exported = exported
        self.classes = exported.classes
        self.cfg = self._config()

    def _config(self) -> "CfgNode":
        from ..config import get_cfg

        cfg = get_cfg()
        cfg.defrost()
        cfg.INPUT.FORMAT = "RGB"
        cfg.INPUT.MIN_SIZE_TEST = 0  # the loader keeps the original size: the file resizes as it was exported to
        cfg.MODEL.MASK_ON = "masks" in self.exported.metadata.outputs  # a box-only export is scored on boxes
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(self.classes.names)
        return cfg.freeze()

    def __call__(self, batched_inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        outputs = []
        for item in batched_inputs:
            found = self.exported.predict(item["image"].permute(1, 2, 0).contiguous().numpy())
            assert isinstance(found, dict)
            outputs.append({"boxes": found["boxes"], "scores": found["scores"], "classes": found["labels"],
                            **({"masks": found["masks"]} if "masks" in found else {})})
        return outputs
