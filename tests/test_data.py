"""Datasets, the mapper and the loaders: real files, real pycocotools, exact geometry."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pycontrast_det.config import get_cfg
from pycontrast_det.data import (DatasetMapper, ShapesParams, build_test_loader, build_train_loader,
                                 check_num_classes, load_records, resolve_dataset, shapes_root)
from pycontrast_det.data.shapes import _BASE_COLOURS
from pycontrast_det.errors import ConfigError, DatasetError

SMALL = ShapesParams(seed=3, num_train=12, num_val=5)


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory) -> Path:
    return shapes_root(SMALL, root=tmp_path_factory.mktemp("shapes"))


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_coco(root: Path, images: list[dict], annotations: list[dict], categories: list[tuple[int, str]],
               json_name: str = "ann.json") -> Path:
    """A COCO dataset on disk: solid-colour PNGs of the given sizes and a json."""
    root.mkdir(parents=True, exist_ok=True)
    for img in images:
        Image.new("RGB", (img["width"], img["height"]), (30, 30, 30)).save(root / img["file_name"])
    path = root / json_name
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": i, "name": n} for i, n in categories]}))
    return path


def _cfg(**input_overrides):
    cfg = get_cfg()
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 1000
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    for key, value in input_overrides.items():
        cfg.INPUT[key] = value
    return cfg


# ------------------------------------------------------------------------------------------------ shapes


def test_shapes_deterministic_by_seed(tmp_path):
    a = shapes_root(SMALL, root=tmp_path / "a")
    b = shapes_root(SMALL, root=tmp_path / "b")
    other = shapes_root(ShapesParams(seed=4, num_train=12, num_val=5), root=tmp_path / "c")
    assert a.name == b.name and a.name != other.name
    digest = _tree_digest(a)
    assert len(digest) == 12 + 5 + 2
    assert digest == _tree_digest(b)
    other_digest = _tree_digest(other)
    assert other_digest["annotations/instances_train.json"] != digest["annotations/instances_train.json"]
    assert other_digest["train/000000.png"] != digest["train/000000.png"]
    # generated once: a second call reuses the folder, leaving no temp dirs behind
    stamp = (a / "train" / "000000.png").stat().st_mtime_ns
    assert shapes_root(SMALL, root=tmp_path / "a") == a
    assert (a / "train" / "000000.png").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "a").iterdir()] == [a.name]


def test_shapes_is_valid_coco_with_masks_on_the_pixels(small_shapes):
    from pycocotools.coco import COCO

    for split, count in (("train", 12), ("val", 5)):
        coco = COCO(str(small_shapes / "annotations" / f"instances_{split}.json"))
        assert len(coco.imgs) == count
        assert sorted(c["name"] for c in coco.cats.values()) == ["circle", "square", "triangle"]
        for image_id, img in coco.imgs.items():
            anns = coco.imgToAnns[image_id]
            assert 1 <= len(anns) <= 3
            pixels = np.asarray(Image.open(small_shapes / split / img["file_name"]))
            assert pixels.shape == (img["height"], img["width"], 3)
            for ann in anns:
                xs, ys = ann["segmentation"][0][0::2], ann["segmentation"][0][1::2]
                assert 0 <= min(xs) and max(xs) <= img["width"] and 0 <= min(ys) and max(ys) <= img["height"]
                x, y, w, h = ann["bbox"]
                assert (x, y) == pytest.approx((min(xs), min(ys)), abs=0.011)
                assert (x + w, y + h) == pytest.approx((max(xs), max(ys)), abs=0.021)
                assert w >= 16 and h >= 16
                mask = coco.annToMask(ann).astype(bool)
                assert abs(mask.sum() - ann["area"]) < 0.15 * ann["area"]
                # the mask covers the drawn shape: pixels there have the category's colour (jitter <= 25)
                median = np.median(pixels[mask], axis=0)
                assert np.abs(median - _BASE_COLOURS[ann["category_id"]]).max() <= 26


def test_resolve_builtin_shapes_generates_into_the_cache(_isolated_cache):
    spec = resolve_dataset("shapes", "train")
    assert spec.name == "shapes_train" and spec.num_classes == 3
    assert spec.category_names == ("circle", "triangle", "square")
    assert Path(_isolated_cache) in spec.json_file.parents and spec.json_file.is_file()
    assert resolve_dataset("shapes_val").json_file.name == "instances_val.json"
    with pytest.raises(DatasetError, match="shapes_val.*val split"):
        resolve_dataset("shapes_val", "train")


# ------------------------------------------------------------------------------------------------ catalog


def test_coco_layout_and_missing_files(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(DatasetError) as err:
        resolve_dataset("coco_2017_val")
    assert str(tmp_path / "coco" / "annotations" / "instances_val2017.json") in str(err.value)
    assert "cocodataset.org" in str(err.value) and "DETECTRON2_DATASETS" in str(err.value)
    (tmp_path / "coco" / "val2017").mkdir(parents=True)
    write_coco(tmp_path / "coco" / "annotations", [{"id": 1, "file_name": "x.png", "height": 8, "width": 8}], [],
               [(1, "person"), (2, "dog")], json_name="instances_val2017.json")
    spec = resolve_dataset("coco", "val")
    assert spec.name == "coco_2017_val" and spec.is_coco_val2017 and spec.num_classes == 80
    assert spec.image_root == tmp_path / "coco" / "val2017"
    # the file's 2 categories are not COCO's 80: a clear mismatch when records are loaded
    with pytest.raises(DatasetError, match="categories differ.*2 found, 80 expected"):
        load_records(spec)


def test_json_and_directory_forms(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "height": 10, "width": 12}]
    json_file = write_coco(tmp_path / "imgs", images, [], [(4, "b"), (2, "a")])
    spec = resolve_dataset(str(json_file))
    assert spec.image_root == tmp_path / "imgs" and spec.category_ids == (2, 4) and spec.category_names == ("a", "b")
    other = tmp_path / "elsewhere.json"
    other.write_text(json_file.read_text())
    assert resolve_dataset(f"{other}:{tmp_path / 'imgs'}").image_root == tmp_path / "imgs"
    # directory layouts
    (tmp_path / "ds" / "annotations").mkdir(parents=True)
    (tmp_path / "ds" / "train").mkdir()
    (tmp_path / "ds" / "annotations" / "instances_train.json").write_text(json_file.read_text())
    spec = resolve_dataset(tmp_path / "ds", "train")
    assert spec.image_root == tmp_path / "ds" / "train" and spec.name == "ds_train"
    with pytest.raises(DatasetError, match="no val annotations in a known layout.*instances_val.json"):
        resolve_dataset(tmp_path / "ds", "val")
    with pytest.raises(DatasetError, match="annotation file not found: .*missing.json"):
        resolve_dataset(str(tmp_path / "missing.json"))
    with pytest.raises(DatasetError, match="image folder not found"):
        resolve_dataset(f"{json_file}:{tmp_path / 'nope'}")
    with pytest.raises(DatasetError, match="unknown dataset 'cocoo'.*shapes"):
        resolve_dataset("cocoo")
    with pytest.raises(DatasetError, match="unknown split 'test'"):
        resolve_dataset("shapes", "test")
    bad = tmp_path / "imgs" / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DatasetError, match="bad.json: cannot read as JSON"):
        resolve_dataset(str(bad))
    bad.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": "1", "name": "x"}]}))
    with pytest.raises(DatasetError, match=r"categories\[0\]"):
        resolve_dataset(str(bad))


def test_num_classes_mismatch_names_both(small_shapes):
    spec = resolve_dataset(small_shapes, "val")
    check_num_classes(spec, 3)
    with pytest.raises(DatasetError, match="NUM_CLASSES 80.*has 3 categories \\(circle, triangle, square\\)"):
        check_num_classes(spec, 80)


# ------------------------------------------------------------------------------------------------ records


def _ann(ann_id, image_id, cat, bbox, segm=None, iscrowd=0):
    x, y, w, h = bbox
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": iscrowd, "area": w * h,
            "segmentation": segm if segm is not None else [[x, y, x + w, y, x + w, y + h, x, y + h]]}


def test_records_contiguous_ids_crowd_and_filtering(tmp_path):
    images = [{"id": i, "file_name": f"{i}.png", "height": 40, "width": 50} for i in (3, 1, 2)]
    anns = [_ann(1, 1, 9, [1, 2, 10, 10]), _ann(2, 1, 2, [20, 5, 10, 8]),
            _ann(3, 2, 5, [0, 0, 5, 5], segm={"size": [40, 50], "counts": "a"}, iscrowd=1),
            _ann(4, 1, 5, [5, 5, 5, 5], segm=[[5, 5, 10, 5]])]  # a 2-point polygon: dropped
    json_file = write_coco(tmp_path, images, anns, [(9, "nine"), (2, "two"), (5, "five")])
    spec = resolve_dataset(str(json_file))
    assert spec.category_ids == (2, 5, 9)
    with pytest.warns(UserWarning, match="dropped 1 instance"):
        records = load_records(spec)
    assert [r["image_id"] for r in records] == [1, 2, 3]
    assert [a["category_id"] for a in records[0]["annotations"]] == [2, 0]  # 9 -> 2, 2 -> 0
    assert records[1]["annotations"][0]["iscrowd"] == 1 and records[2]["annotations"] == []
    assert records[0]["file_name"] == str(tmp_path / "1.png")
    assert spec.categories.to_dataset(2) == 9 and spec.categories.to_contiguous(5) == 1
    with pytest.warns(UserWarning):
        kept = load_records(spec, filter_empty=True)  # image 2 has only a crowd box, image 3 nothing
    assert [r["image_id"] for r in kept] == [1]


@pytest.mark.parametrize("bad, message", [
    ({"bbox": [1, 2, 3]}, "'bbox' must be 4 finite numbers"),
    ({"bbox": [1, 2, -3, 4]}, "negative width or height"),
    ({"segmentation": [[1, 2, 3, 4, 5, 6, 7]]}, "odd number of coordinates"),
    ({"iscrowd": 2}, "'iscrowd' must be 0 or 1"),
])
def test_bad_annotations_are_named(tmp_path, bad, message):
    ann = {**_ann(42, 1, 1, [1, 1, 5, 5]), **bad}
    json_file = write_coco(tmp_path, [{"id": 1, "file_name": "a.png", "height": 20, "width": 20}], [ann], [(1, "x")])
    with pytest.raises(DatasetError, match=f"ann.json: annotation id 42 \\(image 1\\): .*{message}"):
        load_records(resolve_dataset(str(json_file)))


# ------------------------------------------------------------------------------------------------ mapper


def _scene(tmp_path: Path, height: int = 30, width: int = 40) -> tuple[dict, tuple[int, int, int]]:
    """A record for an image with one red triangle, asymmetric so a flip is visible."""
    colour = (250, 10, 10)
    img = Image.new("RGB", (width, height), (0, 0, 200))
    poly = [4.0, 3.0, 20.0, 6.0, 6.0, 24.0]
    ImageDraw.Draw(img).polygon(list(zip(poly[0::2], poly[1::2])), fill=colour)
    img.save(tmp_path / "scene.png")
    record = {"file_name": str(tmp_path / "scene.png"), "height": height, "width": width, "image_id": 7,
              "annotations": [{"bbox": [4.0, 3.0, 16.0, 21.0], "category_id": 1, "iscrowd": 0, "segmentation": [poly]},
                              {"bbox": [30.0, 20.0, 5.0, 5.0], "category_id": 0, "iscrowd": 1}]}
    return record, colour


def test_test_mapping_sizes_use_round_half_up(tmp_path):
    record, _ = _scene(tmp_path)
    out = DatasetMapper(_cfg(MIN_SIZE_TEST=50), is_train=False)(record)
    # 30x40 -> short side 50: width 40 * 50/30 = 66.67 -> int(66.67 + 0.5) = 67 (floor would give 66)
    assert tuple(out["image"].shape) == (3, 50, 67) and out["image"].dtype == torch.uint8
    assert (out["height"], out["width"], out["image_id"]) == (30, 40, 7) and "instances" not in out
    capped = DatasetMapper(_cfg(MIN_SIZE_TEST=60, MAX_SIZE_TEST=70), is_train=False)(record)
    # short side 60 would make the long side 80 > 70: scale to 70/40, height 30 * 1.75 = 52.5 -> 53
    assert tuple(capped["image"].shape) == (3, 53, 70)


def test_channel_order_follows_input_format(tmp_path):
    record, _ = _scene(tmp_path)
    rgb = DatasetMapper(_cfg(FORMAT="RGB"), is_train=False)(record)["image"]
    bgr = DatasetMapper(_cfg(FORMAT="BGR"), is_train=False)(record)["image"]
    assert rgb[2, 0, 0] == 200 and rgb[0, 0, 0] == 0  # blue background, RGB order
    assert bgr[0, 0, 0] == 200 and bgr[2, 0, 0] == 0
    assert (bgr.flip(0) == rgb).all()
    with pytest.raises(ConfigError, match="INPUT.FORMAT 'YUV'"):
        DatasetMapper(_cfg(FORMAT="YUV"), is_train=False)


def test_train_flip_and_resize_map_boxes_and_polygons_exactly(tmp_path):
    record, colour = _scene(tmp_path)
    mapper = DatasetMapper(_cfg(MIN_SIZE_TRAIN=(45,), FORMAT="RGB"), is_train=True)
    sx, sy = 60 / 40, 45 / 30  # 30x40 -> 45x60
    seen = set()
    for seed in range(12):
        out = mapper(record, np.random.default_rng(seed))
        image = out["image"].permute(1, 2, 0).numpy()
        assert image.shape == (45, 60, 3)
        inst = out["instances"]
        assert inst["classes"].tolist() == [1]  # the crowd box is not a target
        unflipped = np.asarray(Image.open(record["file_name"]).resize((60, 45), Image.BILINEAR))
        flipped = bool((image == unflipped[:, ::-1]).all())
        assert flipped or (image == unflipped).all()
        seen.add(flipped)
        x0, y0, x1, y1 = 4 * sx, 3 * sy, 20 * sx, 24 * sy
        expected_box = [60 - x1, y0, 60 - x0, y1] if flipped else [x0, y0, x1, y1]
        assert inst["boxes"].tolist() == [pytest.approx(expected_box, abs=1e-4)]
        xs = np.array([4.0, 20.0, 6.0]) * sx
        ys = np.array([3.0, 6.0, 24.0]) * sy
        xs = 60 - xs if flipped else xs
        polygon = inst["masks"][0][0]
        np.testing.assert_allclose(polygon, np.stack([xs, ys], 1).reshape(-1), atol=1e-4)
        # and the polygon still sits on the red triangle in the augmented image
        mask = Image.new("L", (60, 45))
        ImageDraw.Draw(mask).polygon(list(zip(polygon[0::2].tolist(), polygon[1::2].tolist())), fill=1)
        inside = image[np.asarray(mask, dtype=bool)]
        assert np.median(inside, axis=0).tolist() == list(colour)
    assert seen == {True, False}


def test_train_size_sampling(tmp_path):
    record, _ = _scene(tmp_path)

    def shorts(mapper):
        return {mapper(record, np.random.default_rng(s))["image"].shape[1] for s in range(40)}

    assert shorts(DatasetMapper(_cfg(MIN_SIZE_TRAIN=(32, 48)), is_train=True)) == {32, 48}
    ranged = shorts(DatasetMapper(_cfg(MIN_SIZE_TRAIN=(32, 40), MIN_SIZE_TRAIN_SAMPLING="range"), is_train=True))
    assert ranged <= set(range(32, 41)) and len(ranged) >= 5
    with pytest.raises(ConfigError, match="'range' \\(exactly \\[min, max\\]\\)"):
        DatasetMapper(_cfg(MIN_SIZE_TRAIN=(32, 40, 48), MIN_SIZE_TRAIN_SAMPLING="range"), is_train=True)


def test_boxes_clipped_and_emptied_instances_dropped(tmp_path):
    record, _ = _scene(tmp_path)
    record["annotations"] = [
        {"bbox": [30.0, 10.0, 20.0, 5.0], "category_id": 0, "iscrowd": 0, "segmentation": [[30, 10, 50, 10, 50, 15]]},
        {"bbox": [45.0, 10.0, 3.0, 3.0], "category_id": 1, "iscrowd": 0, "segmentation": [[45, 10, 48, 10, 48, 13]]}]
    out = DatasetMapper(_cfg(MIN_SIZE_TRAIN=(30,), RANDOM_FLIP="none"), is_train=True)(record)
    assert out["instances"]["boxes"].tolist() == [[30.0, 10.0, 40.0, 15.0]]  # clipped at the right edge
    assert out["instances"]["classes"].tolist() == [0]


def test_mapper_errors_name_the_file(tmp_path):
    record, _ = _scene(tmp_path)
    mapper = DatasetMapper(_cfg(), is_train=True)
    with pytest.raises(DatasetError, match="scene.png is 40x30 but its annotation says 41x30"):
        mapper({**record, "width": 41})
    with pytest.raises(DatasetError, match="image file not found: .*nothere.png"):
        mapper({**record, "file_name": str(tmp_path / "nothere.png")})
    rle = {**record, "annotations": [{"bbox": [1.0, 1.0, 5.0, 5.0], "category_id": 0, "iscrowd": 0,
                                      "segmentation": {"size": [30, 40], "counts": "x"}}]}
    with pytest.raises(DatasetError, match="an RLE mask; training with masks"):
        mapper(rle)


# ------------------------------------------------------------------------------------------------ loaders


def _ids(batches) -> list[list[int]]:
    return [[item["image_id"] for item in batch] for batch in batches]


def test_train_loader_is_seeded_and_sharded(small_shapes):
    spec = resolve_dataset(small_shapes, "train")
    cfg = _cfg()

    def take(it, n):
        return [next(it) for _ in range(n)]

    single = take(build_train_loader(cfg, spec, seed=5), 6)  # 24 images = two passes over the 12
    assert all(len(b) == 4 for b in single)
    flat = [i for batch in _ids(single) for i in batch]
    assert sorted(flat[:12]) == list(range(1, 13)) and sorted(flat[12:]) == list(range(1, 13))
    assert flat[:12] != flat[12:]  # reshuffled every pass
    assert _ids(take(build_train_loader(cfg, spec, seed=5), 6)) == _ids(single)
    assert _ids(take(build_train_loader(cfg, spec, seed=6), 6)) != _ids(single)
    # two ranks: batches of 2, disjoint interleaved shares of the same stream, same augmentation per position
    ranks = [take(build_train_loader(cfg, spec, seed=5, rank=r, world_size=2), 6) for r in (0, 1)]
    shares = [[item for batch in rank for item in batch] for rank in ranks]
    assert all(len(b) == 2 for rank in ranks for b in rank)
    merged = [item for pair in zip(*shares) for item in pair]
    singles = [item for batch in single for item in batch]
    assert [m["image_id"] for m in merged] == flat
    for a, b in zip(merged, singles):
        assert (a["image"] == b["image"]).all() and (a["instances"]["boxes"] == b["instances"]["boxes"]).all()
    # resuming at iteration 2 continues the same stream
    assert _ids(take(build_train_loader(cfg, spec, seed=5, start_iter=2), 4)) == _ids(single[2:])
    with pytest.raises(ConfigError, match="IMS_PER_BATCH 4 is not divisible by the 3 processes"):
        build_train_loader(cfg, spec, world_size=3, rank=0)


def test_train_loader_same_batches_with_workers(small_shapes):
    spec = resolve_dataset(small_shapes, "train")
    cfg = _cfg()
    it0 = build_train_loader(cfg, spec, seed=1, num_workers=0)
    it2 = build_train_loader(cfg, spec, seed=1, num_workers=2)
    for _ in range(3):
        a, b = next(it0), next(it2)
        assert _ids([a]) == _ids([b])
        assert all((x["image"] == y["image"]).all() for x, y in zip(a, b))


def test_train_loader_aspect_ratio_grouping(small_shapes):
    spec = resolve_dataset(small_shapes, "train")
    cfg = _cfg()
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = True
    it = build_train_loader(cfg, spec, seed=0)
    for _ in range(5):
        batch = next(it)
        assert len({item["width"] > item["height"] for item in batch}) == 1


def test_test_loader_shards_in_order(small_shapes):
    spec = resolve_dataset(small_shapes, "val")
    cfg = _cfg()
    whole = [b[0]["image_id"] for b in build_test_loader(cfg, spec)]
    assert whole == [1, 2, 3, 4, 5]
    parts = [[b[0]["image_id"] for b in build_test_loader(cfg, spec, rank=r, world_size=2)] for r in (0, 1)]
    assert parts == [[1, 2, 3], [4, 5]]
    assert [b[0]["image_id"] for b in build_test_loader(cfg, spec, max_images=2)] == [1, 2]
