"""The dataset report (each problem kind, counted with examples), the problems that stop a run before anything is
written, the validation split (--val, a held-out fraction chosen by SEED), several training sets, the mask
decisions, and errors in loader workers."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from PIL import Image

from pycontrast_det.cli import main
from pycontrast_det.config import get_cfg
from pycontrast_det.data import build_train_loader, resolve_dataset, resolve_datasets, scan_dataset
from pycontrast_det.data.coco import held_out_ids
from pycontrast_det.errors import DatasetError
from pycontrast_det.recipes.finetune import plan_finetune


def _box(ann_id: int, image_id: int, cat: int, bbox: list, **extra) -> dict:
    x, y, w, h = bbox
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox,
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]], **extra}


def write_json(root: Path, annotations: list[dict], num_images: int = 4, categories=((1, "cat"), (2, "dog")),
               name: str = "ann.json", missing: tuple[int, ...] = ()) -> Path:
    """``num_images`` 40x30 PNGs (ids 1..N, ``missing`` ones not written) and a COCO json over them."""
    root.mkdir(parents=True, exist_ok=True)
    images = [{"id": i, "file_name": f"{i}.png", "height": 30, "width": 40} for i in range(1, num_images + 1)]
    for img in images:
        if img["id"] not in missing:
            Image.new("RGB", (40, 30), (90, 20, 20)).save(root / img["file_name"])
    path = root / name
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": i, "name": n} for i, n in categories]}))
    return path


def _objects(num_images: int = 4) -> list[dict]:
    return [_box(i, i, 1 + i % 2, [2, 2, 10, 10]) for i in range(1, num_images + 1)]


@pytest.fixture()
def source(d2_fixtures) -> Path:
    return d2_fixtures / "fpn" / "weights_fp16.pth"


def test_report_counts_each_problem_kind_with_examples(tmp_path):
    anns = [*_objects(4),
            _box(10, 1, 7, [1, 1, 5, 5]), _box(11, 2, 7, [1, 1, 5, 5]),  # unknown category id 7, twice
            _box(12, 1, 1, [30, 20, 20, 20]),                               # runs out of the 40x30 image
            _box(13, 2, 2, [5, 5, 0, 4]),                                    # zero width
            _box(14, 3, 1, [-3, 2, 10, 10])]                                 # starts left of the image
    json_file = write_json(tmp_path, anns, num_images=5)                    # image 5: no objects
    records, report = scan_dataset(resolve_dataset(f"{json_file}:{tmp_path}", "train"), filter_empty=True)
    assert report.problems == {"unknown_category": 2, "outside": 2, "zero_size": 1, "empty": 1}
    assert report.examples["unknown_category"] == ["annotation 10 (image 1): category_id 7",
                                                   "annotation 11 (image 2): category_id 7"]
    assert report.examples["empty"] == ["image 5 (5.png)"]
    assert report.images == 4 and report.objects == {"cat": 4, "dog": 2}  # 4 + the two clipped boxes
    boxes = {a["bbox"][0]: a["bbox"] for r in records for a in r["annotations"]}
    assert boxes[30.0] == [30.0, 20.0, 10.0, 10.0] and boxes[0.0] == [0.0, 2.0, 7.0, 10.0]  # clipped
    text = "\n".join(report.lines())
    assert "4 images, 6 objects (cat 4, dog 2)" in text
    assert "2 unknown category ids (objects skipped): annotation 10 (image 1)" in text
    assert "2 boxes outside the image (clipped)" in text and "1 zero-size boxes (skipped)" in text
    assert "1 images without objects (skipped in training, as DATALOADER.FILTER_EMPTY_ANNOTATIONS)" in text
    assert report.fatal() is None


@pytest.mark.parametrize("case, message", [
    ("missing", r"1 missing image files \(e\.g\. .*3\.png\); add the images"),
    ("no_objects", "no objects in its 4 images"),
    ("no_images", "no images"),
])
def test_meaningless_data_stops_before_anything_is_written(case, message, tmp_path, source, capsys):
    anns = [] if case != "missing" else _objects(4)
    json_file = write_json(tmp_path / "d", anns, num_images=0 if case == "no_images" else 4,
                           missing=(3,) if case == "missing" else ())
    out = tmp_path / "run"
    with pytest.raises(DatasetError, match=message):
        plan_finetune(source, f"{json_file}:{json_file.parent}", val=f"{json_file}:{json_file.parent}")
    code = main(["finetune", str(source), "--dataset", f"{json_file}:{json_file.parent}", "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and not out.exists()


def test_val_and_the_held_out_fraction(tmp_path, source):
    data = write_json(tmp_path / "train", _objects(10), num_images=10)
    other = write_json(tmp_path / "val", _objects(3), num_images=3)
    given = plan_finetune(source, str(data), val=str(other), overrides=["SEED", "3"])
    assert list(given.cfg().DATASETS.TEST) == [str(other.resolve())] and given.data.val.json_file == other.resolve()
    assert given.data.reports[0].images == 10 and given.data.reports[1].images == 3
    # no val split: 10% held out by SEED, printed; the training images are the rest
    plan = plan_finetune(source, str(data), overrides=["SEED", "3"])
    train, val = plan.data.reports
    assert (train.images, val.images) == (9, 1)
    assert plan.cfg().DATASETS.TEST[0].endswith("ann.json#holdout=0.1,seed=3")
    assert "0.1 of the images of" in plan.render() and "chosen by seed 3 (SEED 3)" in plan.render()

    def ids(spec):
        return {r["image_id"] for r in scan_dataset(spec)[0]}

    held, rest = ids(plan.data.val), ids(plan.data.train)
    assert held == held_out_ids(range(1, 11), 0.1, 3) and held.isdisjoint(rest) and held | rest == set(range(1, 11))
    again = plan_finetune(source, str(data), overrides=["SEED", "3"], holdout=0.3)
    assert len(ids(again.data.val)) == 3 and ids(plan_finetune(source, str(data), overrides=["SEED", "3"]).data.val) \
        == held  # the same seed, the same images
    assert ids(plan_finetune(source, str(data), overrides=["SEED", "4"], holdout=0.3).data.val) != ids(again.data.val)
    with pytest.raises(Exception, match="--val .* and --holdout 0.2 both"):
        plan_finetune(source, str(data), val=str(other), holdout=0.2)
    one = write_json(tmp_path / "one", _objects(1), num_images=1)  # nothing to hold out: said, not hidden
    assert "validation on " + str(one.resolve()) + ", the images the model trains on" in plan_finetune(
        source, str(one)).render()
    with pytest.raises(DatasetError, match="cannot hold out validation images from 1 image"):
        plan_finetune(source, str(one), holdout=0.5)


def test_several_training_sets_one_class_list(tmp_path, source, capsys):
    a = write_json(tmp_path / "a", _objects(4), categories=((1, "cat"), (2, "dog")))
    b = write_json(tmp_path / "b", [_box(1, 1, 2, [1, 1, 9, 9]), _box(2, 2, 3, [1, 1, 9, 9])], num_images=2,
                   categories=((2, "dog"), (3, "owl")))
    merged = resolve_datasets([str(a), str(b)], "train")
    assert merged.category_names == ("cat", "dog", "owl") and merged.category_ids == (1, 2, 3)
    records, report = scan_dataset(merged)
    assert report.images == 6 and report.objects == {"cat": 2, "dog": 3, "owl": 1}
    assert records[4]["file_name"] == str(tmp_path / "b" / "1.png")
    assert main(["finetune", str(source), "--dataset", str(a), "--dataset", str(b), "--val", str(a),
                 "--dry-run"]) == 0
    assert "3 classes: cat, dog, owl" in capsys.readouterr().out
    clash = write_json(tmp_path / "c", _objects(2), num_images=2, categories=((1, "cow"), (2, "dog")))
    with pytest.raises(DatasetError, match="category id 1 is 'cat' in one dataset and 'cow' in ann .*c/ann.json"):
        resolve_datasets([str(a), str(clash)], "train")


def test_mask_decisions(tmp_path, source):
    boxes = [{k: v for k, v in ann.items() if k != "segmentation"} for ann in _objects(4)]
    plan = plan_finetune(source, str(write_json(tmp_path / "boxes", boxes)), val=str(write_json(tmp_path / "v", boxes)))
    assert plan.cfg().MODEL.MASK_ON is False and "boxes only (no segmentation)" in plan.render()
    partial = _objects(4)[:2] + boxes[2:]
    with pytest.raises(DatasetError, match=r"2 of 4 objects have masks and 2 have none; give every object a mask, "
                                           r"or train boxes only with MODEL.MASK_ON False"):
        plan_finetune(source, str(write_json(tmp_path / "partial", partial)), val=str(tmp_path / "v" / "ann.json"))
    chosen = plan_finetune(source, str(tmp_path / "partial" / "ann.json"), overrides=["MODEL.MASK_ON", "False"])
    assert chosen.cfg().MODEL.MASK_ON is False
    rle = [{**a, "segmentation": {"size": [30, 40], "counts": [82, 10, 20, 10, 1088]}} for a in _objects(4)]
    plan = plan_finetune(source, str(write_json(tmp_path / "rle", rle)))
    assert plan.cfg().INPUT.MASK_FORMAT == "bitmask" and plan.cfg().MODEL.MASK_ON is True


def _loader_cfg(workers: int):
    cfg = get_cfg()
    cfg.MODEL.MASK_ON = False
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (30,), 100
    cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS = 2, workers
    return cfg


def test_a_worker_error_is_the_one_line_error_and_workers_fit_the_machine(tmp_path):
    json_file = write_json(tmp_path, _objects(4))
    (tmp_path / "2.png").write_bytes(b"not a png")
    spec = resolve_dataset(str(json_file), "train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "suggested max number of worker" warning would fail here
        batches = build_train_loader(_loader_cfg(64), spec, seed=0)
        with pytest.raises(DatasetError) as caught:
            for _ in range(4):
                next(batches)
    assert str(caught.value).startswith("cannot read image ") and "2.png" in str(caught.value)
    assert "\n" not in str(caught.value) and "Traceback" not in str(caught.value)


def _voc(root: Path, objects: list[tuple[str, tuple[int, int, int, int], int]]) -> Path:
    """A one-image VOC folder: ``objects`` as (name, 1-based inclusive xmin, ymin, xmax, ymax, difficult)."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (60, 40), (10, 10, 10)).save(root / "JPEGImages" / "a.jpg")
    xml = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}"
                  f"</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objects)
    (root / "Annotations" / "a.xml").write_text(f"<annotation><filename>a.jpg</filename><size><width>60</width>"
                                                f"<height>40</height></size>{xml}</annotation>")
    for split in ("train", "val"):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("a\n")
    return root


def test_voc_boxes_converted_and_difficult_objects_ignored_in_evaluation(tmp_path):
    from pycontrast_det.evaluation.coco import score_results

    root = _voc(tmp_path / "voc", [("owl", (11, 6, 30, 25), 0), ("owl", (36, 6, 55, 30), 1), ("bat", (2, 2, 8, 9), 0)])
    spec = resolve_dataset(root, "val")
    assert spec.layout == "voc" and spec.category_names == ("bat", "owl")
    records, _ = scan_dataset(spec)
    assert [a["bbox"] for a in records[0]["annotations"]] == [[10.0, 5.0, 20.0, 20.0], [35.0, 5.0, 20.0, 25.0],
                                                              [1.0, 1.0, 7.0, 8.0]]
    hits = [{"image_id": 1, "category_id": 2, "bbox": [10.0, 5.0, 20.0, 20.0], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [1.0, 1.0, 7.0, 8.0], "score": 0.9}]
    on_difficult = {"image_id": 1, "category_id": 2, "bbox": [35.0, 5.0, 20.0, 25.0], "score": 0.95}
    for results in (hits, hits + [on_difficult]):  # the difficult owl: neither missed nor a true positive
        scored = score_results(spec, [1], results, ["bbox"], "pycocotools", None)
        assert scored.bbox["AP-owl"] == pytest.approx(100.0) and scored.bbox["AP-bat"] == pytest.approx(100.0)


def test_a_single_file_export_as_the_validation_set(tmp_path, source):
    """A CVAT folder given as --val: all its images validate; without --val, its images are split."""
    train = write_json(tmp_path / "train", _objects(6), num_images=6)
    cvat = tmp_path / "cvat"
    (cvat / "annotations").mkdir(parents=True)
    write_json(cvat / "images", _objects(3), num_images=3, name="../annotations/instances_default.json")
    plan = plan_finetune(source, str(train), val=str(cvat))
    assert plan.data.val.layout == "cvat" and plan.data.reports[1].images == 3
    assert resolve_dataset(cvat, "val").json_file == resolve_dataset(cvat, "train").json_file
    alone = plan_finetune(source, str(cvat), overrides=["SEED", "1"])
    assert (alone.data.reports[0].images, alone.data.reports[1].images) == (2, 1)
