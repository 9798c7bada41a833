"""``pycontrast-zoo push`` / ``model.push_to_hub`` / ``model.save_pretrained``: a short fine-tuning run of a zoo
entry pushed to the local Hub, loaded back with ``pcd.load("hf://me/run")`` in a fresh process (same detections and
class names); its card (model-index with the measured AP, per class; base_model: the entry's Hub repository);
--private, --create-pr and --revision as the Hub receives them; the token reaching the server and no written file."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from pycontrast_det.engine import RunOptions
import pycontrast_det as pcd
from pycontrast_det.checkpoints.published import read_checksums
from pycontrast_det.cli import main
from pycontrast_det.recipes.finetune import finetune, plan_finetune
from pycontrast_det.zoo import entry_record

from http_server import FileServer
from hub_server import FakeHub
from test_finetune import TINY, make_dataset

ENTRY = "mask_rcnn_fpn_1x_infomin"
ENTRY_REPO = "org/mask_rcnn_fpn_1x_infomin"  # where the user manifest says the entry is published on the Hub
TOKEN = "hf_pushTESTtoken0123456789abcdef"
CLASSES = ["blorb", "zint", "quaggle"]
PUSHED_FILES = {"model.safetensors", "config.yaml", "classes.json", "log.txt", "metrics.json", "README.md",
                "SHA256SUMS"}


#: The import names of the packages pyproject.toml declares as dependencies.
DECLARED = {"torch", "torchvision", "numpy", "PIL", "pycocotools", "huggingface_hub", "requests", "tqdm", "yaml",
            "filelock", "safetensors", "matplotlib"}


def _hubconf():
    spec = importlib.util.spec_from_file_location("hubconf", Path(__file__).resolve().parents[1] / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _push(*args: str) -> tuple[int, str]:
    out = StringIO()
    with redirect_stdout(out):
        code = main(["push", *args])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, d2_fixtures):
    """ENTRY (the detectron2 fixture weights, served over HTTP, listed as published at hf://ENTRY_REPO) fine-tuned
    for 2 iterations on a 3-class dataset and evaluated, then pushed to me/run on a local Hub with HF_TOKEN set."""
    base = tmp_path_factory.mktemp("push")
    weights = (d2_fixtures / "fpn" / "weights_fp16.pth").read_bytes()
    with FileServer() as server, pytest.MonkeyPatch.context() as mp:
        url = server.add("/model_final.pth", weights)
        manifest = base / "zoo-mine.yaml"
        record = {**entry_record(pcd.get_entry(ENTRY)), "model": {
            "urls": [url, f"hf://{ENTRY_REPO}/model_final.pth"], "sha256": hashlib.sha256(weights).hexdigest(),
            "size_bytes": len(weights), "format": "detectron2"}}
        manifest.write_text(json.dumps({"schema_version": 1, "merge": True, "entries": {ENTRY: record}}))
        mp.setenv("PYCONTRAST_ZOO_MANIFEST", str(manifest))
        mp.setenv("PYCONTRAST_ZOO_HOME", str(base / "home"))
        mp.setenv("HF_HUB_CACHE", str(base / "hf-cache"))
        mp.setenv("HF_HUB_DISABLE_XET", "1")
        mp.setenv("HF_TOKEN", TOKEN)
        for var in ("PYCONTRAST_ZOO_ENDPOINT", "PYCONTRAST_ZOO_OFFLINE", "HF_HUB_OFFLINE"):
            mp.delenv(var, raising=False)
        dataset = make_dataset(base / "blorbs")
        run = base / "run"
        plan = plan_finetune(ENTRY, dataset, schedule="2", options=RunOptions(output_dir=run),
                             overrides=TINY + ["SOLVER.STEPS", "()"])
        finetune(plan, log_period=1, evaluate_at_end=True, stream=StringIO())
        (base / "hub").mkdir()
        with FakeHub(base / "hub") as hub:
            mp.setenv("HF_ENDPOINT", hub.base)
            code, out = _push(str(run), "--repo", "me/run")
            assert code == 0
            yield SimpleNamespace(base=base, run=run, dataset=dataset, hub=hub, out=out, mp=mp)


def _detections(model, image: Path) -> dict:
    found = model.predict(str(image), score_thresh=0.0)
    return {"boxes": found["boxes"].tolist(), "scores": found["scores"].tolist(), "labels": found["labels"].tolist(),
            "names": found["label_names"], "classes": model.class_names, "ids": list(model.classes.ids)}


def test_pushed_run_loads_in_a_fresh_process_with_the_same_detections(pushed):
    image = pushed.dataset / "val" / "img_1.png"
    expected = _detections(pcd.load(pushed.run / "model_final.pth"), image)
    assert expected["classes"] == CLASSES and expected["ids"] == [3, 7, 12] and expected["scores"]
    script = ("import json, sys, pycontrast_det as pcd\n"
              "model = pcd.load('hf://me/run')\n"
              "found = model.predict(sys.argv[1], score_thresh=0.0)\n"
              "print(json.dumps({'boxes': found['boxes'].tolist(), 'scores': found['scores'].tolist(), "
              "'labels': found['labels'].tolist(), 'names': found['label_names'], 'classes': model.class_names, "
              "'ids': list(model.classes.ids)}))\n"
              f"imported = {{name.split('.')[0] for name in sys.modules}} & set({sorted(DECLARED)!r})\n"
              "print(json.dumps(sorted(imported)))\n")
    env = {**os.environ, "HF_HUB_CACHE": str(pushed.base / "fresh-cache"), "PYCONTRAST_ZOO_HOME":
           str(pushed.base / "fresh-home")}
    env.pop("PYCONTRAST_ZOO_MANIFEST", None)
    done = subprocess.run([sys.executable, "-c", script, str(image)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    found, imported = done.stdout.splitlines()[-2:]
    assert json.loads(found) == expected
    # hubconf's dependencies are exactly the declared packages that loading from the Hub and predicting import
    assert json.loads(imported) == sorted(_hubconf().dependencies)


def test_the_repository_holds_weights_config_classes_log_metrics_and_checksums(pushed):
    repo = pushed.base / "hub" / "me" / "run"
    assert {p.name for p in repo.iterdir()} == PUSHED_FILES
    sums = read_checksums(repo / "SHA256SUMS", "SHA256SUMS")
    assert set(sums) == PUSHED_FILES - {"SHA256SUMS"}
    assert all(hashlib.sha256((repo / name).read_bytes()).hexdigest() == sha for name, sha in sums.items())
    assert json.loads((repo / "classes.json").read_text()) == {"names": CLASSES, "ids": [3, 7, 12]}
    assert (repo / "log.txt").read_bytes() == (pushed.run / "log.txt").read_bytes()
    assert (repo / "metrics.json").read_bytes() == (pushed.run / "metrics.json").read_bytes()
    assert yaml.safe_load((repo / "config.yaml").read_text())["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 3


def test_the_card_carries_the_measured_ap_per_class_and_the_base_model(pushed):
    card = (pushed.base / "hub" / "me" / "run" / "README.md").read_text()
    front = _front_matter(card)
    assert front["base_model"] == ENTRY_REPO and front["library_name"] == "pycontrast-det"
    measured = [json.loads(line) for line in (pushed.run / "metrics.json").read_text().splitlines()
                if "bbox/AP" in line][-1]
    (index,) = front["model-index"]
    metrics = {(r["task"]["type"], m["name"]): m["value"] for r in index["results"] for m in r["metrics"]}
    assert metrics[("object-detection", "box AP")] == round(measured["bbox/AP"], 3)
    assert metrics[("instance-segmentation", "mask AP")] == round(measured["segm/AP"], 3)
    for name in CLASSES:
        assert metrics[("object-detection", f"box AP ({name})")] == round(measured[f"bbox/AP-{name}"], 3)
    assert all(r["dataset"]["name"] == "blorbs" for r in index["results"])  # the folder's name, no local path
    assert f"zoo entry `{ENTRY}`" in card and 'pcd.load("hf://me/run")' in card
    assert "Schedule: 2 iterations" in card and str(pushed.base) not in card
    assert f"box AP {measured['bbox/AP']:.1f} on blorbs; base_model {ENTRY_REPO}" in pushed.out


def test_the_token_reaches_the_hub_and_no_written_file(pushed):
    commits = [r for r in pushed.hub.requests if r.method == "POST" and "/commit/" in r.path]
    assert commits and all(r.authorization == f"Bearer {TOKEN}" for r in commits)
    assert TOKEN not in pushed.out
    written = [p for p in pushed.base.rglob("*") if p.is_file()]  # the run, the Hub, both HF caches, the zoo home
    assert len(written) > 20
    assert not [p for p in written if TOKEN.encode() in p.read_bytes()]


def _private(request: dict) -> bool:
    """Whether a create-repository request asks for a private repository (either field huggingface_hub sends)."""
    return request.get("private") is True or request.get("visibility") == "private"


def test_private_create_pr_and_revision_reach_the_hub(pushed):
    hub = pushed.hub
    assert not _private(hub.created["me/run"])
    code, _ = _push(str(pushed.run / "model_final.pth"), "--repo", "hf://me/secret-run", "--private")
    assert code == 0 and _private(hub.created["me/secret-run"])
    main_card = (pushed.base / "hub" / "me" / "run" / "README.md").read_bytes()
    code, out = _push(str(pushed.run), "--repo", "me/run", "--create-pr", "--message", "better")
    assert code == 0 and hub.commit_log[-1] == ("me/run", "main", True) and "/discussions/1" in out
    assert (pushed.base / "hub" / ".refs" / "me" / "run" / "refs" / "pr" / "1" / "README.md").is_file()
    assert (pushed.base / "hub" / "me" / "run" / "README.md").read_bytes() == main_card  # main is untouched
    code, _ = _push(str(pushed.run), "--repo", "me/run", "--revision", "dev")
    assert code == 0 and "dev" in hub.branches["me/run"] and hub.commit_log[-1] == ("me/run", "dev", False)


@pytest.mark.parametrize("args, message", [
    (["--repo", "me"], "--repo 'me': give ORG/NAME"),
    (["--repo", "me/a b"], "--repo 'me/a b': give ORG/NAME"),
])
def test_a_bad_repository_name_is_one_line(pushed, args, message, capsys):
    assert main(["push", str(pushed.run), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["push", str(tmp_path / "nothing"), "--repo", "me/x"]) == 2
    assert "no such run folder or checkpoint file" in capsys.readouterr().err
    assert main(["push", str(tmp_path), "--repo", "me/x"]) == 2
    assert "no checkpoint (model_final.pth not found)" in capsys.readouterr().err


def test_save_pretrained_folder_loads_back(pushed, tmp_path):
    model = pcd.load(pushed.run / "model_final.pth")
    folder = model.save_pretrained(tmp_path / "mine")
    again = pcd.load(str(folder))
    assert again.class_names == CLASSES and again.classes.ids == (3, 7, 12)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    assert "model-index" not in _front_matter((folder / "README.md").read_text())  # nothing measured: no results
