"""``pycontrast-zoo predict``: annotated PNGs and COCO results from detectron2's reference FPN weights."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

import pycontrast_det as pcd
from pycontrast_det.cli import main
from pycontrast_det.cli.predict_cmd import RESULTS_FILE, assign_image_ids
from pycontrast_det.coco_classes import COCO_CATEGORIES

IMAGES = ("shapes_0000", "shapes_0001", "chelsea")
DRAW_THRESH = 0.5


@pytest.fixture(scope="module")
def fpn_run(tmp_path_factory, d2_fixtures):
    """One CLI run on three fixture images in batches of two, and the same model's own predictions."""
    out = tmp_path_factory.mktemp("predict-out")
    fpn = d2_fixtures / "fpn"
    images = [d2_fixtures / "images" / f"{name}.png" for name in IMAGES]
    code = main(["predict", *map(str, images), "--weights", str(fpn / "weights_fp16.pth"),  # no ENTRY needed
                 "--config", str(fpn / "config.yaml"), "--out", str(out), "--device", "cpu", "--batch-size", "2",
                 "--draw-thresh", str(DRAW_THRESH)])
    assert code == 0
    model = pcd.load(str(fpn / "config.yaml"), weights=str(fpn / "weights_fp16.pth"), device="cpu")
    expected = model.predict([str(p) for p in images], batch_size=2)  # the CLI's batches: 2 + 1
    return out, images, expected


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


def test_pngs_have_the_image_size_and_change_only_around_drawn_detections(fpn_run):
    out, images, expected = fpn_run
    drawn_any = 0
    for path, pred in zip(images, expected):
        png = out / f"{path.stem}.png"
        original, annotated = _rgb(path), _rgb(png)
        assert annotated.shape == original.shape, png
        changed = np.abs(annotated - original).sum(axis=2) > 0
        keep = pred["scores"] >= DRAW_THRESH
        region = np.zeros_like(changed)
        for x0, y0, x1, y1 in pred["boxes"][keep].tolist():
            drawn_any += 1
            inside = changed[int(y0) + 3:int(y1) - 2, int(x0) + 3:int(x1) - 2]
            assert inside.any(), f"{png}: nothing drawn inside box {(x0, y0, x1, y1)}"
            # box outline, its tag (drawn above the box, or inside at the top) and nothing else
            region[max(0, int(y0) - 20):int(y1) + 3, max(0, int(x0) - 3):int(x1) + 120] = True
        assert not changed[~region].any(), f"{png}: pixels changed away from every drawn detection"
    assert drawn_any >= 2, "the fixture model should detect shapes above the drawing threshold"


def test_results_are_valid_coco_and_equal_the_models_predictions(fpn_run):
    out, images, expected = fpn_run
    results = json.loads((out / RESULTS_FILE).read_text())
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i + 1, "file_name": p.name, "height": _rgb(p).shape[0], "width": _rgb(p).shape[1]}
                   for i, p in enumerate(images)],
        "annotations": [],
        "categories": [{"id": cid, "name": name} for cid, name in COCO_CATEGORIES],
    }
    gt.createIndex()
    loaded = gt.loadRes(results)
    assert len(loaded.getAnnIds()) == len(results) == sum(len(p["scores"]) for p in expected) > 0

    coco_id = [cid for cid, _ in COCO_CATEGORIES]
    for index, (path, pred) in enumerate(zip(images, expected)):
        mine = [r for r in results if r["image_id"] == index + 1]
        assert all(r["file_name"] == path.name for r in mine)
        assert len(mine) == len(pred["scores"])
        boxes = np.array([r["bbox"] for r in mine]).reshape(-1, 4)
        xyxy = pred["boxes"].numpy()
        np.testing.assert_allclose(boxes, np.c_[xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], rtol=1e-6, atol=1e-4)
        np.testing.assert_array_equal(np.float32([r["score"] for r in mine]), pred["scores"].numpy())
        assert [r["category_id"] for r in mine] == [coco_id[i] for i in pred["labels"].tolist()]
        for record, mask in zip(mine, pred["masks"]):
            decoded = mask_utils.decode(record["segmentation"]).astype(bool)
            np.testing.assert_array_equal(decoded, mask.numpy())


def test_config_as_entry_with_weights_and_a_score_threshold(tmp_path, d2_fixtures):
    """ENTRY may be a config when --weights is given; --score-thresh keeps detectron2's detections above it."""
    fpn = d2_fixtures / "fpn"
    image = d2_fixtures / "images" / "shapes_0003.png"
    code = main(["predict", str(fpn / "config.yaml"), str(image), "--weights", str(fpn / "weights_fp16.pth"),
                 "--out", str(tmp_path), "--device", "cpu", "--score-thresh", "0.7"])
    assert code == 0
    results = json.loads((tmp_path / RESULTS_FILE).read_text())
    reference = np.load(fpn / "expected_320.npz")
    keep = reference["shapes_0003.scores"] >= 0.7
    assert len(results) == int(keep.sum()) >= 3
    np.testing.assert_allclose([r["score"] for r in results], reference["shapes_0003.scores"][keep], atol=1e-3)
    xyxy = reference["shapes_0003.boxes"][keep].astype(np.float64)
    np.testing.assert_allclose([r["bbox"] for r in results], np.c_[xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]],
                               atol=0.05)
    assert (tmp_path / "shapes_0003.png").is_file()


def test_missing_image_is_a_clear_error(tmp_path, capsys):
    code = main(["predict", "mask_rcnn_fpn_1x_infomin", str(tmp_path / "nope.jpg"), "--out", str(tmp_path)])
    assert code == 2
    assert "nope.jpg" in capsys.readouterr().err
    assert not (tmp_path / RESULTS_FILE).exists()


def test_image_ids_follow_coco_file_names_when_numeric():
    assert assign_image_ids([Path("000000397133.jpg"), Path("a/000000000139.png")]) == [397133, 139]
    assert assign_image_ids([Path("cat.jpg"), Path("000000000139.png")]) == [1, 2]
    assert assign_image_ids([Path("1.jpg"), Path("x/01.jpg")]) == [1, 2]  # same id twice: positions instead


def test_draw_blends_masks_at_alpha_and_touches_nothing_else():
    assert pcd.draw.__module__ == "pycontrast_det.visualize"
    from pycontrast_det.visualize import class_color

    assert len({class_color(i) for i in range(80)}) == 80  # one colour per COCO class, same every call
    image = np.full((60, 80, 3), 100, np.uint8)
    mask = np.zeros((2, 60, 80), bool)
    mask[0, 30:50, 40:70] = True
    mask[1, 0:10, 0:10] = True
    prediction = {"boxes": [[35.0, 25.0, 75.0, 55.0], [0.0, 0.0, 10.0, 10.0]], "labels": [7, 3],
                  "scores": [0.875, 0.25], "masks": mask, "label_names": ["train", "car"]}
    drawn = np.asarray(pcd.draw(image, prediction, mask_alpha=0.25))  # the 0.25 detection is below 0.5: not drawn
    color = np.array(class_color(7))
    np.testing.assert_array_equal(drawn[45, 55], np.round(0.75 * 100 + 0.25 * color - 0.01))  # inside the mask
    np.testing.assert_array_equal(drawn[40, 35], color)  # on the box outline
    untouched = np.ones((60, 80), bool)
    untouched[25:56, 35:] = False  # the box, and its tag (inside it, running past its right edge)
    assert (drawn[untouched] == 100).all()
    assert (np.asarray(pcd.draw(image, prediction, score_thresh=0.0))[2, 2] != 100).any()
