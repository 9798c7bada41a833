"""Exported detectors (ONNX on onnxruntime, TorchScript): same detections as the eager model, on images of any size.

The models are the parity fixtures' (detectron2's weights), made lighter for test time (smaller input, 50
proposals); one file per architecture and format, and one eager prediction per image, shared by this module's tests.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pycontrast_det as pcd
from pycontrast_det.cli import main
from pycontrast_det.errors import ExportError, MissingDependencyError
from pycontrast_det.export.trust import record_export
from pycontrast_det.modeling.preprocess import (resize_shortest_edge, resize_shortest_edge_tensor, scaled_size,
                                                traced_scaled_size)

LIGHT = ["INPUT.MIN_SIZE_TEST", "224", "INPUT.MAX_SIZE_TEST", "320", "MODEL.RPN.PRE_NMS_TOPK_TEST", "1000",
         "MODEL.RPN.POST_NMS_TOPK_TEST", "50"]
BOX_TOL, SCORE_TOL, MASK_IOU = 0.05, 1e-3, 0.99


@pytest.fixture(scope="module")
def images(d2_fixtures: Path) -> dict[str, np.ndarray]:
    """Fixture photos and synthetic images of several sizes and aspect ratios, and a blank one (no detections)."""
    out = {name: np.asarray(Image.open(d2_fixtures / "images" / f"{name}.png").convert("RGB"))
           for name in ("shapes_0001", "chelsea", "coffee")}
    tall = np.asarray(Image.open(d2_fixtures / "images" / "shapes_0000.png").convert("RGB"))
    out["tall"] = np.ascontiguousarray(np.rot90(tall)[:300])  # 300 x 256
    out["blank"] = np.full((90, 120, 3), 128, np.uint8)
    return out


@pytest.fixture(scope="module")
def models(d2_fixtures: Path) -> dict[str, "pcd.modeling.MaskRCNN"]:
    return {arch: pcd.load(d2_fixtures / arch / "config.yaml", weights=d2_fixtures / arch / "weights_fp16.pth",
                           overrides=LIGHT) for arch in ("fpn", "c4")}


@pytest.fixture(scope="module")
def eager(models):
    """``eager(arch, name, image)``: the eager model's prediction, computed once."""
    done: dict[tuple[str, str], dict] = {}

    def get(arch: str, name: str, image: np.ndarray) -> dict:
        if (arch, name) not in done:
            done[arch, name] = models[arch].predict(image)
        return done[arch, name]

    return get


@pytest.fixture(scope="module")
def exported(models, d2_fixtures: Path, tmp_path_factory):
    """``exported(arch, format)``: the file, written once; FPN TorchScript through the CLI (its output is kept).
    The files (about 180 MB each) are removed after the module: pytest keeps its last temporary folders."""
    folder = tmp_path_factory.mktemp("exported")
    files: dict[tuple[str, str], tuple[Path, str]] = {}

    def get(arch: str, format: str) -> tuple[Path, str]:
        if (arch, format) not in files:
            path = folder / f"{arch}.{format}"
            if (arch, format) == ("fpn", "torchscript"):
                output = io.StringIO()
                with contextlib.redirect_stdout(output):
                    code = main(["export", str(d2_fixtures / "fpn" / "weights_fp16.pth"), "--config",
                                 str(d2_fixtures / "fpn" / "config.yaml"), "--format", "torchscript", "--out",
                                 str(path), "--opts", *LIGHT])
                assert code == 0
                printed = output.getvalue()
            else:
                pcd.export(models[arch], path, format=format)
                printed = ""
            files[arch, format] = path, printed
        if format == "torchscript":  # exported here: trusted, as recorded in each test's own cache
            record_export(files[arch, format][0])
        return files[arch, format]

    yield get
    shutil.rmtree(folder)


def _assert_same_detections(got: dict, expected: dict, where: str) -> None:
    """Same detections (each eager one matched by label, box and score), masks with IoU >= MASK_IOU."""
    assert len(got["scores"]) == len(expected["scores"]), where
    assert got["masks"].shape == expected["masks"].shape and got["masks"].dtype == torch.bool, where
    unused = set(range(len(got["scores"])))
    for i in range(len(expected["scores"])):
        match = [j for j in sorted(unused) if int(got["labels"][j]) == int(expected["labels"][i])
                 and abs(float(got["scores"][j] - expected["scores"][i])) <= SCORE_TOL
                 and float((got["boxes"][j] - expected["boxes"][i]).abs().max()) <= BOX_TOL]
        assert match, f"{where}: eager detection {i} ({expected['label_names'][i]}, " \
                      f"{float(expected['scores'][i]):.4f}, {expected['boxes'][i].tolist()}) has no exported match"
        j = match[0]
        unused.remove(j)
        inter = (got["masks"][j] & expected["masks"][i]).sum().item()
        union = (got["masks"][j] | expected["masks"][i]).sum().item()
        assert union == 0 or inter / union >= MASK_IOU, f"{where}: detection {i} mask IoU {inter / union:.4f}"


def _check_equal_to_eager(arch: str, path: Path, images: dict[str, np.ndarray], eager, models) -> None:
    runner = pcd.load_exported(path)
    assert runner.classes == models[arch].classes and len(runner.class_names) == 80
    detected = 0
    for name, image in images.items():
        got, expected = runner.predict(image), eager(arch, name, image)
        assert set(got) == set(expected) == {"boxes", "scores", "labels", "label_names", "masks"}
        assert got["label_names"] == [runner.class_names[i] for i in got["labels"].tolist()]
        assert got["masks"].shape[1:] == image.shape[:2]
        _assert_same_detections(got, expected, f"{path.name} on {name} {image.shape}")
        detected += len(expected["scores"])
    assert detected > 0


@pytest.mark.parametrize("arch", ["fpn", "c4"])
def test_onnx_on_onnxruntime_equals_eager(models, eager, exported, images, arch: str) -> None:
    pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install 'pycontrast-det[export]')")
    path, _ = exported(arch, "onnx")
    assert pcd.load_exported(path).format == "onnx"
    names = images if arch == "fpn" else ("chelsea", "tall", "blank")  # C4 runs slowly on onnxruntime
    _check_equal_to_eager(arch, path, {name: images[name] for name in names}, eager, models)


def test_torchscript_from_the_cli_equals_eager(models, eager, exported, images) -> None:
    path, printed = exported("fpn", "torchscript")
    assert f"wrote {path} (torchscript" in printed and "80 classes" in printed and "224/320" in printed
    runner = pcd.load_exported(path)
    assert runner.format == "torchscript"
    assert (runner.metadata.arch, runner.metadata.min_size_test, runner.metadata.max_size_test) == ("fpn", 224, 320)
    assert runner.metadata.score_thresh == models["fpn"].roi_heads.score_thresh
    _check_equal_to_eager("fpn", path, {k: images[k] for k in ("chelsea", "tall", "blank")}, eager, models)


def test_score_threshold_and_unreadable_files(models, exported, images, tmp_path: Path) -> None:
    path, _ = exported("fpn", "torchscript")
    runner = pcd.load_exported(path)
    everything, above = runner.predict(images["coffee"]), runner.predict([images["coffee"]], score_thresh=0.5)[0]
    keep = everything["scores"] > 0.5
    assert 0 < int(keep.sum()) < len(keep)
    assert torch.equal(above["boxes"], everything["boxes"][keep]) and above["masks"].shape[0] == int(keep.sum())
    with pytest.raises(ExportError, match="re-export with a lower"):
        runner.predict(images["coffee"], score_thresh=0.0)
    with pytest.raises(ExportError, match="no such exported model"):
        pcd.load_exported(tmp_path / "missing.onnx")
    not_exported = tmp_path / "weights.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(not_exported))
    with pytest.raises(ExportError, match="can run code when it is loaded"):
        pcd.load_exported(not_exported)  # not exported here: untrusted
    with pytest.raises(ExportError, match="without pycontrast_det metadata"):
        pcd.load_exported(not_exported, trusted=True)
    with pytest.raises(ExportError, match="unknown export format"):
        pcd.export(models["fpn"], tmp_path / "x.bin", format="tflite")


def test_missing_onnxruntime_is_a_one_line_error(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an environment without it gives on import
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"not a zip: an ONNX protobuf")
    with pytest.raises(MissingDependencyError) as info:
        pcd.load_exported(fake)
    message = str(info.value)
    assert "\n" not in message and "onnxruntime" in message and "pip install 'pycontrast-det[export]'" in message


def test_export_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, capsys) -> None:
    """Unknown format, an --out that cannot be written, a missing file, a checkpoint without a config, an entry
    without a published detector: one line naming it, exit 2, before any model is loaded."""
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("")
    bare = tmp_path / "bare.pth"
    torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(1),
                        "roi_heads.box_predictor.cls_score.weight": torch.zeros(1)}}, bare)  # a detector: has heads
    out = ["--out", str(tmp_path / "x.onnx")]
    cases = [
        (["mask_rcnn_fpn_1x_rand", "--format", "tflite", *out], "unknown --format 'tflite': use onnx or torchscript"),
        (["mask_rcnn_fpn_1x_rand", "--format", "onnx", "--out", str(in_the_way / "x.onnx")],
         f"{in_the_way} is a file, not a folder"),
        (["mask_rcnn_fpn_1x_rand", "--format", "onnx", "--out", str(tmp_path)], f"--out {tmp_path} is a folder"),
        ([str(tmp_path / "missing.pth"), "--format", "onnx", *out], f"{tmp_path / 'missing.pth'}: no such"),
        ([str(bare), "--format", "onnx", *out], "--config CFG"),
        (["mask_rcnn_c4_1x_infomin", "--format", "onnx", *out], "mask_rcnn_c4_1x_infomin has no published detector"),
        (["--format", "onnx", *out], "give ENTRY|CHECKPOINT, or --config and --weights"),
    ]
    for argv, message in cases:
        assert main(["export", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("pycontrast-zoo export: error: ") and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "bare.pth"]


@pytest.mark.parametrize("size", [(256, 320), (300, 451), (186, 372), (97, 1201), (1000, 1500), (5, 7)])
def test_tensor_resize_is_bit_exact_with_pil(size: tuple[int, int]) -> None:
    """The exported graph's resize equals detectron2's PIL resize, up- and downscaling, both size caps."""
    rng = np.random.default_rng(sum(size))
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    for short, max_size in ((800, 1333), (224, 320)):
        expected = resize_shortest_edge(image, short, max_size)
        got = resize_shortest_edge_tensor(torch.from_numpy(image), short, max_size)
        assert got.dtype == torch.float32 and got.shape == expected.shape
        assert np.array_equal(got.numpy().astype(np.uint8), expected)
        h, w = traced_scaled_size(torch.tensor(size[0]), torch.tensor(size[1]), short, max_size)
        assert (int(h), int(w)) == scaled_size(*size, short, max_size)


def test_metadata_is_stored_as_json(models, exported) -> None:
    path, _ = exported("fpn", "torchscript")
    extra = {"pycontrast_det.json": ""}
    torch.jit.load(str(path), _extra_files=extra)
    stored = json.loads(extra["pycontrast_det.json"])
    assert stored["class_names"] == models["fpn"].class_names
    assert stored["category_ids"] == list(models["fpn"].classes.ids) and stored["category_ids"][-1] == 90  # COCO's
    assert stored["outputs"] == ["boxes", "scores", "labels", "masks"] and stored["input_format"] == "RGB"


@pytest.mark.parametrize("format", ["torchscript", "onnx"])
def test_predict_takes_an_exported_file_as_its_model(exported, d2_fixtures: Path, tmp_path: Path, format) -> None:
    path, _ = exported("fpn", format)
    image = d2_fixtures / "images" / "chelsea.png"
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        assert main(["predict", str(path), str(image), "--out", str(tmp_path), "--no-draw"]) == 0
    assert f"model: {path} (exported, {format})" in output.getvalue()
    (line,) = [json.loads(text) for text in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    expected = pcd.load_exported(path).predict(str(image))
    assert [r["score"] for r in line["detections"]] == pytest.approx(expected["scores"].tolist(), abs=1e-6)
    assert {r["file_name"] for r in line["detections"]} == {"chelsea.png"} and len(expected["scores"]) > 0
    assert json.loads((tmp_path / "results.json").read_text()) == line["detections"]


def test_predict_refuses_a_torchscript_file_not_exported_here_unless_trusted(exported, d2_fixtures: Path,
                                                                              tmp_path: Path, monkeypatch,
                                                                              capsys) -> None:
    path, _ = exported("fpn", "torchscript")
    monkeypatch.setenv("PYCONTRAST_ZOO_HOME", str(tmp_path / "another_cache"))  # its trust record is empty
    image = str(d2_fixtures / "images" / "chelsea.png")
    assert main(["predict", str(path), image, "--out", str(tmp_path / "no"), "--no-draw"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "can run code when it is loaded" in line and "--trust" in line and not (tmp_path / "no").exists()
    assert main(["predict", str(path), image, "--out", str(tmp_path / "yes"), "--no-draw", "--trust"]) == 0
    assert (tmp_path / "yes" / "predictions.jsonl").read_text().count("\n") == 1


def test_evaluate_takes_an_exported_file(exported, d2_fixtures: Path, tmp_path: Path, capsys) -> None:
    from pycontrast_det.coco_classes import COCO_CATEGORIES

    path, _ = exported("fpn", "torchscript")
    images = [{"id": 501, "file_name": "chelsea.png", "height": 300, "width": 451},
              {"id": 502, "file_name": "coffee.png", "height": 400, "width": 600}]
    cat = [40.0, 20.0, 300.0, 280.0]  # a rough box around the cat
    annotations = [{"id": 1, "image_id": 501, "category_id": 17, "iscrowd": 0, "area": 260.0 * 260.0,
                    "bbox": [40.0, 20.0, 260.0, 260.0],
                    "segmentation": [[cat[0], cat[1], cat[2], cat[1], cat[2], cat[3], cat[0], cat[3]]]}]
    dataset = tmp_path / "annotations.json"
    dataset.write_text(json.dumps({"images": images, "annotations": annotations,
                                   "categories": [{"id": i, "name": n} for i, n in COCO_CATEGORIES]}))
    spec = f"{dataset}:{d2_fixtures / 'images'}"
    assert main(["evaluate", str(path), "--dataset", spec, "--output", str(tmp_path / "eval")]) == 0
    assert f"{path} on " in capsys.readouterr().out
    scored = json.loads((tmp_path / "eval" / "coco_instances_results.json").read_text())
    expected = pcd.load_exported(path).predict(str(d2_fixtures / "images" / "chelsea.png"))
    on_cat = sorted(r["score"] for r in scored if r["image_id"] == 501)
    assert on_cat == pytest.approx(sorted(expected["scores"].tolist()), abs=1e-6) and on_cat
    assert main(["evaluate", str(path), "--config", "x.yaml"]) == 2
    assert "drop --config" in capsys.readouterr().err
