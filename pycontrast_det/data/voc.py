"""Pascal VOC (``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``) read as a COCO-format dict.

Class names come from the XML files (sorted, ids 1..K, the same for every split of the folder). VOC boxes are
1-based inclusive pixel corners: ``[xmin - 1, ymin - 1, xmax, ymax]`` in 0-based continuous coordinates (as
detectron2's ``load_voc_instances``). ``difficult`` objects are kept for training (as detectron2) and carry
``"difficult": 1`` so that evaluation ignores them, as VOC's own evaluation does.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from functools import lru_cache
from pathlib import Path

from ..errors import DatasetError


def voc_root(image_set: Path) -> Path:
    """The VOC folder of an ``ImageSets/Main/<split>.txt`` file."""
    return image_set.parent.parent.parent


def voc_categories(root: Path) -> list[tuple[int, str]]:
    """(id, name) of every class named in ``root/Annotations/*.xml``, sorted by name, ids from 1."""
    names = sorted({name for xml in sorted((root / "Annotations").glob("*.xml")) for name in _object_names(xml)})
    if not names:
        raise DatasetError(f"{root / 'Annotations'}: no <object><name> in any XML file; a VOC dataset needs "
                           "annotated objects")
    return [(i + 1, name) for i, name in enumerate(names)]


def voc_to_coco(image_set: Path) -> dict:
    """The images listed in ``image_set`` and their objects, as a COCO-format dict (file names relative to
    ``JPEGImages/``)."""
    root = voc_root(image_set)
    categories = voc_categories(root)
    ids = {name: cid for cid, name in categories}
    images: list[dict] = []
    annotations: list[dict] = []
    stems = [line.split()[0] for line in image_set.read_text().splitlines() if line.strip()]
    for image_id, stem in enumerate(stems, start=1):
        xml = root / "Annotations" / f"{stem}.xml"
        tree = _parse(xml)
        size = tree.find("size")
        try:
            width, height = int(_text(size, "width", xml)), int(_text(size, "height", xml))
        except ValueError:
            raise DatasetError(f"{xml}: <size> width and height must be integers") from None
        name = tree.findtext("filename") or f"{stem}.jpg"
        file_name = f"{stem}.jpg" if (root / "JPEGImages" / f"{stem}.jpg").is_file() else name
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for obj in tree.findall("object"):
            x0, y0, x1, y1 = (_number(obj, key, xml) for key in ("xmin", "ymin", "xmax", "ymax"))
            box = [x0 - 1.0, y0 - 1.0, x1 - x0 + 1.0, y1 - y0 + 1.0]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": ids[_text(obj, "name", xml)], "bbox": box, "iscrowd": 0,
                                "area": box[2] * box[3], "difficult": int(obj.findtext("difficult") or 0)})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": cid, "name": name} for cid, name in categories]}


@lru_cache(maxsize=None)
def _object_names_cached(xml: str, mtime: float) -> tuple[str, ...]:
    return tuple(_text(obj, "name", Path(xml)) for obj in _parse(Path(xml)).findall("object"))


def _object_names(xml: Path) -> tuple[str, ...]:
    return _object_names_cached(str(xml), xml.stat().st_mtime)


def _parse(xml: Path) -> ET.Element:
    try:
        return ET.parse(xml).getroot()
    except FileNotFoundError:
        raise DatasetError(f"{xml}: not found (listed in ImageSets/Main); add it or remove the image from the "
                           "list") from None
    except ET.ParseError as exc:
        raise DatasetError(f"{xml}: not valid XML ({exc})") from None


def _text(node: "ET.Element | None", key: str, xml: Path) -> str:
    value = node.findtext(key) if node is not None else None
    if value is None or not value.strip():
        raise DatasetError(f"{xml}: <{key}> is missing")
    return value.strip()


def _number(obj: ET.Element, key: str, xml: Path) -> float:
    text = _text(obj.find("bndbox"), key, xml)
    try:
        return float(text)
    except ValueError:
        raise DatasetError(f"{xml}: <bndbox><{key}> {text!r} is not a number") from None
