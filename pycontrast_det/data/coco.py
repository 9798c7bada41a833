"""COCO-format annotations -> dataset records: contiguous category ids, validated boxes and polygons.

A record is a plain dict, detectron2's "dataset dict" in spirit::

    {"file_name": str (absolute), "height": int, "width": int, "image_id": int,
     "annotations": [{"bbox": [x, y, w, h] (floats, XYWH absolute), "category_id": int (contiguous 0..K-1),
                      "iscrowd": 0 | 1, "segmentation": list of flat polygons | RLE dict (optional)}]}
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..coco_classes import CategoryMap
from ..errors import DatasetError
from .layouts import VOC
from .voc import voc_to_coco

if TYPE_CHECKING:
    from .catalog import DatasetSpec
    from .report import DatasetReport


def read_categories(coco_json: dict, json_file: Path) -> CategoryMap:
    """The ``categories`` of a loaded COCO json, validated (ids unique ints, names strings)."""
    cats = coco_json.get("categories") if isinstance(coco_json, dict) else None
    if not isinstance(cats, list) or not cats:
        raise DatasetError(f"{json_file}: no 'categories' list; a COCO-format annotation file needs one "
                           f"(each {{'id': int, 'name': str}})")
    pairs = []
    for i, cat in enumerate(cats):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(cat.get("name"), str):
            raise DatasetError(f"{json_file}: categories[{i}] = {cat!r} is not {{'id': int, 'name': str}}")
        pairs.append((cat["id"], cat["name"]))
    ids = [cid for cid, _ in pairs]
    if len(set(ids)) != len(ids):
        dup = sorted({cid for cid in ids if ids.count(cid) > 1})
        raise DatasetError(f"{json_file}: duplicate category ids {dup}")
    return CategoryMap.from_pairs(pairs)


def coco_dict(spec: "DatasetSpec") -> dict:
    """The COCO-format dict of ``spec``: its json (or VOC folder read as one), only this side of a held-out split,
    several datasets merged into one class list (file names then absolute)."""
    if spec.parts:
        return _merged(spec)
    if spec.layout == VOC:
        data = voc_to_coco(Path(spec.json_file))
    else:
        try:
            with open(spec.json_file, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise DatasetError(f"annotation file not found: {spec.json_file}") from None
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{spec.json_file}: cannot read as JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images", []), list):
        raise DatasetError(f"{spec.json_file}: not a COCO annotation file (a dict with an 'images' list)")
    return _held_out_side(data, spec) if spec.holdout is not None else data


def held_out_ids(image_ids: Sequence[int], fraction: float, seed: int) -> set[int]:
    """The image ids a held-out split of ``fraction`` keeps (at least one, never all), chosen by ``seed``."""
    ordered = sorted(image_ids)
    if len(ordered) < 2:
        raise DatasetError(f"cannot hold out validation images from {len(ordered)} image(s); give a validation "
                           "set with --val PATH")
    count = min(len(ordered) - 1, max(1, round(fraction * len(ordered))))
    pick = np.random.default_rng([int(seed), _HOLDOUT_STREAM]).permutation(len(ordered))[:count]
    return {ordered[i] for i in pick}


def load_coco_api(spec: "DatasetSpec") -> Any:
    """pycocotools ``COCO`` over :func:`coco_dict`, built quietly; a malformed file is a DatasetError."""
    from pycocotools.coco import COCO

    return build_coco(COCO, coco_dict(spec), spec.json_file)


def build_coco(cls: Any, data: dict, json_file: Path) -> Any:
    """An instance of ``cls`` (pycocotools' or faster-coco-eval's ``COCO``) indexing ``data``."""
    api = cls()
    api.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            api.createIndex()
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise DatasetError(f"{json_file}: not a valid COCO annotation file ({type(exc).__name__}: {exc})") from None
    return api


def ground_truth(spec: "DatasetSpec") -> dict:
    """:func:`coco_dict` ready for COCOeval: ``iscrowd`` defaults to 0 and a missing ``area`` is the mask's (else
    the box's) area, as detectron2 fills them in."""
    from pycocotools import mask as mask_util

    data = dict(coco_dict(spec))
    sizes = {img.get("id"): (img.get("height"), img.get("width")) for img in data.get("images", [])}
    annotations = []
    for ann in data.get("annotations", []):
        ann = {"iscrowd": 0, **ann}
        if "area" not in ann:
            segm, (h, w) = ann.get("segmentation"), sizes.get(ann.get("image_id"), (None, None))
            if segm and h and w:
                rle = mask_util.frPyObjects(segm, h, w) if not isinstance(segm, dict) or isinstance(
                    segm.get("counts"), list) else segm
                ann["area"] = float(mask_util.area(mask_util.merge(rle) if isinstance(rle, list) else rle))
            else:
                ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
        annotations.append(ann)
    data["annotations"] = annotations
    return data


def load_records(spec: "DatasetSpec", *, filter_empty: bool = False, coco_api: Any = None) -> list[dict]:
    """Every image of ``spec`` as a record (sorted by image id), annotations validated and mapped to contiguous ids.

    ``filter_empty`` drops images without a non-crowd annotation (DATALOADER.FILTER_EMPTY_ANNOTATIONS, for
    training). What :func:`scan_dataset` reports is fixed as it says (clipped, skipped); a problem that leaves
    nothing to train on (:meth:`DatasetReport.fatal`) is a DatasetError.
    """
    records, report = scan_dataset(spec, filter_empty=filter_empty, coco_api=coco_api)
    report.check()
    return records


def scan_dataset(spec: "DatasetSpec", *, filter_empty: bool = False,
                 coco_api: Any = None) -> "tuple[list[dict], DatasetReport]":
    """(the records, the :class:`DatasetReport` of what was found and fixed). Polygons with fewer than 3 points are
    dropped, and an instance left without any valid polygon is dropped (detectron2 does the same); anything
    else malformed is a DatasetError."""
    from .report import DatasetReport

    api = coco_api if coco_api is not None else load_coco_api(spec)
    json_file = spec.json_file
    if not spec.parts:
        check_categories(read_categories(api.dataset, json_file), spec.categories, json_file)
    to_contiguous = spec.categories.contiguous_ids
    report = DatasetReport(spec.name, spec.split, spec.where, spec.categories.names, empty_skipped=filter_empty)
    records, dropped = [], 0
    for image_id in sorted(api.imgs):
        img = api.imgs[image_id]
        for key in ("file_name", "height", "width"):
            if key not in img:
                raise DatasetError(f"{json_file}: image id {image_id} has no {key!r}")
        file_name = Path(spec.image_root) / img["file_name"]
        if not file_name.is_file():
            report.add("missing_image", str(file_name))
        annotations = []
        for ann in api.imgToAnns.get(image_id, []):
            parsed = _parse_annotation(ann, to_contiguous, json_file, (int(img["width"]), int(img["height"])),
                                       report)
            if parsed is None:
                dropped += 1
            elif parsed:
                annotations.append(parsed)
        objects = [a for a in annotations if a["iscrowd"] == 0]
        if not objects:
            report.add("empty", f"image {image_id} ({img['file_name']})")
            if filter_empty:
                continue
        report.images += 1
        for a in objects:
            name = spec.categories.names[a["category_id"]]
            report.objects[name] = report.objects.get(name, 0) + 1
            segm = a.get("segmentation")
            kind = "none" if segm is None else "rle" if isinstance(segm, dict) else "polygon"
            report.masks[kind] = report.masks.get(kind, 0) + 1
        records.append({"file_name": str(file_name), "height": int(img["height"]), "width": int(img["width"]),
                        "image_id": image_id, "annotations": annotations})
    if dropped:
        warnings.warn(f"{json_file}: dropped {dropped} instance(s) without a valid polygon (fewer than 3 points)",
                      stacklevel=3)
    return records, report


def check_categories(found: CategoryMap, expected: CategoryMap, json_file: Path) -> None:
    """The annotation file's categories must be the dataset's (same ids, same names)."""
    if found == expected:
        return
    missing = sorted(set(expected.ids) - set(found.ids))
    extra = sorted(set(found.ids) - set(expected.ids))
    renamed = [(cid, a, b) for cid, a, b in zip(found.ids, found.names, expected.names)
               if not missing and not extra and a != b]
    raise DatasetError(f"{json_file}: categories differ from the dataset's ({len(found)} found, {len(expected)} "
                       f"expected; ids missing {missing}, unexpected {extra}"
                       + (f", renamed {renamed[:5]}" if renamed else "") + ")")


def _parse_annotation(ann: dict, to_contiguous: dict[int, int], json_file: Path, size: tuple[int, int],
                      report: "DatasetReport") -> "dict | None":
    """The record's form of ``ann``; ``{}`` for an object the report skips, None for one without a valid polygon."""
    where = f"{json_file}: annotation id {ann.get('id')} (image {ann.get('image_id')})"
    example = f"annotation {ann.get('id')} (image {ann.get('image_id')})"
    bbox = ann.get("bbox")
    if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)):
        raise DatasetError(f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}")
    if bbox[2] < 0 or bbox[3] < 0:
        raise DatasetError(f"{where}: 'bbox' {bbox} has a negative width or height (COCO boxes are [x, y, w, h])")
    iscrowd = ann.get("iscrowd", 0)
    if iscrowd not in (0, 1):
        raise DatasetError(f"{where}: 'iscrowd' must be 0 or 1, got {iscrowd!r}")
    category = ann.get("category_id")
    if category not in to_contiguous:
        report.add("unknown_category", f"{example}: category_id {category!r}")
        return {}
    box = [float(v) for v in bbox]
    if box[0] < 0 or box[1] < 0 or box[0] + box[2] > size[0] or box[1] + box[3] > size[1]:
        report.add("outside", f"{example}: {list(bbox)} in {size[0]}x{size[1]}")
        box = _clipped(box, size)
    if box[2] <= 0 or box[3] <= 0:
        report.add("zero_size", f"{example}: {list(bbox)}")
        return {}
    out = {"bbox": box, "category_id": to_contiguous[category], "iscrowd": int(iscrowd)}
    segm = ann.get("segmentation")
    if segm is None or segm == []:
        return out
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            raise DatasetError(f"{where}: RLE 'segmentation' needs 'counts' and 'size'")
        out["segmentation"] = segm
        return out
    polygons = _valid_polygons(segm, where)
    if not polygons:
        return None if iscrowd == 0 else out
    out["segmentation"] = polygons
    return out


def _clipped(bbox: Sequence[float], size: tuple[int, int]) -> list[float]:
    """An XYWH box clipped to a ``(width, height)`` image."""
    width, height = size
    x0, y0 = min(max(float(bbox[0]), 0.0), width), min(max(float(bbox[1]), 0.0), height)
    x1, y1 = min(max(float(bbox[0] + bbox[2]), 0.0), width), min(max(float(bbox[1] + bbox[3]), 0.0), height)
    return [x0, y0, x1 - x0, y1 - y0]


def _merged(spec: "DatasetSpec") -> dict:
    """Several datasets' dicts as one: categories mapped by name to ``spec``'s, images and objects renumbered."""
    ids = dict(zip(spec.categories.names, spec.categories.ids))
    images: list[dict] = []
    annotations: list[dict] = []
    for part in spec.parts:
        data = coco_dict(part)
        to_merged = {cat["id"]: ids[cat["name"]] for cat in data.get("categories", [])}
        renumber = {}
        for img in data.get("images", []):
            renumber[img.get("id")] = len(images) + 1
            images.append({**img, "id": len(images) + 1, "file_name": str(Path(part.image_root) / img["file_name"])})
        for ann in data.get("annotations", []):
            if ann.get("image_id") in renumber:
                annotations.append({**ann, "id": len(annotations) + 1, "image_id": renumber[ann["image_id"]],
                                    "category_id": to_merged.get(ann.get("category_id"), ann.get("category_id"))})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n} for i, n in zip(spec.categories.ids, spec.categories.names)]}


def _held_out_side(data: dict, spec: "DatasetSpec") -> dict:
    """The images (and their objects) of ``spec``'s side of its held-out split."""
    assert spec.holdout is not None
    held = held_out_ids([img["id"] for img in data["images"]], spec.holdout.fraction, spec.holdout.seed)
    keep = {img["id"] for img in data["images"] if (img["id"] in held) == (spec.split == "val")}
    return {**data, "images": [img for img in data["images"] if img["id"] in keep],
            "annotations": [a for a in data.get("annotations", []) if a.get("image_id") in keep]}


_HOLDOUT_STREAM = 0x686F  # the held-out split's own random stream of the seed


def _valid_polygons(segm: Any, where: str) -> list[list[float]]:
    if not isinstance(segm, list):
        raise DatasetError(f"{where}: 'segmentation' must be a list of polygons or an RLE dict")
    polygons = []
    for poly in segm:
        if not isinstance(poly, (list, tuple)) or not all(isinstance(v, (int, float)) for v in poly):
            raise DatasetError(f"{where}: each polygon must be a flat list of numbers x0, y0, x1, y1, ...")
        if len(poly) % 2:
            raise DatasetError(f"{where}: a polygon has an odd number of coordinates ({len(poly)})")
        if len(poly) >= 6:
            polygons.append([float(v) for v in poly])
    return polygons
