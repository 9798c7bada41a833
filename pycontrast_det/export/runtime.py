"""``load_exported(file)``: an exported detector on onnxruntime or TorchScript, with ``MaskRCNN.predict``'s output."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from ..coco_classes import CategoryMap
from ..errors import ExportError
from ..images import as_rgb_array
from .metadata import METADATA_KEY, ExportMetadata, require
from .trust import check_trusted

RunFn = Callable[[np.ndarray], Sequence[Any]]


class ExportedModel:
    """An exported detector loaded for inference; :meth:`predict` returns what ``MaskRCNN.predict`` does."""

    def __init__(self, path: Path, format: str, metadata: ExportMetadata, run: RunFn) -> None:
        self.path = path
        self.format = format  # "onnx" or "torchscript"
        self.metadata = metadata
        self.classes = CategoryMap(ids=tuple(metadata.category_ids), names=tuple(metadata.class_names))
        self._run = run

    @property
    def class_names(self) -> list[str]:
        """Each class's name in label order, as ``MaskRCNN.class_names``."""
        return list(self.classes.names)

    def __repr__(self) -> str:
        return f"ExportedModel({str(self.path)!r}, format={self.format!r}, {len(self.class_names)} classes)"

    def predict(self, images: Any, score_thresh: Optional[float] = None) -> Union[dict[str, Any], list[dict[str, Any]]]:
        """Detect objects in one image or a list (paths, PIL images, HWC uint8 RGB arrays, CHW tensors).

        Returns per image ``boxes`` [N, 4] XYXY pixels, ``scores``, ``labels``, ``label_names`` and, from a
        Mask R-CNN, bool ``masks`` [N, H, W] (CPU torch tensors). ``score_thresh`` keeps detections scoring above
        it; it cannot go below the threshold the file was exported with.
        """
        import torch

        if score_thresh is not None and score_thresh < self.metadata.score_thresh:
            raise ExportError(f"{self.path} was exported with score threshold {self.metadata.score_thresh}; "
                              f"re-export with a lower MODEL.ROI_HEADS.SCORE_THRESH_TEST to keep scores above "
                              f"{score_thresh}")
        single = not isinstance(images, (list, tuple))
        results = []
        for image in [images] if single else images:
            out = {name: torch.as_tensor(np.asarray(v))
                   for name, v in zip(self.metadata.outputs, self._run(as_rgb_array(image)))}
            if score_thresh is not None:
                keep = out["scores"] > score_thresh
                out = {name: v[keep] for name, v in out.items()}
            labels = out["labels"].to(torch.int64)
            result = {"boxes": out["boxes"].float(), "scores": out["scores"].float(), "labels": labels,
                      "label_names": [self.class_names[i] for i in labels.tolist()]}
            if "masks" in out:  # a box-only (Faster R-CNN) export has none
                result["masks"] = out["masks"].to(torch.bool)
            results.append(result)
        return results[0] if single else results


def _onnx_runner(path: Path, threads: Optional[int]) -> tuple[ExportMetadata, RunFn]:
    ort = require("onnxruntime", "running an exported ONNX model")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=ort.get_available_providers())
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise ExportError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0]})") from None
    stored = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if stored is None:
        raise ExportError(f"{path}: an ONNX model without {METADATA_KEY} metadata (not exported by pycontrast-det)")
    meta = ExportMetadata.from_json(stored, str(path))
    name = session.get_inputs()[0].name
    return meta, lambda image: session.run(meta.outputs, {name: image})


def _torchscript_runner(path: Path, threads: Optional[int], trusted: bool) -> tuple[ExportMetadata, RunFn]:
    import io

    import torch
    import torchvision  # noqa: F401  (registers the nms / roi_align operators the graph calls)

    data = path.read_bytes()  # the bytes checked are the bytes loaded (no swap between check and load)
    check_trusted(path, data, trusted)
    extra = {f"{METADATA_KEY}.json": ""}
    try:
        module = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
    except RuntimeError as exc:
        raise ExportError(f"{path}: TorchScript cannot load it ({str(exc).splitlines()[0]})") from None
    if not extra[f"{METADATA_KEY}.json"]:
        raise ExportError(f"{path}: a TorchScript file without {METADATA_KEY} metadata (not exported by "
                          "pycontrast-det)")
    meta = ExportMetadata.from_json(extra[f"{METADATA_KEY}.json"], str(path))
    if threads:
        torch.set_num_threads(threads)

    def run(image: np.ndarray) -> Sequence[Any]:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(image)))

    return meta, run


def load_exported(file: Union[str, os.PathLike], threads: Optional[int] = None, trusted: bool = False) -> ExportedModel:
    """An exported file (ONNX or TorchScript, told apart by its content) ready to ``predict``.

    ONNX runs on onnxruntime (optional dependency: ``pip install 'pycontrast-det[export]'``), on the best
    execution provider it has; TorchScript on torch. ``threads`` sets the CPU threads (default: the runtime's).
    A TorchScript archive can run code when loaded: it is loaded only if this package exported it on this
    machine (see :mod:`.trust`) or ``trusted`` is True; otherwise UntrustedExportError.
    """
    path = Path(file)
    if not path.is_file():
        raise ExportError(f"{path}: no such exported model file")
    if zipfile.is_zipfile(path):
        format = "torchscript"
        meta, run = _torchscript_runner(path, threads, trusted)
    else:
        format = "onnx"
        meta, run = _onnx_runner(path, threads)
    return ExportedModel(path, format, meta, run)


