"""Dataset names and paths -> :class:`DatasetSpec` (annotation file, image folder, categories).

Accepted forms of ``name_or_path`` (``split`` is ``train`` or ``val`` unless the name fixes it):

* ``shapes``, ``shapes_train``, ``shapes_val``: the built-in synthetic dataset, generated into the cache.
* ``coco``, ``coco_2017_train``, ``coco_2017_val``: COCO 2017 in detectron2's layout under
  ``$DETECTRON2_DATASETS`` (default ``./datasets``): ``coco/{train2017,val2017}/`` and
  ``coco/annotations/instances_{train,val}2017.json``.
* ``path/to/annotations.json`` or ``path/to/annotations.json:path/to/images``: any COCO-format file; the
  images default to the json's own folder.
* a directory in one of these layouts (tried in this order, ``S`` = split):
  ``annotations/instances_S.json`` + ``S/``; ``annotations/instances_S2017.json`` + ``S2017/``;
  ``S/_annotations.coco.json`` with the images beside it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ..errors import DatasetError
from .coco import CategoryMap, read_categories

SPLITS = ("train", "val")
COCO_2017_VAL = "coco_2017_val"
_COCO_NAMES = {"coco_2017_train": "train", COCO_2017_VAL: "val"}
_SHAPES_NAMES = {"shapes_train": "train", "shapes_val": "val"}
_COCO_HELP = ("download 'train2017'/'val2017' images and 'annotations_trainval2017' from "
              "https://cocodataset.org/#download and unpack them under {root}, or point DETECTRON2_DATASETS "
              "at the folder that contains coco/")


@dataclass(frozen=True)
class DatasetSpec:
    """Where one split of a COCO-format dataset lives, and its categories (contiguous order = sorted ids)."""

    name: str
    split: str
    json_file: Path
    image_root: Path
    categories: CategoryMap

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def category_ids(self) -> tuple[int, ...]:
        return self.categories.ids

    @property
    def category_names(self) -> tuple[str, ...]:
        return self.categories.names

    @property
    def is_coco_val2017(self) -> bool:
        """True only for COCO val2017, the split every published number was measured on."""
        return self.name == COCO_2017_VAL


def known_datasets() -> list[str]:
    """The built-in dataset names."""
    return ["shapes", *_SHAPES_NAMES, "coco", *_COCO_NAMES]


def resolve_dataset(name_or_path: Union[str, os.PathLike], split: Optional[str] = None) -> DatasetSpec:
    """A dataset name or path (see the module docstring) -> its :class:`DatasetSpec`; DatasetError if unusable."""
    text = os.fspath(name_or_path)
    if text in _SHAPES_NAMES or text in _COCO_NAMES:
        fixed = {**_SHAPES_NAMES, **_COCO_NAMES}[text]
        if split not in (None, fixed):
            raise DatasetError(f"dataset {text!r} is the {fixed} split; drop split={split!r} or use the base name")
        split = fixed
    split = _check_split(split or "val")
    if text == "shapes" or text in _SHAPES_NAMES:
        return _shapes_spec(split)
    if text in ("coco", "coco_2017") or text in _COCO_NAMES:
        return _coco_spec(split)
    json_part, _, root_part = text.partition(".json:")
    if root_part:
        return _json_spec(Path(json_part + ".json"), Path(root_part), split)
    path = Path(text)
    if path.suffix == ".json":
        return _json_spec(path, path.parent, split)
    if path.is_dir():
        return _dir_spec(path, split)
    raise DatasetError(f"unknown dataset {text!r}: not a built-in name ({', '.join(known_datasets())}), "
                       f"an existing COCO json (path.json[:image_root]) or a dataset directory")


def check_num_classes(spec: DatasetSpec, num_classes: int, model: str = "the model") -> None:
    """A model predicting ``num_classes`` classes can only be trained or evaluated on a dataset with as many."""
    if int(num_classes) != spec.num_classes:
        names = ", ".join(spec.category_names[:5]) + (", ..." if spec.num_classes > 5 else "")
        raise DatasetError(f"category mismatch: {model} has MODEL.ROI_HEADS.NUM_CLASSES {num_classes} but dataset "
                           f"{spec.name!r} ({spec.split}) has {spec.num_classes} categories ({names}); "
                           f"use a dataset with the model's classes, or set NUM_CLASSES {spec.num_classes} "
                           f"and train the heads for it")


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return split


def _shapes_spec(split: str) -> DatasetSpec:
    from .shapes import SHAPES_CATEGORIES, shapes_root

    root = shapes_root()
    return DatasetSpec(name=f"shapes_{split}", split=split, json_file=root / "annotations" / f"instances_{split}.json",
                       image_root=root / split, categories=CategoryMap.from_pairs(SHAPES_CATEGORIES))


def _coco_spec(split: str) -> DatasetSpec:
    from ..coco_classes import COCO_CATEGORIES

    root = Path(os.environ.get("DETECTRON2_DATASETS", "datasets")).expanduser() / "coco"
    json_file = root / "annotations" / f"instances_{split}2017.json"
    image_root = root / f"{split}2017"
    for path in (json_file, image_root):
        if not path.exists():
            raise DatasetError(f"COCO 2017 {split} not found: {path} does not exist; "
                               + _COCO_HELP.format(root=root))
    return DatasetSpec(name=f"coco_2017_{split}", split=split, json_file=json_file, image_root=image_root,
                       categories=CategoryMap.from_pairs(COCO_CATEGORIES))


def _json_spec(json_file: Path, image_root: Path, split: str, name: Optional[str] = None) -> DatasetSpec:
    if not json_file.is_file():
        raise DatasetError(f"annotation file not found: {json_file}")
    if not image_root.is_dir():
        raise DatasetError(f"image folder not found: {image_root} (for {json_file}); give it as "
                           f"{json_file}:path/to/images")
    try:
        with open(json_file) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{json_file}: cannot read as JSON ({exc})") from None
    return DatasetSpec(name=name or json_file.stem, split=split, json_file=json_file, image_root=image_root,
                       categories=read_categories(data, json_file))


def _dir_spec(root: Path, split: str) -> DatasetSpec:
    layouts = [(root / "annotations" / f"instances_{split}.json", root / split),
               (root / "annotations" / f"instances_{split}2017.json", root / f"{split}2017"),
               (root / split / "_annotations.coco.json", root / split)]
    for json_file, image_root in layouts:
        if json_file.is_file():
            return _json_spec(json_file, image_root, split, name=f"{root.name}_{split}")
    tried = ", ".join(str(j.relative_to(root)) for j, _ in layouts)
    raise DatasetError(f"{root}: no {split} annotations in a known layout (looked for {tried})")
