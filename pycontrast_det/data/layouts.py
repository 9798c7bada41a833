"""Dataset folders -> where each split's annotations and images are: the layouts annotation tools export.

Tried in this order on the folder given (``S`` = the split, ``train`` or ``val``):

* ``coco``: this package's COCO folder, ``annotations/instances_S.json`` (or ``instances_S2017.json``) + ``S/``
  (or ``S2017/``);
* ``roboflow``: Roboflow's COCO export, ``train/``, ``valid/``, ``test/`` each with ``_annotations.coco.json``
  and the images beside it (``val`` is ``valid/``);
* ``cvat``: CVAT's COCO 1.0 export, ``annotations/instances_<name>.json`` + ``images/`` (one file: it is also
  the ``val`` split, as a json given directly is; :func:`has_val` is False);
* ``label-studio``: Label Studio's COCO export, ``result.json`` + ``images/`` (its file names start with
  ``images/``: then they are relative to the folder itself);
* ``voc``: Pascal VOC, ``Annotations/*.xml`` + ``JPEGImages/`` + ``ImageSets/Main/S.txt``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import DatasetError

COCO_JSON, VOC = "coco json", "voc"  # the layout of a json given directly; the one layout that is not json
SINGLE_FILE = ("cvat", "label-studio")  # exports of one file: it is the val split too, as a json given directly


@dataclass(frozen=True)
class SplitFiles:
    """One split as a layout keeps it: the annotation file (for VOC the ImageSets list) and the image folder."""

    layout: str
    annotations: Path
    image_root: Path


def find_split(root: Path, split: str) -> SplitFiles:
    """The ``split`` of the dataset folder ``root``; DatasetError naming what was looked for when no layout fits."""
    found = split_files(root, split)
    if found is not None:
        return found
    train = split_files(root, "train") if split == "val" else None
    if train is not None and train.layout in SINGLE_FILE:  # as a json given directly: its one file serves both
        return train
    if train is not None:
        raise DatasetError(f"{root}: no val annotations in a known layout (it has a train split only: looked "
                           f"for {', '.join(_names(root, 'val'))}); give a validation set with --val PATH or hold out "
                           "part of the train images")
    raise DatasetError(f"{root}: no {split} annotations in a known layout (looked for "
                       f"{', '.join(_names(root, split))})")


def has_val(root: Path) -> bool:
    """Whether the folder ``root`` keeps a val split of its own."""
    return split_files(root, "val") is not None


def split_files(root: Path, split: str) -> Optional[SplitFiles]:
    """The first layout that has ``split`` under ``root``, or None."""
    for layout, path, image_root in _candidates(root, split):
        if path.is_file():
            if layout == "label-studio" and _names_start_with_images(path):
                image_root = root
            return SplitFiles(layout, path, image_root)
    return None


def _names_start_with_images(json_file: Path) -> bool:
    """Whether the first image's ``file_name`` in ``json_file`` starts with ``images/`` (Label Studio's exports)."""
    try:
        images = json.loads(json_file.read_text(encoding="utf-8")).get("images") or [{}]
    except (OSError, ValueError, AttributeError):
        return False  # reported with its reason when the file is read as the dataset's
    return str(images[0].get("file_name", "")).replace("\\", "/").startswith("images/")


def _candidates(root: Path, split: str) -> list[tuple[str, Path, Path]]:
    folder = "valid" if split == "val" else split
    out = [("coco", root / "annotations" / f"instances_{split}.json", root / split),
           ("coco", root / "annotations" / f"instances_{split}2017.json", root / f"{split}2017"),
           ("roboflow", root / folder / "_annotations.coco.json", root / folder)]
    if split == "train":  # single-file exports: all their images are the train split
        cvat = sorted((root / "annotations").glob("instances_*.json")) if (root / "images").is_dir() else []
        out += [("cvat", cvat[0] if len(cvat) == 1 else root / "annotations" / "instances_default.json",
                 root / "images"),
                ("label-studio", root / "result.json", root / "images")]
    if (root / "Annotations").is_dir():
        out.append((VOC, root / "ImageSets" / "Main" / f"{split}.txt", root / "JPEGImages"))
    return out


def _names(root: Path, split: str) -> list[str]:
    return [str(path.relative_to(root)) for _, path, _ in _candidates(root, split)]
