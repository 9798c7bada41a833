"""torch.hub entry points (hubconf.py): listing, help text, light import, building and loading every entry."""
from __future__ import annotations

import functools
import hashlib
import http.server
import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import pycontrast_det as pcd
from pycontrast_det.errors import ChecksumError

import torch

REPO = Path(__file__).resolve().parents[1]
HUB_REPO = "pycontrast/pycontrast-det:main"  # as a user names it; served from torch.hub's cache (no network)
ENTRIES = [entry.name for entry in pcd.list_entries()]


@pytest.fixture
def hub_cache(tmp_path):
    """torch.hub's cache holding this checkout as the downloaded ``pycontrast/pycontrast-det`` main branch."""
    previous = torch.hub.get_dir()
    hub_dir = tmp_path / "hub"
    hub_dir.mkdir()
    (hub_dir / "pycontrast_pycontrast-det_main").symlink_to(REPO, target_is_directory=True)
    torch.hub.set_dir(str(hub_dir))
    yield hub_dir
    torch.hub.set_dir(previous)


@pytest.fixture
def http_root(tmp_path):
    """A real HTTP server on 127.0.0.1 serving a temporary folder; yields (folder, base URL, request log)."""
    root = tmp_path / "served"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, fmt, *args):  # record instead of printing
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()
    thread.join()


def _file_block(url: str, path: Path, fmt: str) -> dict:
    data = path.read_bytes()
    return {"urls": [url], "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data), "format": fmt}


def _write_manifest(path: Path, entries: dict | None = None, pretrains: dict | None = None) -> Path:
    """A ``merge: true`` user manifest (JSON is valid YAML) overriding some records of the shipped one."""
    body = {"schema_version": 1, "merge": True}
    if entries:
        body["entries"] = entries
    if pretrains:
        body["pretrains"] = pretrains
    path.write_text(json.dumps(body, indent=1))
    return path


@functools.lru_cache(maxsize=None)
def _reference_shapes(weights: Path, family: str) -> dict[str, tuple[int, ...]]:
    """Our state-dict names and shapes of detectron2's reference model of that family (fixture weights)."""
    state = torch.load(weights, map_location="cpu", weights_only=True)["model"]
    ours, _ = pcd.d2_to_model(state, family)
    return {key: tuple(value.shape) for key, value in ours.items()}


def test_list_shows_every_manifest_entry(hub_cache):
    listed = torch.hub.list(HUB_REPO, trust_repo=True, skip_validation=True, verbose=False)
    assert len(ENTRIES) == 22
    assert sorted(listed) == sorted(ENTRIES)  # nothing else is exposed (helpers are private)


def test_help_gives_ap_config_pretrain_and_example(hub_cache):
    zoo = pcd.load_manifest()
    for name in ENTRIES:
        entry = zoo.entry(name)
        text = torch.hub.help(HUB_REPO, name, trust_repo=True, skip_validation=True)
        assert f"box AP {entry.box_ap:.1f}" in text and f"mask AP {entry.mask_ap:.1f}" in text, name
        assert entry.config in text and f"Pretrain: {entry.pretrain} " in text, name
        assert f"Schedule: {entry.schedule}" in text, name
        assert "torch.hub.load(" in text and repr(name) in text, name
        published_note = "downloads the published detector" in text
        assert published_note == entry.published, name


def test_import_is_torch_free_and_offline(tmp_path):
    """torch.hub imports hubconf.py by path; that import must read only the manifest."""
    script = textwrap.dedent(f"""
        import importlib.util, json, sys
        events = []
        def audit(event, args):
            if event.startswith(("socket.", "urllib.", "http.")):
                events.append(event)
        sys.addaudithook(audit)
        sys.path = [p for p in sys.path if p not in ("", {str(REPO)!r})]
        spec = importlib.util.spec_from_file_location("hubconf", {str(REPO / "hubconf.py")!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        entries = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
        heavy = sorted(m for m in ("torch", "torchvision", "requests", "huggingface_hub") if m in sys.modules)
        print(json.dumps({{"entries": entries, "heavy": heavy, "network": events,
                          "deps": module.dependencies}}))
    """)
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(report["entries"]) == sorted(ENTRIES)
    assert report["heavy"] == []
    assert report["network"] == []
    assert "torch" in report["deps"] and "yaml" in report["deps"]


@pytest.mark.parametrize("name", ENTRIES)
def test_load_without_weights_builds_every_entry(name, monkeypatch, d2_fixtures):
    """pretrained=False builds the entry's architecture and fetches nothing (offline mode would refuse)."""
    monkeypatch.setenv("PYCONTRAST_ZOO_OFFLINE", "1")
    entry = pcd.get_entry(name)
    model = torch.hub.load(str(REPO), name, source="local", pretrained=False)
    assert not model.training
    expected_cfg = pcd.load_config(entry.config_path, entry.config_overrides)  # the effective config (with fixes)
    for key in ("INPUT.FORMAT", "MODEL.RESNETS.STRIDE_IN_1X1", "MODEL.PIXEL_MEAN", "MODEL.ROI_HEADS.NAME",
                "MODEL.RESNETS.NORM"):
        ours, expected = model.cfg, expected_cfg
        for part in key.split("."):
            ours, expected = ours[part], expected[part]
        assert ours == expected, key
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    # every FPN (C4) row has exactly the layers and shapes of detectron2's reference FPN (C4) model
    assert shapes == _reference_shapes(d2_fixtures / entry.detector / "weights_fp16.pth", entry.detector)


@pytest.mark.slow
def test_pretrained_fpn_entry_downloads_converts_and_loads(http_root, tmp_path, monkeypatch, d2_fixtures):
    root, base_url, requests = http_root
    served = d2_fixtures / "fpn" / "weights_fp16.pth"
    (root / "model_final.pth").symlink_to(served)
    name = "mask_rcnn_fpn_1x_infomin"
    shipped = pcd.get_entry(name)
    manifest = _write_manifest(tmp_path / "zoo-test.yaml", entries={name: {
        "detector": "fpn", "schedule": "1x", "pretrain": shipped.pretrain, "config": shipped.config,
        "box_ap": shipped.box_ap, "mask_ap": shipped.mask_ap, "published": True,
        "model": _file_block(f"{base_url}/model_final.pth", served, "detectron2"), "log": None}})
    monkeypatch.setenv("PYCONTRAST_ZOO_MANIFEST", str(manifest))

    model = torch.hub.load(str(REPO), name, source="local", pretrained=True)

    assert requests == ["/model_final.pth"]
    reference = torch.load(served, map_location="cpu", weights_only=True)["model"]
    state = model.state_dict()
    for d2_key, our_key in [
        ("backbone.bottom_up.stem.conv1.weight", "backbone.body.conv1.weight"),
        ("backbone.bottom_up.res4.2.conv2.norm.running_var", "backbone.body.layer3.2.bn2.running_var"),
        ("backbone.fpn_output3.weight", "backbone.fpn.layer_blocks.1.0.weight"),
        ("proposal_generator.rpn_head.objectness_logits.bias", "rpn.head.cls_logits.bias"),
        ("roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.weight"),
        ("roi_heads.mask_head.predictor.weight", "roi_heads.mask_predictor.mask_fcn_logits.weight"),
    ]:
        torch.testing.assert_close(state[our_key], reference[d2_key].float(), rtol=0, atol=0, msg=our_key)

    # a second load is served from the cache: no new request
    torch.hub.load(str(REPO), name, source="local", pretrained=True)
    assert requests == ["/model_final.pth"]


@pytest.mark.slow
def test_pretrained_download_is_verified(http_root, tmp_path, monkeypatch, d2_fixtures):
    """Bytes that do not match the manifest's sha256 are refused, not loaded."""
    root, base_url, requests = http_root
    served = d2_fixtures / "fpn" / "weights_fp16.pth"
    (root / "model_final.pth").symlink_to(served)
    name = "mask_rcnn_fpn_2x_moco_v2"
    shipped = pcd.get_entry(name)
    model_file = _file_block(f"{base_url}/model_final.pth", served, "detectron2")
    model_file["sha256"] = "0" * 64
    manifest = _write_manifest(tmp_path / "zoo-test.yaml", entries={name: {
        "detector": "fpn", "schedule": "2x", "pretrain": shipped.pretrain, "config": shipped.config,
        "box_ap": shipped.box_ap, "mask_ap": shipped.mask_ap, "published": True, "model": model_file, "log": None}})
    monkeypatch.setenv("PYCONTRAST_ZOO_MANIFEST", str(manifest))

    with pytest.raises(ChecksumError, match="sha256"):
        torch.hub.load(str(REPO), name, source="local", pretrained=True)
    assert requests == ["/model_final.pth"]


def _random_pycontrast_pretrain(path: Path) -> dict:
    """A PyContrast-format checkpoint of a randomly initialised torchvision ResNet-50 (fc dropped)."""
    from torchvision.models import resnet50

    torch.manual_seed(0)
    encoder = {f"module.encoder.{k}": v for k, v in resnet50().state_dict().items() if not k.startswith("fc.")}
    head = {"module.head.weight": torch.randn(128, 2048)}
    torch.save({"model": {**encoder, **head}, "epoch": 200}, path)
    return encoder


@pytest.mark.slow
def test_pretrained_c4_entry_builds_on_the_converted_pretrain(http_root, tmp_path, monkeypatch):
    """C4 rows have no published detector: pretrained=True puts the served pretrain into the backbone and res5."""
    root, base_url, requests = http_root
    encoder = _random_pycontrast_pretrain(root / "InfoMin_200.pth")
    name = "mask_rcnn_c4_1x_infomin"
    pretrain = pcd.get_pretrain(pcd.get_entry(name).pretrain)
    manifest = _write_manifest(tmp_path / "zoo-test.yaml", pretrains={pretrain.name: {
        "method": pretrain.method, "epochs": pretrain.epochs, "imagenet_top1": pretrain.imagenet_top1,
        "file": _file_block(f"{base_url}/InfoMin_200.pth", root / "InfoMin_200.pth", "pycontrast")}})
    monkeypatch.setenv("PYCONTRAST_ZOO_MANIFEST", str(manifest))

    with pytest.warns(UserWarning, match="no detector weights were published"):
        model = torch.hub.load(str(REPO), name, source="local", pretrained=True)

    assert requests == ["/InfoMin_200.pth"]
    state = model.state_dict()
    for pre_key, our_key in [
        ("conv1.weight", "backbone.body.conv1.weight"),
        ("bn1.running_mean", "backbone.body.bn1.running_mean"),
        ("layer1.0.downsample.0.weight", "backbone.body.layer1.0.downsample.0.weight"),
        ("layer3.5.bn3.weight", "backbone.body.layer3.5.bn3.weight"),
        ("layer4.0.conv2.weight", "roi_heads.res5.0.conv2.weight"),
        ("layer4.2.bn3.running_var", "roi_heads.res5.2.bn3.running_var"),
    ]:
        torch.testing.assert_close(state[our_key], encoder[f"module.encoder.{pre_key}"], rtol=0, atol=0,
                                   msg=our_key)
    # the heads are not in the pretrain: they keep their random initialisation (not zeros, not copied)
    assert state["roi_heads.box_predictor.cls_score.weight"].std() > 0
