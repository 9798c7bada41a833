"""Fine-tuning on the datasets users have: every layout the README lists, box-only and RLE annotations, a sloppy
COCO json; each made here from the embedded shapes data and fine-tuned from the detectron2 FPN fixture
(80 classes) for two iterations on the CPU; the checkpoint then loads without a config, predicts and evaluates
with the dataset's class names."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from pycontrast_det.engine import RunOptions
import pycontrast_det as pcd
from pycontrast_det.cli import main
from pycontrast_det.data import ShapesParams
from pycontrast_det.data.shapes import write_shapes
from pycontrast_det.recipes.finetune import finetune, plan_finetune
from test_finetune import TINY

NAMES = ["circle", "triangle", "square"]
SMALL = ShapesParams(seed=5, num_train=4, num_val=2, max_per_image=2)
RUN = [*TINY, "SOLVER.STEPS", "()", "SOLVER.IMS_PER_BATCH", "2"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """The shapes dataset in this package's COCO folder layout: annotations/instances_{train,val}.json + images."""
    folder = tmp_path_factory.mktemp("shapes") / "shapes"
    write_shapes(folder, SMALL)
    return folder


def _coco(shapes: Path, split: str) -> dict:
    return json.loads((shapes / "annotations" / f"instances_{split}.json").read_text())


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _copy_images(shapes: Path, split: str, dest: Path, prefix: str = "") -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for png in sorted((shapes / split).glob("*.png")):
        shutil.copy(png, dest / f"{prefix}{png.name}")


def _both_splits(shapes: Path) -> dict:
    """train and val in one COCO dict (val's images renamed ``v_*``, ids after train's)."""
    train, val = _coco(shapes, "train"), _coco(shapes, "val")
    offset, ann_offset = len(train["images"]), len(train["annotations"])
    images = [{**img, "file_name": f"t_{img['file_name']}"} for img in train["images"]]
    images += [{**img, "id": img["id"] + offset, "file_name": f"v_{img['file_name']}"} for img in val["images"]]
    anns = train["annotations"] + [{**a, "id": a["id"] + ann_offset, "image_id": a["image_id"] + offset}
                                   for a in val["annotations"]]
    return {"images": images, "annotations": anns, "categories": train["categories"]}


def _uncompressed(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts of a bool mask (column-major runs, starting with zeros)."""
    flat = np.asfortranarray(mask).reshape(-1, order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], changes])).tolist()


def make_boxes_only(shapes: Path, root: Path) -> Path:
    for split in ("train", "val"):
        data = _coco(shapes, split)
        for ann in data["annotations"]:
            del ann["segmentation"]
        _write(root / "annotations" / f"instances_{split}.json", data)
        _copy_images(shapes, split, root / split)
    return root


def make_rle(shapes: Path, root: Path) -> Path:
    """Polygons as RLE: compressed (counts a string) and uncompressed (counts a list), and a crowd region."""
    for split in ("train", "val"):
        data = _coco(shapes, split)
        sizes = {img["id"]: (img["height"], img["width"]) for img in data["images"]}
        for ann in data["annotations"]:
            h, w = sizes[ann["image_id"]]
            rle = mask_util.merge(mask_util.frPyObjects(ann["segmentation"], h, w))
            if ann["id"] % 2:
                ann["segmentation"] = {"size": [h, w], "counts": rle["counts"].decode()}
            else:
                ann["segmentation"] = {"size": [h, w], "counts": _uncompressed(mask_util.decode(rle).astype(bool))}
        h, w = sizes[1]
        crowd = np.zeros((h, w), dtype=bool)
        crowd[:6, :6] = True
        data["annotations"].append({"id": 999, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 36,
                                    "bbox": [0, 0, 6, 6], "segmentation": {"size": [h, w],
                                                                           "counts": _uncompressed(crowd)}})
        _write(root / "annotations" / f"instances_{split}.json", data)
        _copy_images(shapes, split, root / split)
    return root


def make_roboflow(shapes: Path, root: Path) -> Path:
    for split, folder in (("train", "train"), ("val", "valid")):
        _write(root / folder / "_annotations.coco.json", _coco(shapes, split))
        _copy_images(shapes, split, root / folder)
    return root


def make_cvat(shapes: Path, root: Path) -> Path:
    _write(root / "annotations" / "instances_default.json", _both_splits(shapes))
    _copy_images(shapes, "train", root / "images", "t_")
    _copy_images(shapes, "val", root / "images", "v_")
    return root


def make_label_studio(shapes: Path, root: Path) -> Path:
    """Label Studio: categories numbered from 0, file names ``images/...``."""
    data = _both_splits(shapes)
    data["categories"] = [{"id": c["id"] - 1, "name": c["name"]} for c in data["categories"]]
    for ann in data["annotations"]:
        ann["category_id"] -= 1
    for img in data["images"]:
        img["file_name"] = f"images/{img['file_name']}"
    _write(root / "result.json", data)
    _copy_images(shapes, "train", root / "images", "t_")
    _copy_images(shapes, "val", root / "images", "v_")
    return root


def make_voc(shapes: Path, root: Path) -> Path:
    """Pascal VOC: 1-based inclusive corners, JPEG images, the first val object ``difficult``."""
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for split in ("train", "val"):
        data = _coco(shapes, split)
        stems = []
        for img in data["images"]:
            stem = f"{split}_{img['id']:03d}"
            stems.append(stem)
            Image.open(shapes / split / img["file_name"]).convert("RGB").save(root / "JPEGImages" / f"{stem}.jpg",
                                                                            quality=95)
            node = ET.Element("annotation")
            ET.SubElement(node, "filename").text = f"{stem}.jpg"
            size = ET.SubElement(node, "size")
            ET.SubElement(size, "width").text, ET.SubElement(size, "height").text = str(img["width"]), str(
                img["height"])
            for ann in (a for a in data["annotations"] if a["image_id"] == img["id"]):
                obj = ET.SubElement(node, "object")
                ET.SubElement(obj, "name").text = NAMES[ann["category_id"] - 1]
                ET.SubElement(obj, "difficult").text = "1" if split == "val" and ann["id"] == 1 else "0"
                x, y, w, h = ann["bbox"]
                box = ET.SubElement(obj, "bndbox")
                for key, value in zip(("xmin", "ymin", "xmax", "ymax"), (x + 1, y + 1, x + w, y + h)):
                    ET.SubElement(box, key).text = str(round(value))
            ET.ElementTree(node).write(root / "Annotations" / f"{stem}.xml")
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return root


def make_sloppy(shapes: Path, root: Path) -> Path:
    """One json beside no images (given as ``labels.json:pics``): no iscrowd or area, a zero-size box, a box
    running out of the image, an unknown category id, an image without objects."""
    data = _both_splits(shapes)
    for ann in data["annotations"]:
        del ann["iscrowd"], ann["area"]
    first = data["annotations"][0]
    data["annotations"] += [
        {"id": 900, "image_id": first["image_id"], "category_id": 2, "bbox": [10, 10, 0, 7],
         "segmentation": [[10, 10, 10, 17, 10, 12]]},
        {"id": 901, "image_id": first["image_id"], "category_id": 77, "bbox": [5, 5, 9, 9],
         "segmentation": [[5, 5, 14, 5, 14, 14]]}]
    first["bbox"] = [first["bbox"][0], first["bbox"][1], 500.0, first["bbox"][3]]
    blank = {**data["images"][0], "id": 50, "file_name": "blank.png"}
    data["images"].append(blank)
    _write(root / "labels.json", data)
    _copy_images(shapes, "train", root / "pics", "t_")
    _copy_images(shapes, "val", root / "pics", "v_")
    Image.new("RGB", (blank["width"], blank["height"]), (40, 40, 40)).save(root / "pics" / "blank.png")
    return root


MAKERS = {"boxes": make_boxes_only, "rle": make_rle, "roboflow": make_roboflow, "cvat": make_cvat,
          "label-studio": make_label_studio, "voc": make_voc, "sloppy": make_sloppy}
LAYOUT_FOUND = {"boxes": "coco", "rle": "coco", "roboflow": "roboflow", "cvat": "cvat",
                "label-studio": "label-studio", "voc": "voc", "sloppy": "coco json"}


def dataset_arg(kind: str, root: Path) -> str:
    return f"{root / 'labels.json'}:{root / 'pics'}" if kind == "sloppy" else str(root)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shapes, d2_fixtures):
    """One two-iteration fine-tune per layout, made on first use."""
    done: dict[str, tuple] = {}

    def run(kind: str) -> tuple:
        if kind not in done:
            kinds = kind.split("+")  # several datasets trained on as one
            roots = [MAKERS[k](shapes, tmp_path_factory.mktemp(k) / k) for k in kinds]
            root = roots[0]
            out = tmp_path_factory.mktemp(f"run-{kind}")
            plan = plan_finetune(d2_fixtures / "fpn" / "weights_fp16.pth",
                                 [dataset_arg(k, r) for k, r in zip(kinds, roots)], schedule="2",
                                 options=RunOptions(output_dir=out), overrides=RUN)
            printed = io.StringIO()
            result = finetune(plan, log_period=1, stream=printed)
            done[kind] = (root, plan, result, printed.getvalue(), (out / "log.txt").read_text())
        return done[kind]

    return run


@pytest.mark.parametrize("kind", list(MAKERS))
def test_finetune_on_each_layout(kind, runs, tmp_path):
    root, plan, result, printed, log = runs(kind)
    box_only = kind in ("boxes", "voc")  # VOC has boxes only
    for spec in (plan.data.train, plan.data.val):  # the plan (as the dry run) names the layout and each split's file
        assert spec.layout == LAYOUT_FOUND[kind]
        assert f"{spec.split} {spec.name}: {spec.layout} {spec.json_file}" in printed
    cfg = plan.cfg()
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3 and cfg.MODEL.MASK_ON is (not box_only)
    assert cfg.INPUT.MASK_FORMAT == ("bitmask" if kind == "rle" else "polygon")
    if box_only:  # the source's mask head is dropped, and said so
        assert "the file's 24 mask-head weights are not loaded" in log
    assert result.evaluation.num_images == plan.data.reports[1].images  # the val split (held out where none)
    # metrics name the classes; box-only: no mask AP
    assert {f"AP-{n}" for n in NAMES} <= set(result.metrics["bbox"])
    assert ("segm" in result.metrics) is (not box_only)
    # the checkpoint alone: config beside it, classes inside it
    model = pcd.load(plan.output_dir / "model_final.pth")
    assert model.class_names == (sorted(NAMES) if kind == "voc" else NAMES)  # VOC: the XMLs' names, sorted
    image = next(p for p in sorted(root.rglob("*")) if p.suffix in (".png", ".jpg"))
    found = model.predict(image, score_thresh=0.0)
    assert len(found["label_names"]) > 0 and set(found["label_names"]) <= set(NAMES)
    assert ("masks" in found) is (not box_only)
    if kind == "boxes":  # the command line: boxes, the dataset's own category ids, no masks
        assert main(["predict", str(plan.output_dir / "model_final.pth"), str(image), "--out", str(tmp_path),
                     "--score-thresh", "0.0", "--device", "cpu"]) == 0
        records = json.loads((tmp_path / "results.json").read_text())
        assert records and {r["category_id"] for r in records} <= {1, 2, 3}
        assert not any("segmentation" in r for r in records)


@pytest.mark.parametrize("format", ["onnx", "torchscript"])
def test_a_box_only_run_exports_without_masks(format, runs, tmp_path):
    from pycontrast_det.export import export, load_exported

    root, plan, _, _, _ = runs("boxes")
    model = pcd.load(plan.output_dir / "model_final.pth", overrides=["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    exported = load_exported(export(model, tmp_path / f"boxes.{format}", format=format))
    assert exported.metadata.outputs == ["boxes", "scores", "labels"] and exported.class_names == NAMES
    image = root / "val" / "000000.png"
    found, direct = exported.predict(image), model.predict(image)
    assert "masks" not in found and "masks" not in direct and len(found["boxes"]) == len(direct["boxes"]) > 0
    assert found["label_names"] == direct["label_names"]


def test_several_datasets_train_as_one(runs):
    """Roboflow's export (ids 1-3) and Label Studio's (ids 0-2, the same names): one class list, merged by name."""
    root, plan, result, printed, _ = runs("roboflow+label-studio")
    assert len(plan.cfg().DATASETS.TRAIN) == 2 and plan.data.train.category_ids == (1, 2, 3)
    assert plan.data.reports[0].images == 4 + 6  # roboflow's train split, all of label studio's images
    assert plan.data.val.layout == "roboflow" and {f"AP-{n}" for n in NAMES} <= set(result.metrics["bbox"])
    assert pcd.load(plan.output_dir / "model_final.pth").class_names == NAMES
