"""``export(model, file, format=...)``: trace the detector's whole inference (resize included) into one file."""
from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from .. import atomic
from ..errors import ExportError
from .metadata import FORMATS, METADATA_KEY, OUTPUTS, describe, require
from .trust import record_export

_AXES = {name: {0: "detections"} for name in OUTPUTS} | {"masks": {0: "detections", 1: "height", 2: "width"}}

if TYPE_CHECKING:
    from ..modeling import MaskRCNN

ONNX_OPSET = 17  # RoiAlign with half-pixel coordinates (detectron2's ROIAlignV2) needs opset 16 or later


def example_image(height: int = 256, width: int = 320) -> np.ndarray:
    """A fixed HWC uint8 RGB image to trace with (smooth colour ramps with a few blocks: no randomness)."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256], axis=-1)
    for i in range(4):
        top, left = height * i // 5, width * (3 - i) // 5
        image[top:top + height // 4, left:left + width // 4] = (60 * i, 255 - 50 * i, 40 + 40 * i)
    return image.astype(np.uint8)


def export(model: "MaskRCNN", file: Union[str, os.PathLike[str]], format: str = "onnx") -> Path:
    """Write ``model`` as one self-contained file that detects objects in one image (see the package docstring).

    Args:
        model: a MaskRCNN (any device; it is traced on a CPU copy in eval mode, with its fast path, its
            INPUT.MIN/MAX_SIZE_TEST and its score threshold).
        file: where to write it (replaced if it exists).
        format: ``"onnx"`` (needs the ``onnx`` package; run with onnxruntime) or ``"torchscript"``.

    Returns the path written.
    """
    import torch

    from ..modeling.single_image import ImageDetector

    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    onnx = require("onnx", "export to ONNX") if format == "onnx" else None
    path = Path(file)
    meta = describe(model)
    cpu_model = model if model.device.type == "cpu" and not model.training else copy.deepcopy(model).cpu()
    detector = ImageDetector(cpu_model.eval()).eval()
    image = torch.from_numpy(example_image())
    with atomic.atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        # tracing warns about each Python value it records (e.g. torchvision's shape asserts), all deliberate here
        warnings.simplefilter("ignore")
        if format == "torchscript":
            traced = torch.jit.trace(detector, image, check_trace=False)
            # constants in place of attributes: drops the unfolded weights the trace does not use
            frozen = torch.jit.freeze(traced, optimize_numerics=False)
            torch.jit.save(frozen, str(tmp), _extra_files={f"{METADATA_KEY}.json": meta.to_json()})
        else:
            assert onnx is not None  # required above for this format
            torch.onnx.export(detector, (image,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["image"], output_names=meta.outputs,
                              dynamic_axes={"image": {0: "height", 1: "width"},
                                            **{name: _AXES[name] for name in meta.outputs}})
            proto = onnx.load(str(tmp))
            entry = proto.metadata_props.add()
            entry.key, entry.value = METADATA_KEY, meta.to_json()
            onnx.save(proto, str(tmp))
    if format == "torchscript":
        record_export(path)  # load_exported trusts TorchScript files exported here
    return path
