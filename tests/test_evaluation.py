"""COCO evaluation against hand-made ground truth with AP values computed by hand."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pycontrast_det.config import get_cfg
from pycontrast_det.evaluation import EvalResult, evaluate
from pycontrast_det.reports import compare_with_published
from pycontrast_det.errors import ConfigError, DatasetError

# dataset category ids 3 ("a") and 7 ("b"): contiguous 0 and 1
IMAGES = [{"id": 1, "file_name": "one.png", "height": 100, "width": 120},
          {"id": 2, "file_name": "two.png", "height": 80, "width": 80}]
GT = {  # annotation id -> (image id, dataset category id, XYWH box); every gt is a rectangle polygon
    1: (1, 3, (10, 10, 40, 30)),
    2: (1, 3, (60, 50, 30, 40)),
    3: (2, 7, (5, 5, 50, 50)),
}


def _rect_polygon(x, y, w, h):
    return [x, y, x + w, y, x + w, y + h, x, y + h]


@pytest.fixture()
def gt_dataset(tmp_path) -> str:
    for img in IMAGES:
        Image.new("RGB", (img["width"], img["height"]), (40, 40, 40)).save(tmp_path / img["file_name"])
    annotations = [{"id": i, "image_id": im, "category_id": c, "bbox": list(b), "area": b[2] * b[3], "iscrowd": 0,
                    "segmentation": [_rect_polygon(*b)]} for i, (im, c, b) in GT.items()]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": IMAGES, "annotations": annotations,
                                "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]}))
    return str(path)


def _cfg(num_classes=2, mask_on=True):
    cfg = get_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.MASK_ON = mask_on
    cfg.INPUT.MIN_SIZE_TEST = 64
    return cfg.freeze()


class FakeModel:
    """Returns fixed per-image predictions (eval-format dicts in original pixels), like a model in eval mode."""

    def __init__(self, predictions: dict[int, list[tuple]], cfg=None, with_masks=True):
        self.cfg = cfg if cfg is not None else _cfg()
        self.predictions, self.with_masks, self.seen = predictions, with_masks, []

    def __call__(self, batch):
        outputs = []
        for item in batch:
            assert item["image"].dtype == torch.uint8 and item["image"].shape[0] == 3
            self.seen.append(item["image_id"])
            h, w = item["height"], item["width"]
            dets = self.predictions.get(item["image_id"], [])
            out = {"boxes": torch.tensor([d[0] for d in dets], dtype=torch.float32).reshape(-1, 4),
                   "scores": torch.tensor([d[1] for d in dets], dtype=torch.float32),
                   "classes": torch.tensor([d[2] for d in dets], dtype=torch.int64)}
            if self.with_masks:
                masks = torch.zeros((len(dets), h, w), dtype=torch.bool)
                for k, (box, *_rest) in enumerate(dets):  # a filled box: exact for rectangle ground truth
                    x0, y0, x1, y1 = (int(round(v)) for v in box)
                    masks[k, y0:y1, x0:x1] = True
                out["masks"] = masks
            outputs.append(out)
        return outputs


def _xyxy(ann_id):
    x, y, w, h = GT[ann_id][2]
    return (x, y, x + w, y + h)


PERFECT = {1: [(_xyxy(1), 0.9, 0), (_xyxy(2), 0.8, 0)], 2: [(_xyxy(3), 0.7, 1)]}


def _check_masks_match_gt_raster(gt_json):
    """The fake masks (filled integer boxes) equal pycocotools' raster of the rectangle polygons."""
    from pycocotools.coco import COCO

    coco = COCO(gt_json)
    for ann_id in GT:
        raster = coco.annToMask(coco.anns[ann_id]).astype(bool)
        x0, y0, x1, y1 = _xyxy(ann_id)
        box = np.zeros_like(raster)
        box[y0:y1, x0:x1] = True
        assert (raster == box).all()


def test_perfect_predictions_score_100(gt_dataset, tmp_path):
    _check_masks_match_gt_raster(gt_dataset)
    model = FakeModel(PERFECT)
    result = evaluate(model, gt_dataset, output_dir=tmp_path / "out", backend="pycocotools")
    assert model.seen == [1, 2] and result.num_images == 2 and result.backend == "pycocotools"
    for task in ("bbox", "segm"):
        m = result.metrics[task]
        assert [m["AP"], m["AP50"], m["AP75"], m["APm"]] == pytest.approx([100.0] * 4, abs=1e-9)
        # every gt is 1200-2500 px^2, i.e. "medium": no small or large gt, so COCO reports -1 -> NaN
        assert math.isnan(m["APs"]) and math.isnan(m["APl"])
        assert result.per_category[task] == pytest.approx({"a": 100.0, "b": 100.0}, abs=1e-9)
    assert result.bbox is result.metrics["bbox"] and result.segm is result.metrics["segm"]
    saved = json.loads(result.results_json.read_text())
    assert sorted(r["category_id"] for r in saved) == [3, 3, 7]  # contiguous ids mapped back
    first = next(r for r in saved if r["score"] == pytest.approx(0.9))
    assert first["bbox"] == [10.0, 10.0, 40.0, 30.0] and first["image_id"] == 1  # XYWH
    assert set(first["segmentation"]) == {"size", "counts"} and first["segmentation"]["size"] == [100, 120]
    row = json.loads(result.metrics_json.read_text().strip())
    assert row["bbox/AP"] == pytest.approx(100.0) and row["segm/AP-b"] == pytest.approx(100.0)


# One gt of category "a" missed: "a" has 2 gts and 1 exact hit (the only detection, so precision 1 up to
# recall 0.5, nothing beyond). COCO's 101-point interpolation samples recall 0, 0.01, ..., 1: the 51 points
# 0..0.50 have precision 1, the 50 points 0.51..1 have 0 -> AP_a = 51/101. "b" is perfect -> 1. The boxes are
# exact, so every IoU threshold gives the same: AP = AP50 = AP75 = (51/101 + 1) / 2.
MISSED = {1: [(_xyxy(1), 0.9, 0)], 2: [(_xyxy(3), 0.7, 1)]}
MISSED_AP = 100 * (51 / 101 + 1) / 2  # 75.2475...

# A false positive of "a" ranked above both hits: precision goes 0, 1/2, 2/3 at recall 0, 0.5, 1. COCO takes
# the running max from the right, so every recall point reads 2/3 -> AP_a = 2/3; "b" perfect. The false
# positive is 28x9 = 252 px^2, "small": APm ignores unmatched detections outside its area range, so APm = 100.
FALSE_FIRST = {1: [((90, 0, 118, 9), 0.95, 0), (_xyxy(1), 0.9, 0), (_xyxy(2), 0.8, 0)], 2: [(_xyxy(3), 0.7, 1)]}
FALSE_FIRST_AP = 100 * (2 / 3 + 1) / 2  # 83.333...


@pytest.mark.parametrize("predictions, expected, expected_a, expected_apm", [
    (MISSED, MISSED_AP, 100 * 51 / 101, MISSED_AP), (FALSE_FIRST, FALSE_FIRST_AP, 100 * 2 / 3, 100.0)])
@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval"])
def test_known_perturbations(gt_dataset, predictions, expected, expected_a, expected_apm, backend):
    result = evaluate(FakeModel(predictions), gt_dataset, backend=backend)
    for task in ("bbox", "segm"):
        m = result.metrics[task]
        for name in ("AP", "AP50", "AP75"):
            assert m[name] == pytest.approx(expected, abs=1e-9), (task, name)
        assert m["APm"] == pytest.approx(expected_apm, abs=1e-9)
        assert result.per_category[task]["a"] == pytest.approx(expected_a, abs=1e-9)


def test_backends_agree_on_noisy_predictions(gt_dataset):
    rng = np.random.default_rng(0)
    noisy = {}
    for image_id, dets in PERFECT.items():
        noisy[image_id] = []
        for box, _, cls in dets * 3:  # three jittered copies of every box: hits at some IoUs, duplicates
            jitter = rng.uniform(-6, 6, size=4)
            x0, y0, x1, y1 = np.clip(np.array(box, dtype=float) + jitter, 0, 79)
            noisy[image_id].append(((x0, y0, max(x1, x0 + 2), max(y1, y0 + 2)), float(rng.uniform(0.1, 1)), cls))
    ref = evaluate(FakeModel(noisy), gt_dataset, backend="pycocotools")
    fast = evaluate(FakeModel(noisy), gt_dataset, backend="faster-coco-eval")
    assert 0 < ref.bbox["AP"] < 100 and ref.bbox["AP50"] != ref.bbox["AP75"]
    for task in ("bbox", "segm"):
        for name, value in ref.metrics[task].items():
            other = fast.metrics[task][name]
            assert (math.isnan(value) and math.isnan(other)) or value == pytest.approx(other, abs=1e-9)


def test_max_images_and_no_detections(gt_dataset):
    model = FakeModel(MISSED)
    result = evaluate(model, gt_dataset, max_images=1, backend="pycocotools")
    # image 1 only: category "a" at 51/101, category "b" has no gt there and is left out of the mean
    assert model.seen == [1] and result.num_images == 1
    assert result.bbox["AP"] == pytest.approx(100 * 51 / 101) and math.isnan(result.per_category["bbox"]["b"])
    empty = evaluate(FakeModel({}), gt_dataset, backend="pycocotools")
    assert empty.bbox["AP"] == 0.0 and empty.segm["AP"] == 0.0


def test_boxes_only_model(gt_dataset):
    result = evaluate(FakeModel(PERFECT, cfg=_cfg(mask_on=False), with_masks=False), gt_dataset)
    assert list(result.metrics) == ["bbox"] and result.bbox["AP"] == pytest.approx(100.0)


def test_evaluate_errors(gt_dataset):
    with pytest.raises(DatasetError, match="NUM_CLASSES 80 but dataset 'gt' \\(val\\) has 2 categories"):
        evaluate(FakeModel(PERFECT, cfg=_cfg(num_classes=80)), gt_dataset)
    with pytest.raises(ConfigError, match="unknown evaluation backend 'fast'"):
        evaluate(FakeModel(PERFECT), gt_dataset, backend="fast")
    with pytest.raises(ConfigError, match="needs the model's config"):
        evaluate(lambda batch: [], gt_dataset)
    with pytest.raises(ConfigError, match="world_size 2 needs an initialised torch.distributed process group"):
        evaluate(FakeModel(PERFECT), gt_dataset, rank=0, world_size=2)


def test_compare_with_published():
    measured = EvalResult(dataset="coco_2017_val", split="val", num_images=5000, is_coco_val2017=True,
                          metrics={"bbox": {"AP": 40.4}, "segm": {"AP": 36.9}})
    text = compare_with_published("mask_rcnn_fpn_1x_infomin", measured)
    lines = text.splitlines()
    assert lines[0] == "mask_rcnn_fpn_1x_infomin on coco_2017_val (5000 images)"
    assert lines[2].split() == ["box", "AP", "40.6", "40.4", "-0.2"]
    assert lines[3].split() == ["mask", "AP", "36.7", "36.9", "+0.2"]
    assert "0.3 AP are run-to-run noise" in text
    subset = EvalResult(dataset="coco_2017_val", split="val", num_images=50, is_coco_val2017=True,
                        metrics={"bbox": {"AP": 1.0}})
    text = compare_with_published("mask_rcnn_fpn_1x_infomin", subset)
    assert "Not like-for-like" in text and "(50 images)" in text and text.splitlines()[3].split()[-1] == "-"
    assert "Not like-for-like" in compare_with_published("mask_rcnn_fpn_1x_infomin", {"bbox": {"AP": 3.0}},
                                                         dataset="shapes_val")


def _distributed_eval(gt_json: str, out_dir: str) -> float:
    """One rank of a 2-process evaluation: infer on its image, rank 0 scores, everyone gets the result."""
    import torch.distributed as dist

    model = FakeModel(FALSE_FIRST)
    result = evaluate(model, gt_json, backend="pycocotools", output_dir=Path(out_dir) / "eval",
                      rank=dist.get_rank(), world_size=dist.get_world_size())
    record = {"seen": model.seen, "ap": result.bbox["AP"]}
    if dist.get_rank() == 0:  # rank 0 alone, default arguments (as a trainer's final evaluation): no collective
        record["solo_images"] = evaluate(FakeModel(FALSE_FIRST), gt_json, backend="pycocotools").num_images
    Path(out_dir, f"rank{dist.get_rank()}.json").write_text(json.dumps(record))
    return result.bbox["AP"]


@pytest.mark.slow
def test_distributed_inference_gathers_to_one_result(gt_dataset, tmp_path):
    from pycontrast_det.engine.launch import launch

    ap = launch(_distributed_eval, 2, device="cpu", args=(gt_dataset, str(tmp_path)))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["seen"] for r in ranks] == [[1], [2]]  # contiguous shards, one image each
    assert ranks[0]["solo_images"] == 2
    assert ap == pytest.approx(FALSE_FIRST_AP) and all(r["ap"] == pytest.approx(FALSE_FIRST_AP) for r in ranks)
    assert len(json.loads((tmp_path / "eval" / "coco_instances_results.json").read_text())) == 4


@pytest.mark.slow
def test_end_to_end_with_the_real_model(tmp_path):
    """The real pipeline: shapes images -> mapper -> a random-init R50-FPN -> COCO results -> COCOeval."""
    from pycontrast_det.config import load_config
    from pycontrast_det.data import ShapesParams, shapes_root
    from pycontrast_det.modeling import build_model

    root = shapes_root(ShapesParams(seed=1, num_train=1, num_val=2), root=tmp_path)
    cfg = load_config("R_50_FPN_1x", ["MODEL.ROI_HEADS.NUM_CLASSES", "3", "INPUT.MIN_SIZE_TEST", "128",
                                      "INPUT.MAX_SIZE_TEST", "256"])
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    result = evaluate(model, root, output_dir=tmp_path / "out", backend="pycocotools")
    assert model.training  # the caller's mode is restored
    assert result.dataset == f"{root.name}_val" and result.num_images == 2 and set(result.metrics) == {"bbox", "segm"}
    assert all(0.0 <= result.metrics[t]["AP"] <= 100.0 for t in ("bbox", "segm"))
    sizes = {img["id"]: [img["height"], img["width"]]
             for img in json.loads((root / "annotations" / "instances_val.json").read_text())["images"]}
    for det in json.loads(result.results_json.read_text()):
        assert det["image_id"] in sizes and det["category_id"] in (1, 2, 3) and 0 <= det["score"] <= 1
        assert det["segmentation"]["size"] == sizes[det["image_id"]]


@pytest.mark.slow
def test_evaluate_command_on_a_checkpoint(tmp_path, capsys):
    from pycontrast_det.cli import main
    from pycontrast_det.config import load_config
    from pycontrast_det.data import ShapesParams, shapes_root
    from pycontrast_det.modeling import build_model

    root = shapes_root(ShapesParams(seed=2, num_train=1, num_val=2), root=tmp_path)
    opts = ["MODEL.ROI_HEADS.NUM_CLASSES", "3", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "256"]
    torch.manual_seed(0)
    checkpoint = tmp_path / "model_final.pth"
    torch.save({"model": build_model(load_config("R_50_FPN_1x", opts)).state_dict()}, checkpoint)
    code = main(["evaluate", str(checkpoint), "--entry", "mask_rcnn_fpn_1x_supervised", "--dataset", str(root),
                 "--max-images", "1", "--device", "cpu", "--output", str(tmp_path / "out"), "--opts", *opts])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[0].startswith(f"{checkpoint} on {root.name}_val (1 images, faster-coco-eval")
    assert lines[1].split() == ["task", "AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert [line.split()[0] for line in lines[2:4]] == ["bbox", "segm"]
    assert "published" in captured.out and "Not like-for-like" in captured.out and "39.7" in captured.out
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["bbox/AP"] >= 0
    assert main(["evaluate", str(checkpoint)]) == 2
    assert "say which architecture it is with --config CFG or --entry NAME" in capsys.readouterr().err
    assert main(["evaluate", "mask_rcnn_fpn_9x_nothing"]) == 2
    assert "mask_rcnn_fpn_9x_nothing" in capsys.readouterr().err


def test_instances_to_coco_conversion():
    from pycocotools import mask as mask_util

    from pycontrast_det.evaluation import instances_to_coco

    soft = torch.zeros((2, 4, 5))
    soft[0, 1:3, 2:5] = 0.7  # above 0.5: in the mask
    soft[1, 0, 0] = 0.49     # below 0.5: an empty mask
    outputs = {"boxes": torch.tensor([[1.5, 2.0, 4.0, 3.25], [0.0, 0.0, 1.0, 1.0]]),
               "scores": torch.tensor([0.75, 0.5]), "classes": torch.tensor([1, 0]), "masks": soft}
    first, second = instances_to_coco(9, outputs, category_ids=(3, 7))
    assert first["bbox"] == [1.5, 2.0, 2.5, 1.25] and first["category_id"] == 7 and second["category_id"] == 3
    assert first["image_id"] == 9 and first["score"] == 0.75
    decoded = mask_util.decode({"size": first["segmentation"]["size"],
                                "counts": first["segmentation"]["counts"].encode()})
    assert decoded.shape == (4, 5) and decoded.sum() == 6 and decoded[1:3, 2:5].all()
    assert mask_util.area({"size": [4, 5], "counts": second["segmentation"]["counts"].encode()}) == 0
    assert instances_to_coco(1, {k: v[:0] for k, v in outputs.items()}, (3, 7)) == []
