"""``pycontrast-zoo predict`` on folders and globs: recursion by image extension, a non-image and an unreadable
image, an EXIF-rotated JPEG read as the Python API reads it (same detections), ``--no-draw``, streamed JSON lines
and COCO results, ``--dataset`` image ids, and peak memory that does not grow with the number of images."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pycontrast_det as pcd
from pycontrast_det.cli import main
from pycontrast_det.cli.predict_cmd import LINES_FILE, RESULTS_FILE
from pycontrast_det.cli.predict_inputs import expand_inputs

SMALL = ["INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192", "MODEL.RPN.POST_NMS_TOPK_TEST", "100"]
EXIF_ORIENTATION = 0x0112


def _model_args(d2_fixtures: Path) -> list[str]:
    fpn = d2_fixtures / "fpn"
    return ["--config", str(fpn / "config.yaml"), "--weights", str(fpn / "weights_fp16.pth"), "--device", "cpu"]


@pytest.fixture(scope="module")
def model(d2_fixtures):
    fpn = d2_fixtures / "fpn"
    return pcd.load(fpn / "config.yaml", weights=fpn / "weights_fp16.pth", device="cpu", overrides=SMALL)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, d2_fixtures) -> Path:
    """photos/: two PNGs, notes.txt (not an image), broken.jpg (not readable), trip/rotated.jpg (the cat stored
    sideways with EXIF orientation 6, i.e. shown upright) and trip/deeper/coffee.png."""
    root = tmp_path_factory.mktemp("photos") / "photos"
    (root / "trip" / "deeper").mkdir(parents=True)
    images = d2_fixtures / "images"
    for name in ("shapes_0000", "shapes_0001"):
        Image.open(images / f"{name}.png").save(root / f"{name}.png")
    Image.open(images / "coffee.png").save(root / "trip" / "deeper" / "coffee.png")
    (root / "notes.txt").write_text("not an image")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    upright = Image.open(images / "chelsea.png").convert("RGB")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 CW to display": the stored pixels are the upright image turned CCW
    upright.transpose(Image.Transpose.ROTATE_90).save(root / "trip" / "rotated.jpg", quality=95, exif=exif)
    return root


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / LINES_FILE).read_text().splitlines()]


def test_folders_and_globs_expand_to_images_by_extension(photos):
    found, problems = expand_inputs([str(photos)])
    assert [p.relative_to(photos).as_posix() for p in found] == [
        "broken.jpg", "shapes_0000.png", "shapes_0001.png", "trip/deeper/coffee.png", "trip/rotated.jpg"]
    assert problems == []
    found, _ = expand_inputs([str(photos / "**" / "*.png"), str(photos / "shapes_0000.png")])  # each image once
    assert [p.name for p in found] == ["shapes_0000.png", "shapes_0001.png", "coffee.png"]
    found, problems = expand_inputs([str(photos / "*.gif"), str(photos / "nothing")])
    assert found == [] and [p.split(": ", 1)[1] for p in problems] == ["no image file matches",
                                                                       "no such file or folder"]


def test_predict_a_folder_streams_lines_pngs_and_results(photos, model, d2_fixtures, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["predict", str(photos), "--out", str(out), *_model_args(d2_fixtures), "--score-thresh", "0.3",
                 *SMALL])
    assert code == 2  # broken.jpg was skipped, and said so
    err = capsys.readouterr().err
    assert f"{photos / 'broken.jpg'}: cannot read image" in err and "notes.txt" not in err
    lines = _lines(out)
    assert [Path(line["image"]).name for line in lines] == ["shapes_0000.png", "shapes_0001.png", "coffee.png",
                                                           "rotated.jpg"]
    assert sorted(p.name for p in out.glob("*.png")) == ["coffee.png", "rotated.png", "shapes_0000.png",
                                                         "shapes_0001.png"]
    results = json.loads((out / RESULTS_FILE).read_text())
    assert results == [record for line in lines for record in line["detections"]] and results
    # the EXIF-rotated JPEG: read upright as the Python API reads it, so the same detections
    rotated = next(line for line in lines if line["image"].endswith("rotated.jpg"))
    assert (rotated["height"], rotated["width"]) == (300, 451)
    assert Image.open(out / "rotated.png").size == (451, 300)
    expected = model.predict(str(photos / "trip" / "rotated.jpg"), score_thresh=0.3)
    assert len(expected["scores"]) > 0
    assert [r["score"] for r in rotated["detections"]] == pytest.approx(expected["scores"].tolist(), abs=1e-6)
    boxes = expected["boxes"].numpy()
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    np.testing.assert_allclose([r["bbox"] for r in rotated["detections"]], xywh, atol=1e-3)
    sideways = model.predict(np.asarray(Image.open(photos / "trip" / "rotated.jpg").convert("RGB")),
                             score_thresh=0.3)  # the stored pixels, orientation ignored: other detections
    assert sideways["boxes"].shape != expected["boxes"].shape or not np.allclose(sideways["boxes"], boxes)


def test_no_draw_and_dataset_image_ids(photos, d2_fixtures, tmp_path):
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps({"images": [{"id": 4242, "file_name": "trip/rotated.jpg"},
                                                  {"id": 77, "file_name": "elsewhere/shapes_0001.png"}],
                                       "annotations": [], "categories": [{"id": 1, "name": "person"}]}))
    out = tmp_path / "out"
    code = main(["predict", str(photos / "trip" / "*.jpg"), str(photos / "shapes_0001.png"), "--no-draw",
                 "--dataset", f"{annotations}:{photos}", "--out", str(out), *_model_args(d2_fixtures), *SMALL])
    assert code == 0
    assert not list(out.glob("*.png"))
    assert [(Path(line["image"]).name, line["image_id"]) for line in _lines(out)] == [("rotated.jpg", 4242),
                                                                                     ("shapes_0001.png", 77)]
    assert {r["image_id"] for r in json.loads((out / RESULTS_FILE).read_text())} <= {4242, 77}


def test_an_input_that_gives_no_image_is_one_line(tmp_path, d2_fixtures, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty"), str(tmp_path / "*.png"), *_model_args(d2_fixtures)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a folder with no image files" in err and "no image file matches" in err


_PEAKS = """
import re, sys, threading, time
from pathlib import Path
from pycontrast_det.cli import main

def high_water_kb():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))

folder, out, *common = sys.argv[1:]
lines, early = Path(out) / "predictions.jsonl", []

def watch():  # the peak once 5 images are done (the model loaded, the first batches run)
    while not early:
        if lines.is_file() and lines.read_text().count("\\n") >= 5:
            early.append(high_water_kb())
        time.sleep(0.01)

threading.Thread(target=watch, daemon=True).start()
code = main(["predict", folder, "--out", out, *common])
print("CODE", code, "EARLY_KB", early[0] if early else -1, "END_KB", high_water_kb())
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak RSS from /proc (Linux)")
def test_memory_does_not_grow_with_the_number_of_images(tmp_path, d2_fixtures):
    """The peak RSS after 50 images is within 40 MiB of the peak after the first 5 (the same 240 x 320 photo with
    noise, 20 full-size masks each: holding the predictions, images and drawings of 50 would take about 100 MiB)."""
    rng = np.random.default_rng(0)
    base = np.asarray(Image.open(d2_fixtures / "images" / "coffee.png").convert("RGB").resize((320, 240)))
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(50):
        noisy = np.clip(base.astype(np.int16) + rng.integers(-8, 9, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(photos / f"{i:03d}.png")
    common = [*_model_args(d2_fixtures), "--score-thresh", "0.0", "--quiet", "INPUT.MIN_SIZE_TEST", "64",
              "INPUT.MAX_SIZE_TEST", "96", "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "40",
              "TEST.DETECTIONS_PER_IMAGE", "20"]
    done = subprocess.run([sys.executable, "-c", _PEAKS, str(photos), str(tmp_path / "out"), *common],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    words = done.stdout.split()
    code, early, end = (int(words[words.index(key) + 1]) for key in ("CODE", "EARLY_KB", "END_KB"))
    assert code == 0 and early > 0, done.stdout
    lines = (tmp_path / "out" / LINES_FILE).read_text().splitlines()
    assert len(lines) == 50 and sum(len(json.loads(line)["detections"]) for line in lines) == 50 * 20
    assert end - early < 40 * 1024, (early, end)
