"""COCO-format annotations -> dataset records: contiguous category ids, validated boxes and polygons.

A record is a plain dict, detectron2's "dataset dict" in spirit::

    {"file_name": str (absolute), "height": int, "width": int, "image_id": int,
     "annotations": [{"bbox": [x, y, w, h] (floats, XYWH absolute), "category_id": int (contiguous 0..K-1),
                      "iscrowd": 0 | 1, "segmentation": list of flat polygons | RLE dict (optional)}]}
"""
from __future__ import annotations

import contextlib
import io
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..coco_classes import CategoryMap
from ..errors import DatasetError

if TYPE_CHECKING:
    from .catalog import DatasetSpec


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


def load_coco_api(json_file: Path) -> Any:
    """pycocotools ``COCO`` for ``json_file``, quietly; a missing or unreadable file is a DatasetError."""
    from pycocotools.coco import COCO

    if not Path(json_file).is_file():
        raise DatasetError(f"annotation file not found: {json_file}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(json_file))
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise DatasetError(f"{json_file}: not a valid COCO annotation file ({type(exc).__name__}: {exc})") from None


def load_records(spec: "DatasetSpec", *, filter_empty: bool = False, coco_api: Any = None) -> list[dict]:
    """Every image of ``spec`` as a record (sorted by image id), annotations validated and mapped to contiguous ids.

    ``filter_empty`` drops images without a non-crowd annotation (DATALOADER.FILTER_EMPTY_ANNOTATIONS, for
    training). Polygons with fewer than 3 points are dropped, and an instance left without any valid
    polygon is dropped (detectron2 does the same); anything else malformed is a DatasetError.
    """
    api = coco_api if coco_api is not None else load_coco_api(spec.json_file)
    json_file = spec.json_file
    check_categories(read_categories(api.dataset, json_file), spec.categories, json_file)
    to_contiguous = spec.categories.contiguous_ids
    records, dropped = [], 0
    for image_id in sorted(api.imgs):
        img = api.imgs[image_id]
        for key in ("file_name", "height", "width"):
            if key not in img:
                raise DatasetError(f"{json_file}: image id {image_id} has no {key!r}")
        annotations = []
        for ann in api.imgToAnns.get(image_id, []):
            parsed = _parse_annotation(ann, to_contiguous, json_file)
            if parsed is None:
                dropped += 1
            else:
                annotations.append(parsed)
        if filter_empty and not any(a["iscrowd"] == 0 for a in annotations):
            continue
        records.append({"file_name": str(Path(spec.image_root) / img["file_name"]), "height": int(img["height"]),
                        "width": int(img["width"]), "image_id": image_id, "annotations": annotations})
    if dropped:
        warnings.warn(f"{json_file}: dropped {dropped} instance(s) without a valid polygon (fewer than 3 points)")
    if not records:
        raise DatasetError(f"{json_file}: no usable images" + (" with annotations" if filter_empty else ""))
    return records


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


def _parse_annotation(ann: dict, to_contiguous: dict[int, int], json_file: Path) -> "dict | None":
    where = f"{json_file}: annotation id {ann.get('id')} (image {ann.get('image_id')})"
    bbox = ann.get("bbox")
    if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)):
        raise DatasetError(f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}")
    if bbox[2] < 0 or bbox[3] < 0:
        raise DatasetError(f"{where}: 'bbox' {bbox} has a negative width or height (COCO boxes are [x, y, w, h])")
    category = ann.get("category_id")
    if category not in to_contiguous:
        raise DatasetError(f"{where}: category_id {category!r} is not among the file's categories "
                           f"{sorted(to_contiguous)}")
    iscrowd = ann.get("iscrowd", 0)
    if iscrowd not in (0, 1):
        raise DatasetError(f"{where}: 'iscrowd' must be 0 or 1, got {iscrowd!r}")
    out = {"bbox": [float(v) for v in bbox], "category_id": to_contiguous[category], "iscrowd": int(iscrowd)}
    segm = ann.get("segmentation")
    if segm is None:
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
