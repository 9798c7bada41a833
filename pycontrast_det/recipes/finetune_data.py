"""The dataset side of a fine-tuning plan: which files train and which validate, the classes, box-only or mask
training, and the dataset report, all decided (and checked) before anything is written."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

from ..config import override_value
from ..errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from ..config import CfgNode
    from ..data import DatasetSpec
    from ..data.report import DatasetReport

DEFAULT_HOLDOUT = 0.1  # the fraction of a dataset's train images held out when it has no val split
_NUM_CLASSES, _MASK_ON, _MASK_FORMAT = "MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.MASK_ON", "INPUT.MASK_FORMAT"
PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class DataChoice:
    """What a fine-tuning run trains and validates on, and the overrides and notes that follow from the data."""

    train_names: tuple[str, ...]  # DATASETS.TRAIN
    test_name: str                # DATASETS.TEST
    train: "DatasetSpec"
    val: "DatasetSpec"
    reports: tuple["DatasetReport", ...]
    overrides: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def images(self) -> int:
        """Training images (after images without objects are left out)."""
        return self.reports[0].images

    def lines(self) -> list[str]:
        """The dataset part of the plan: each split's layout and file, then its report."""
        return [line for report in self.reports for line in report.lines()]


def absolute_name(dataset: PathLike) -> str:
    """A dataset path made absolute (the printed commands work from any folder); a built-in name as it is."""
    return str(Path(dataset).resolve()) if Path(dataset).exists() else os.fspath(dataset)


def choose_data(datasets: Sequence[PathLike], base: "CfgNode", overrides: Sequence[str], *,
                val: Optional[PathLike] = None, holdout: Optional[float] = None) -> DataChoice:
    """The datasets of a run (see :class:`DataChoice`): the val split is ``val``, else the first dataset's own, else
    a ``holdout`` fraction (default :data:`DEFAULT_HOLDOUT`) of its train images chosen by SEED (0 when SEED is
    random); ``base`` is the config with the user's overrides, ``overrides`` the user's own."""
    from ..data import has_val_split, resolve_dataset, resolve_datasets
    from ..data.catalog import Holdout
    from ..data.coco import coco_dict, scan_dataset

    if not datasets:
        raise ConfigError("no dataset given; name one with --dataset")
    names = [absolute_name(d) for d in datasets]
    notes = []
    if val is not None:
        if holdout is not None:
            raise ConfigError(f"--val {val} and --holdout {holdout} both choose the validation images; give one")
        test_name = absolute_name(val)
        val_spec = resolve_dataset(test_name, split="val")
    elif has_val_split(names[0]):
        test_name = names[0]
        val_spec = resolve_dataset(test_name, split="val")
    elif holdout is None and len(coco_dict(resolve_dataset(names[0], split="train")).get("images", [])) < 2:
        test_name = names[0]  # nothing to hold out: validated on its one image, as the note below says
        val_spec = resolve_dataset(test_name, split="train")
    else:
        seed = max(int(base.SEED), 0)
        rule = Holdout(DEFAULT_HOLDOUT if holdout is None else float(holdout), seed)
        names[0] = test_name = names[0] + rule.suffix()
        val_spec = resolve_dataset(test_name, split="val")
        notes.append(f"validation: {rule.fraction:g} of the images of {val_spec.json_file} held out (no val split), "
                     f"chosen by seed {seed} (SEED {base.SEED}); --holdout F changes the fraction, --val PATH "
                     "names a validation set")
    if holdout is not None and val_spec.holdout is None:
        raise ConfigError(f"--holdout {holdout}: {names[0]} has a val split of its own; drop --holdout (or give "
                          "--val PATH)")
    train = resolve_datasets(names, split="train")
    train_report = scan_dataset(train, filter_empty=bool(base.DATALOADER.FILTER_EMPTY_ANNOTATIONS))[1]
    val_report = scan_dataset(val_spec)[1]
    for report in (train_report, val_report):
        report.check()
    if val_spec.shares_images_with(train) or any(val_spec.shares_images_with(p) for p in train.parts):
        notes.append(f"validation on {val_spec.json_file}, the images the model trains on (AP on them overstates "
                     "the model); give --val PATH (a single image cannot be split)")
    ours, mask_notes = _mask_overrides(train_report, overrides)
    classes, class_note = class_overrides(train, overrides)
    return DataChoice(train_names=tuple(names), test_name=test_name, train=train, val=val_spec,
                      reports=(train_report, val_report), overrides=(*classes, *ours),
                      notes=(class_note, *notes, *mask_notes))


def class_overrides(spec: "DatasetSpec", overrides: Sequence[str]) -> tuple[list[str], str]:
    """(the NUM_CLASSES override ``spec`` implies, the sentence for the log); ConfigError when ``overrides`` set
    another number of classes."""
    given = override_value(overrides, _NUM_CLASSES)
    if given is not None and int(given) != spec.num_classes:
        raise ConfigError(f"{_NUM_CLASSES} {given} conflicts with the {spec.num_classes} categories of {spec.name} "
                          f"({', '.join(spec.category_names)}); drop it: the dataset sets the number of classes")
    note = (f"{_NUM_CLASSES} {spec.num_classes}: the categories of {spec.name} "
            f"({', '.join(f'{n} (id {i})' for n, i in zip(spec.category_names, spec.category_ids))})")
    return [_NUM_CLASSES, str(spec.num_classes)], note


def _mask_overrides(report: "DatasetReport", overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """MODEL.MASK_ON False for a box-only dataset, INPUT.MASK_FORMAT bitmask for one with RLE masks; a dataset where
    only some objects have masks is a DatasetError unless the user chose MODEL.MASK_ON."""
    with_masks = report.masks.get("polygon", 0) + report.masks.get("rle", 0)
    without = report.masks.get("none", 0)
    mask_on = override_value(overrides, _MASK_ON)
    if mask_on is not None and str(mask_on).lower() in ("false", "0"):
        return [], [f"{_MASK_ON} False (given): boxes only"]
    if not with_masks:
        return [_MASK_ON, "False"], [f"{_MASK_ON} False: {report.name} has boxes only (no segmentation), so the run is "
                                     "a Faster R-CNN; a source's mask head is not loaded"]
    if without:
        raise DatasetError(f"{report.name}: {with_masks} of {with_masks + without} objects have masks and {without} "
                           f"have none; give every object a mask, or train boxes only with {_MASK_ON} False")
    if report.masks.get("rle", 0) and override_value(overrides, _MASK_FORMAT) is None:
        return [_MASK_FORMAT, "bitmask"], [f"{_MASK_FORMAT} bitmask: {report.name} has RLE masks "
                                           f"({report.masks['rle']} of {with_masks} objects)"]
    return [], []
