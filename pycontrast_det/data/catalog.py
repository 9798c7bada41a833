"""Dataset names and paths -> :class:`DatasetSpec` (annotation file, image folder, categories).

Accepted forms of ``name_or_path`` (``split`` is ``train`` or ``val`` unless the name fixes it):

* ``shapes``, ``shapes_train``, ``shapes_val``: the built-in synthetic dataset, generated into the cache.
* ``coco``, ``coco_2017_train``, ``coco_2017_val``: COCO 2017 in detectron2's layout under
  ``$DETECTRON2_DATASETS`` (default ``./datasets``): ``coco/{train2017,val2017}/`` and
  ``coco/annotations/instances_{train,val}2017.json``.
* ``path/to/annotations.json`` or ``path/to/annotations.json:path/to/images``: any COCO-format file; the
  images default to the json's own folder.
* a directory in one of the layouts of :mod:`.layouts` (this package's COCO folder, Roboflow, CVAT, Label
  Studio, Pascal VOC).
* any of these followed by ``#holdout=F,seed=S``: its train images split deterministically (by ``S``) into a
  held-out fraction ``F`` (the ``val`` split) and the rest (the ``train`` split), for a dataset without a val split.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from ..errors import DatasetError
from .coco import CategoryMap, read_categories
from .layouts import COCO_JSON, VOC, find_split, has_val
from .voc import voc_categories, voc_root

SPLITS = ("train", "val")
COCO_2017_VAL = "coco_2017_val"
_COCO_NAMES = {"coco_2017_train": "train", COCO_2017_VAL: "val"}
_SHAPES_NAMES = {"shapes_train": "train", "shapes_val": "val"}
_HOLDOUT = "#holdout="
_COCO_HELP = ("download 'train2017'/'val2017' images and 'annotations_trainval2017' from "
              "https://cocodataset.org/#download and unpack them under {root}, or point DETECTRON2_DATASETS "
              "at the folder that contains coco/")


@dataclass(frozen=True)
class Holdout:
    """A deterministic split of one file's images: ``fraction`` of them (at least one) held out as the val split,
    chosen by ``seed``; the train split is the rest."""

    fraction: float
    seed: int

    def suffix(self) -> str:
        """The ``#holdout=F,seed=S`` that names this split after a dataset path."""
        return f"{_HOLDOUT}{self.fraction:g},seed={self.seed}"


@dataclass(frozen=True)
class DatasetSpec:
    """Where one split of a COCO-format dataset lives, and its categories (contiguous order = sorted ids)."""

    name: str
    split: str
    json_file: Path
    image_root: Path
    categories: CategoryMap
    layout: str = COCO_JSON
    holdout: Optional[Holdout] = None  # this split is part of the file's images (see :class:`Holdout`)
    parts: tuple["DatasetSpec", ...] = ()  # several datasets trained on as one (:func:`resolve_datasets`)

    @property
    def where(self) -> str:
        """The layout and the annotation file(s), as the dry run prints them."""
        if self.parts:
            return " + ".join(part.where for part in self.parts)
        held = (f" ({'held-out ' if self.split == 'val' else 'all but the held-out '}"
                f"{self.holdout.fraction:g} of its images, seed {self.holdout.seed})" if self.holdout else "")
        return f"{self.layout} {self.json_file}{held}"

    def shares_images_with(self, other: "DatasetSpec") -> bool:
        """True when both read the same annotation file and neither is one side of a held-out split of it."""
        same = Path(self.json_file).resolve() == Path(other.json_file).resolve()
        return same and (self.holdout is None or other.holdout is None or self.split == other.split)

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
    if _HOLDOUT in text:
        text, _, rule = text.rpartition(_HOLDOUT)
        holdout = _parse_holdout(rule, text)
        spec = resolve_dataset(text, "train")
        split = _check_split(split or "val")
        return DatasetSpec(name=f"{spec.name.removesuffix('_train')}_{split}", split=split,
                           json_file=spec.json_file, image_root=spec.image_root, categories=spec.categories,
                           layout=spec.layout, holdout=holdout)
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


def resolve_datasets(names: Sequence[Union[str, os.PathLike]], split: str = "train") -> DatasetSpec:
    """Several datasets as one (DATASETS.TRAIN with more than one name): one class list, the same names merged.

    A category keeps the id it has in the first dataset that names it; DatasetError when two names want one id.
    """
    specs = [resolve_dataset(name, split) for name in names]
    if not specs:
        raise DatasetError("no dataset given")
    if len(specs) == 1:
        return specs[0]
    merged: dict[str, int] = {}
    for spec in specs:
        for cid, name in zip(spec.category_ids, spec.category_names):
            owner = next((n for n, i in merged.items() if i == cid), None)
            if name in merged:
                continue
            if owner is not None:
                raise DatasetError(f"category id {cid} is {owner!r} in one dataset and {name!r} in {spec.name} "
                                   f"({spec.json_file}); give the two classes different ids (or the same name)")
            merged[name] = cid
    first = specs[0]
    return DatasetSpec(name="+".join(s.name for s in specs), split=first.split, json_file=first.json_file,
                       image_root=first.image_root, layout="several",
                       categories=CategoryMap.from_pairs((i, n) for n, i in merged.items()), parts=tuple(specs))


def has_val_split(name_or_path: Union[str, os.PathLike]) -> bool:
    """Whether a dataset keeps validation images of its own (else hold out part of its train images)."""
    text = os.fspath(name_or_path)
    if text in known_datasets() or _HOLDOUT in text:
        return True
    path = Path(text)
    return path.is_dir() and has_val(path)


def check_num_classes(spec: DatasetSpec, num_classes: int, model: str = "the model") -> None:
    """A model predicting ``num_classes`` classes can only be trained or evaluated on a dataset with as many."""
    if int(num_classes) != spec.num_classes:
        names = ", ".join(spec.category_names[:5]) + (", ..." if spec.num_classes > 5 else "")
        raise DatasetError(f"category mismatch: {model} has MODEL.ROI_HEADS.NUM_CLASSES {num_classes} but dataset "
                           f"{spec.name!r} ({spec.split}) has {spec.num_classes} categories ({names}); "
                           f"use a dataset with the model's classes, or set NUM_CLASSES {spec.num_classes} "
                           f"and train the heads for it")


def _parse_holdout(rule: str, text: str) -> Holdout:
    fraction, _, seed = rule.partition(",seed=")
    try:
        holdout = Holdout(float(fraction), int(seed))
    except ValueError:
        raise DatasetError(f"{text}{_HOLDOUT}{rule}: write the held-out split as PATH#holdout=F,seed=S "
                           "(F between 0 and 1, S an integer)") from None
    if not 0 < holdout.fraction < 1:
        raise DatasetError(f"held-out fraction {fraction} for {text}: use a number between 0 and 1, e.g. 0.1")
    return holdout


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


def _json_spec(json_file: Path, image_root: Path, split: str, name: Optional[str] = None,
               layout: str = COCO_JSON) -> DatasetSpec:
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
                       categories=read_categories(data, json_file), layout=layout)


def _dir_spec(root: Path, split: str) -> DatasetSpec:
    found = find_split(root, split)
    name = f"{root.name}_{split}"
    if found.layout != VOC:
        return _json_spec(found.annotations, found.image_root, split, name=name, layout=found.layout)
    return DatasetSpec(name=name, split=split, json_file=found.annotations, image_root=found.image_root,
                       categories=CategoryMap.from_pairs(voc_categories(voc_root(found.annotations))), layout=VOC)
