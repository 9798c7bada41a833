"""torch.hub entry points: one function per model-zoo entry, generated from the manifest (zoo.yaml).

    import torch
    model = torch.hub.load("<this folder>", "mask_rcnn_fpn_2x_infomin", source="local")  # or "owner/repo"
    print(torch.hub.list("owner/repo"))  # torch.hub.list/help take a GitHub repo only

Importing this file reads the manifest only: no torch, no network. Each entry function calls
``pycontrast_det.load`` when it is called.
"""
from __future__ import annotations

import importlib.util as _importlib_util
import os as _os
import sys as _sys
from typing import TYPE_CHECKING

_HERE = _os.path.dirname(_os.path.abspath(__file__))
if _importlib_util.find_spec("pycontrast_det") is None:  # imported by path, package not installed
    _sys.path.insert(0, _HERE)

from pycontrast_det import zoo as _zoo  # noqa: E402  (torch-free)

if TYPE_CHECKING:  # typing names stay out of the module: torch.hub lists every public callable as an entry
    from typing import Any, Callable

    from pycontrast_det.modeling import MaskRCNN

# Importable names that pycontrast_det.load needs (torch.hub checks them before calling an entry).
dependencies = ["torch", "torchvision", "numpy", "PIL", "yaml", "requests", "filelock", "tqdm", "pycocotools"]


def _weights_note(entry: _zoo.DetectorEntry, pretrain: _zoo.PretrainEntry) -> str:
    """What ``pretrained=True`` loads for this entry, in a sentence or two."""
    if entry.published and entry.model is not None:  # the manifest gives every published entry a model
        return (f"pretrained=True downloads the published detector ({entry.model.filename}), verifies it, "
                "converts it and loads it (cached after the first call).")
    if pretrain.file is None:
        return ("No detector was published for this row and its pretrain is random init: pretrained=True "
                "builds the randomly initialised architecture.")
    return (f"No detector was published for this row: pretrained=True builds the model on the converted "
            f"{pretrain.method} backbone ({pretrain.file.filename}); the RPN and ROI heads are randomly "
            "initialised, so fine-tune it on COCO before use (a warning says so when it loads).")


def _docstring(entry: _zoo.DetectorEntry, pretrain: _zoo.PretrainEntry) -> str:
    """The help text of one entry: reported AP, config, pretrain, schedule, weights and an example."""
    epochs = f", {pretrain.epochs} epochs" if pretrain.epochs else ""
    top1 = f", ImageNet linear top-1 {pretrain.imagenet_top1:.1f}%" if pretrain.imagenet_top1 else ""
    note = f"\n    Note: {entry.note}\n" if entry.note else ""
    origin = "from random initialisation" if pretrain.file is None else f"from {pretrain.method} pre-training"
    return f"""Mask R-CNN R50-{entry.detector.upper()} {entry.schedule}, trained on COCO {origin}.

    COCO val2017: box AP {entry.box_ap:.1f}, mask AP {entry.mask_ap:.1f} (as published)
    Config:   {entry.config}
    Pretrain: {pretrain.name} ({pretrain.method}{epochs}{top1})
    Schedule: {entry.schedule}
    Detector weights published: {"yes" if entry.published else "no"}
{note}
    {_weights_note(entry, pretrain)}

    Args:
        pretrained: load the weights described above (True) or build the architecture only (False).
        **kwargs: passed on to ``pycontrast_det.load``: ``weights`` (a local checkpoint to load instead),
            ``device`` ("cpu", "cuda", ...), ``overrides`` (detectron2-style ["KEY", "VALUE", ...]).

    Returns:
        pycontrast_det.modeling.MaskRCNN in eval mode; ``model.predict(image)`` gives boxes, scores,
        labels, label names and masks.

    Example:
        >>> import torch
        >>> model = torch.hub.load({_HERE!r}, {entry.name!r}, source="local", pretrained=True)
        >>> detections = model.predict("image.jpg")  # one image -> one dict; a list -> a list
"""


def _make_entrypoint(entry: _zoo.DetectorEntry, pretrain: _zoo.PretrainEntry) -> Callable[..., MaskRCNN]:
    """A hub function for ``entry`` that loads it lazily through ``pycontrast_det.load``."""
    name = entry.name

    def entrypoint(pretrained: bool = True, **kwargs: Any) -> MaskRCNN:
        import pycontrast_det

        return pycontrast_det.load(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = name
    entrypoint.__qualname__ = name
    entrypoint.__doc__ = _docstring(entry, pretrain)
    return entrypoint


def _register_entrypoints() -> None:
    """One module-level function per detector entry of the manifest."""
    zoo = _zoo.load_manifest()
    for entry in zoo.entries.values():
        globals()[entry.name] = _make_entrypoint(entry, zoo.pretrain(entry.pretrain))


_register_entrypoints()
