"""``pycontrast-zoo publish``: the tree (model cards, model.safetensors, configs, logs, pretrains, SHA256SUMS,
zoo.yaml), its checksum rule, loading from it offline, through ``hf://`` and as a mirror, the dry run, the
upload to a local Hub, and merging what was published back into a manifest."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import shutil
import socket
import threading
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import pycontrast_det as pcd
from pycontrast_det import resources, store
from pycontrast_det.checkpoints import sources
from pycontrast_det.checkpoints.published import resolve_published
from pycontrast_det.cli import main
from pycontrast_det.errors import ChecksumError, ManifestError, PublishError
from pycontrast_det.publish import parse_target
from pycontrast_det.publish.upload import repo_files
from pycontrast_det.zoo import FileRef, entry_record, load_manifest

from http_server import FileServer
from hub_server import FakeHub

ENTRY, C4, PRETRAIN = "mask_rcnn_fpn_1x_infomin", "mask_rcnn_c4_1x_infomin", "infomin"
SMALL = ["INPUT.MIN_SIZE_TEST", "320", "INPUT.MAX_SIZE_TEST", "512"]
ORIGINAL = {  # the shipped URLs of the two entries' files, served from 127.0.0.1 in these tests
    "model": "https://www.dropbox.com/s/trn58ixmgb4ecnh/model_final.pth?dl=1",
    "log": "https://www.dropbox.com/s/g78b0awygmmnohd/log.txt?dl=1",
    "pretrain": "https://www.dropbox.com/sh/87d24jqsl6ra7t2/AACgeWc3nQ4P4zUh48KWqhxBa/InfoMin_200.pth?dl=1",
}
TREE = {f"{ENTRY}/{name}" for name in ("README.md", "config.yaml", "model.safetensors", "log.txt", "SHA256SUMS")} | \
    {f"{C4}/{name}" for name in ("README.md", "config.yaml", "SHA256SUMS")} | \
    {f"{PRETRAIN}/{name}" for name in ("InfoMin_200.pth", "README.md", "SHA256SUMS")} | {"zoo.yaml", "README.md"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def published(tmp_path_factory, d2_fixtures):
    """One publish of ENTRY (detectron2 fixture weights inside a training checkpoint with optimizer state,
    served over HTTP with no published checksum) and C4 (config only; its pretrain) ``--to DIR --repo org/zoo``."""
    base = tmp_path_factory.mktemp("publish")
    state = torch.load(d2_fixtures / "fpn" / "weights_fp16.pth", map_location="cpu", weights_only=True)["model"]
    checkpoint = io.BytesIO()
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.02}]}, "iteration": 89999},
               checkpoint)
    pretrain = io.BytesIO()
    torch.save({"model": {"module.encoder.conv1.weight": torch.ones(4, 3, 7, 7)}, "epoch": 200}, pretrain)
    served = {"model": checkpoint.getvalue(), "log": b"[06/01 10:00:00 d2.engine.hooks]: iter: 19  loss: 2.1\n",
              "pretrain": pretrain.getvalue()}
    with FileServer() as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYCONTRAST_ZOO_HOME", str(base / "home"))
        for var in ("PYCONTRAST_ZOO_MANIFEST", "PYCONTRAST_ZOO_ENDPOINT", "PYCONTRAST_ZOO_OFFLINE", "HF_HUB_OFFLINE"):
            mp.delenv(var, raising=False)
        text = resources.manifest_path().read_text(encoding="utf-8")
        urls = {}
        for role, url in ORIGINAL.items():
            urls[role] = server.add("/" + url.split("/", 3)[3].split("?")[0], served[role])
            text = text.replace(url, urls[role])
        manifest = base / "zoo-test.yaml"  # the shipped manifest, its three files served from here
        manifest.write_text(text, encoding="utf-8")
        out = base / "tree"
        code = main(["--manifest", str(manifest), "publish", ENTRY, C4, "--to", str(out), "--repo", "org/zoo",
                     "--layout", "folders",
                     "--fragment", str(base / "fragment.yaml"), "--quiet"])
        assert code == 0
        yield SimpleNamespace(base=base, home=base / "home", tree=out, manifest=manifest,
                              fragment=base / "fragment.yaml",
                              server=server, urls=urls, served=served, state=state)


@pytest.fixture(scope="module")
def reference(published, d2_fixtures):
    """Detections of the original weights (the served checkpoint) on a small fixture image."""
    image = d2_fixtures / "images" / "shapes_0000.png"
    original = published.base / "model_final.pth"
    original.write_bytes(published.served["model"])
    model = pcd.load(str(pcd.get_entry(ENTRY).config_path), weights=str(original), overrides=SMALL)
    return image, model.predict(str(image))


def _assert_same_detections(got: dict, expected: dict) -> None:
    assert len(expected["scores"]) > 0
    for key in ("boxes", "scores", "labels", "masks"):
        assert torch.equal(got[key], expected[key]), key


@pytest.fixture
def hub(published, tmp_path, monkeypatch):
    """A local Hub serving the published tree as the repository org/zoo (HF_ENDPOINT, fresh HF cache)."""
    (tmp_path / "hub" / "org").mkdir(parents=True)
    shutil.copytree(published.tree, tmp_path / "hub" / "org" / "zoo")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    with FakeHub(tmp_path / "hub") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.base)
        yield server


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_tree_cards_and_checksums(published):
    files = _tree_files(published.tree)
    assert set(files) == TREE
    meta = _front_matter(files[f"{ENTRY}/README.md"].decode())
    assert meta["library_name"] == "pycontrast-det" and meta["pipeline_tag"] == "object-detection"
    assert meta["datasets"] == ["coco"] and meta["license"] == "bsd-2-clause" and "infomin" in meta["tags"]
    [index] = meta["model-index"]
    assert index["name"] == ENTRY
    got = {r["task"]["type"]: (r["dataset"]["name"], r["metrics"][0]["name"], r["metrics"][0]["value"])
           for r in index["results"]}
    assert got == {"object-detection": ("COCO val2017", "box AP", 40.6),
                   "instance-segmentation": ("COCO val2017", "mask AP", 36.7)}
    body = files[f"{ENTRY}/README.md"].decode()
    weights = files[f"{ENTRY}/model.safetensors"]
    assert f"| `model.safetensors` | {len(weights)} | `{_sha(weights)}` |" in body
    assert 'pcd.load("hf://org/zoo/mask_rcnn_fpn_1x_infomin")' in body and "tian2020makes" in body
    assert "90000 iterations" in body and "coco_2017_train" in body  # from the entry's effective config
    c4 = _front_matter(files[f"{C4}/README.md"].decode())["model-index"][0]["results"]
    assert [r["metrics"][0]["value"] for r in c4] == [39.0, 34.1]
    assert "No detector weights were published" in files[f"{C4}/README.md"].decode()
    index_meta = _front_matter(files["README.md"].decode())
    assert [m["name"] for m in index_meta["model-index"]] == [ENTRY, C4]
    for folder in (ENTRY, C4, PRETRAIN):  # SHA256SUMS: every other file of its folder, right checksums
        listed = dict(reversed(line.split("  ")) for line in files[f"{folder}/SHA256SUMS"].decode().splitlines())
        assert set(listed) == {p.split("/")[1] for p in files if p.startswith(folder + "/")} - {"SHA256SUMS"}
        assert all(_sha(files[f"{folder}/{name}"]) == sha for name, sha in listed.items())
    assert pcd.load_config(published.tree / ENTRY / "config.yaml") == pcd.load_config(pcd.get_entry(ENTRY).config_path)


def test_model_safetensors_holds_exactly_the_detectron2_weights(published):
    from safetensors import safe_open

    path = published.tree / ENTRY / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(published.state)  # no optimizer, scheduler or iteration
        for key, value in published.state.items():
            assert torch.equal(f.get_tensor(key), value), key
        meta = json.loads(f.metadata()["pycontrast_det"])
        assert meta == {"entry": ENTRY, "format_version": "1", "source_format": "detectron2",
                        "source_sha256": _sha(published.served["model"])}

    zoo = load_manifest([published.tree / "zoo.yaml"])
    entry = zoo.entry(ENTRY)
    data = path.read_bytes()
    assert (entry.model.sha256, entry.model.size_bytes, entry.model.format) == (_sha(data), len(data), "safetensors")
    assert entry.model.urls == (str(path), f"hf://org/zoo/{ENTRY}/model.safetensors")
    # the original checkpoint keeps its own URL and checksum (vouched for: one whole download from that URL)
    [original] = entry.model_alternatives
    assert original.urls == (published.urls["model"],) and original.format == "detectron2"
    assert (original.sha256, original.size_bytes) == (_sha(published.served["model"]), len(published.served["model"]))
    assert entry.log.urls == (str(published.tree / ENTRY / "log.txt"), f"hf://org/zoo/{ENTRY}/log.txt",
                              published.urls["log"])
    assert entry.log.sha256 == _sha(published.served["log"])
    assert zoo.pretrain(PRETRAIN).file.urls[-1] == published.urls["pretrain"]
    assert zoo.entry(C4).model is None and not zoo.entry(C4).published


def test_every_url_serves_its_checksum_and_the_store_refuses_other_bytes(published, hub):
    zoo = load_manifest([published.tree / "zoo.yaml"])
    entry, pretrain = zoo.entry(ENTRY), zoo.pretrain(PRETRAIN)
    records = [entry.model, *entry.model_alternatives, entry.log, pretrain.file]
    for i, file in enumerate(records):
        for j, url in enumerate(file.urls):  # each URL alone, into its own cache slot
            one = FileRef(urls=(url,), sha256=file.sha256, size_bytes=file.size_bytes, format=file.format,
                          filename=file.filename)
            assert store.hash_file(store.fetch_file(one, f"u{i}-{j}/model", quiet=True))[0] == file.sha256, url
    # one record listing the converted file's checksum with the original URL (the naive design) is refused
    naive = FileRef(urls=(published.urls["model"],), sha256=entry.model.sha256, size_bytes=None, format="safetensors",
                    filename="model.safetensors")
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        store.fetch_file(naive, "naive/model", quiet=True)
    assert not store.cache_path(naive, "naive/model").exists()


def test_offline_from_the_tree_manifest_gives_the_original_detections(published, reference, monkeypatch):
    image, expected = reference
    monkeypatch.setenv("PYCONTRAST_ZOO_MANIFEST", str(published.tree / "zoo.yaml"))
    monkeypatch.setenv("PYCONTRAST_ZOO_OFFLINE", "1")
    seen = len(published.server.requests)
    model = pcd.load(ENTRY, overrides=SMALL)
    _assert_same_detections(model.predict(str(image)), expected)
    assert len(published.server.requests) == seen
    assert store.cached_files()[0].path.name == "model.safetensors"


def test_hf_folder_loads_through_hf_endpoint(published, reference, hub):
    image, expected = reference
    model = pcd.load(f"hf://org/zoo/{ENTRY}", overrides=SMALL)
    _assert_same_detections(model.predict(str(image)), expected)
    paths = {r.path for r in hub.requests if r.method == "GET"}
    assert {f"/org/zoo/resolve/main/{ENTRY}/{name}" for name in ("SHA256SUMS", "config.yaml", "model.safetensors")} \
        <= paths

    with pytest.raises(PublishError, match="published as a config only"):
        resolve_published(f"hf://org/zoo/{C4}")
    assert resolve_published(f"hf://org/zoo/{C4}", weights=False).weights is None
    bad = hub.root / "org" / "bad"
    shutil.copytree(hub.root / "org" / "zoo", bad)
    (bad / ENTRY / "config.yaml").write_text("MODEL:\n  MASK_ON: false\n")
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        resolve_published(f"hf://org/bad/{ENTRY}")


def test_predict_evaluate_and_finetune_take_a_published_folder(published, reference, hub, tmp_path, capsys):
    """``hf://org/repo/<entry>`` as ENTRY of evaluate, and of predict with --config (the folder's detector under
    that config; ENTRY alone goes through ``pcd.load``, tested above)."""
    from pycontrast_det.coco_classes import COCO_CATEGORIES

    image, expected = reference
    folder = f"hf://org/zoo/{ENTRY}"
    assert main(["predict", folder, str(image), "--config", str(pcd.get_entry(ENTRY).config_path), "--out",
                 str(tmp_path / "predicted"), "--device", "cpu", *SMALL]) == 0
    scores = [r["score"] for r in json.loads((tmp_path / "predicted" / "results.json").read_text())]
    np.testing.assert_allclose(scores, expected["scores"].numpy(), rtol=0, atol=1e-6)
    width, height = Image.open(image).size
    annotations = tmp_path / "one.json"  # one image with one square, under COCO's categories
    annotations.write_text(json.dumps({
        "images": [{"id": 1, "file_name": image.name, "width": width, "height": height}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600,
                         "iscrowd": 0, "segmentation": [[10, 10, 50, 10, 50, 50, 10, 50]]}],
        "categories": [{"id": cid, "name": cname} for cid, cname in COCO_CATEGORIES]}))
    assert main(["evaluate", folder, "--dataset", f"{annotations}:{image.parent}", "--device", "cpu",
                 "--output", str(tmp_path / "ev"), *SMALL]) == 0
    evaluated = json.loads((tmp_path / "ev" / "coco_instances_results.json").read_text())
    np.testing.assert_allclose(sorted(r["score"] for r in evaluated), sorted(expected["scores"].tolist()), atol=1e-6)
    # finetune plans from the folder's config; its trainer loads MODEL.WEIGHTS hf://... as pcd.load does
    assert main(["finetune", folder, "--dataset", f"{annotations}:{image.parent}", "--dry-run", "--output",
                 str(tmp_path / "ft")]) == 0
    assert f"config.yaml (published folder {folder})" in capsys.readouterr().out


@pytest.fixture
def static_tree(published):
    """The tree served by Python's plain static HTTP server (any static server would do)."""
    seen: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, fmt, *args):
            seen.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Handler, directory=str(published.tree)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_the_tree_is_the_mirror_of_the_endpoint(published, static_tree, monkeypatch):
    base, seen = static_tree
    monkeypatch.setenv("PYCONTRAST_ZOO_MANIFEST", str(published.fragment))  # hf:// and original URLs only
    monkeypatch.setenv("PYCONTRAST_ZOO_ENDPOINT", base)
    requests = len(published.server.requests)
    model = sources.fetch_entry_file(ENTRY, "model", quiet=True)
    assert model.read_bytes() == (published.tree / ENTRY / "model.safetensors").read_bytes()
    assert sources.fetch_entry_file(ENTRY, "log", quiet=True).read_bytes() == published.served["log"]
    assert seen == [f"/{ENTRY}/model.safetensors", f"/{ENTRY}/log.txt"]
    assert len(published.server.requests) == requests  # nothing from the original server
    monkeypatch.setenv("PYCONTRAST_ZOO_ENDPOINT", published.tree.as_uri())  # the tree shared as a folder
    monkeypatch.setenv("PYCONTRAST_ZOO_OFFLINE", "1")
    assert sources.fetch_entry_file(ENTRY, "pretrain", quiet=True).read_bytes() == published.served["pretrain"]


def test_dry_run_to_the_hub_lists_every_file_and_touches_no_network(published, monkeypatch, tmp_path):
    monkeypatch.setenv("PYCONTRAST_ZOO_HOME", str(published.home))  # the sources are in this cache
    monkeypatch.chdir(tmp_path)
    connects: list[object] = []
    real_connect = socket.socket.connect

    def connect(sock, address):
        connects.append(address)
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    with FakeHub(tmp_path / "hub") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.base)
        requests = len(published.server.requests)
        out = io.StringIO()
        with redirect_stdout(out):
            code = main(["--manifest", str(published.manifest), "publish", ENTRY, C4, "--to", "hf://org/zoo",
                         "--layout", "folders", "--dry-run", "--quiet"])
        assert code == 0
        assert hub.requests == [] and connects == [] and len(published.server.requests) == requests
    text = out.getvalue()
    for path, data in _tree_files(published.tree).items():  # the same tree, byte for byte
        assert f"hf://org/zoo/{path}  {len(data)} bytes  sha256 {_sha(data)}" in text, path
    assert f"{len(TREE)} file(s)" in text and f"hf://org/zoo/{ENTRY}/model.safetensors" in text.split("---")[-1]
    assert list(tmp_path.iterdir()) == []  # no fragment written, no repository created


def test_upload_to_a_local_hub_then_merge_into_a_manifest(published, monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("PYCONTRAST_ZOO_HOME", str(published.home))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)  # this Hub speaks plain LFS only
    monkeypatch.chdir(tmp_path)
    with FakeHub(tmp_path / "hub") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.base)
        assert main(["--manifest", str(published.manifest), "publish", ENTRY, C4, "--to", "hf://org/zoo",
                     "--layout", "folders", "--quiet"]) == 0
        assert hub.collections == {}  # one repository: no collection
        assert _tree_files(tmp_path / "hub" / "org" / "zoo") == _tree_files(published.tree)
        commit = [r for r in hub.requests if "/commit/" in r.path]
        assert len(commit) == 1 and commit[0].authorization == "Bearer hf_test_token"
        lfs = [r.path for r in hub.requests if r.method == "PUT"]
        weights = (published.tree / ENTRY / "model.safetensors").read_bytes()
        assert f"/_lfs/{_sha(weights)}" in lfs
        assert (tmp_path / "zoo-fragment.yaml").read_text() == published.fragment.read_text()

        target = tmp_path / "zoo.yaml"
        shutil.copy(published.manifest, target)
        store.remove_cached()
        assert main(["--manifest", str(target), "pin", "--write-manifest", "--merge", "zoo-fragment.yaml",
                     "--quiet"]) == 0
    text = target.read_text()
    assert text.startswith(published.manifest.read_text().split("\n", 1)[0])  # comments kept
    zoo = load_manifest([target])
    entry = zoo.entry(ENTRY)
    assert entry.model.urls == (f"hf://org/zoo/{ENTRY}/model.safetensors",)
    assert (entry.model.sha256, entry.model.format) == (_sha(weights), "safetensors")
    assert entry.model_alternatives[0].urls == (published.urls["model"],)
    assert entry.log.urls == (f"hf://org/zoo/{ENTRY}/log.txt", published.urls["log"])
    assert zoo.pretrain(PRETRAIN).file.urls == (f"hf://org/zoo/{PRETRAIN}/InfoMin_200.pth", published.urls["pretrain"])
    assert entry_record(zoo.entry(C4)) == entry_record(load_manifest([published.manifest]).entry(C4))
    # the merge fetched and verified every published file: they are in the cache now
    assert store.cache_path(entry.model, f"{ENTRY}/model").read_bytes() == weights


def test_targets_and_layouts(capsys):
    repos = parse_target("hf://org", "repos")
    assert repos.hf_url(f"{ENTRY}/model.safetensors") == f"hf://org/{ENTRY}/model.safetensors"
    assert repos.folder_spec(ENTRY) == f"hf://org/{ENTRY}"
    folders = parse_target("hf://org/zoo")
    assert folders.hf_url(f"{ENTRY}/model.safetensors") == f"hf://org/zoo/{ENTRY}/model.safetensors"
    files = [SimpleNamespace(path=p) for p in (f"{ENTRY}/config.yaml", f"{PRETRAIN}/README.md", "zoo.yaml")]
    assert repo_files(repos, files) == {f"org/{ENTRY}": [("config.yaml", f"{ENTRY}/config.yaml")],
                                        f"org/{PRETRAIN}": [("README.md", f"{PRETRAIN}/README.md")]}
    assert repo_files(folders, files) == {"org/zoo": [(f.path, f.path) for f in files]}
    for argv, words in ((["--to", "hf://org/zoo"], "with --layout repos, give hf://ORG (one repository ORG/<name>"),
                        (["--to", "hf://org/zoo@dev"], "drop the @revision"),
                        (["--to", "out", "--fragment", "f.yaml"], "give --repo ORG (or ORG/REPO")):
        assert main(["publish", ENTRY, *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err


def _fragment(path: Path, model: object, alternatives: list | None = None) -> Path:
    record = {"detector": "fpn", "schedule": "1x", "pretrain": PRETRAIN, "config": "configs/R_50_FPN_1x_infomin.yaml",
              "box_ap": 40.6, "mask_ap": 36.7, "published": model is not None, "model": model, "log": None}
    if alternatives is not None:
        record["model_alternatives"] = alternatives
    if model is None:
        record["note"] = "config only"
    path.write_text(json.dumps({"schema_version": 1, "merge": True, "entries": {ENTRY: record}}))
    return path


def test_merge_takes_only_urls_other_machines_reach_and_leaves_the_manifest_unchanged_otherwise(tmp_path, capsys):
    target = tmp_path / "zoo.yaml"
    shutil.copy(resources.manifest_path(), target)
    before = target.read_text()
    local = {"urls": [f"{ENTRY}/model.safetensors"], "sha256": "a" * 64, "size_bytes": 10, "format": "safetensors"}
    fragment = _fragment(tmp_path / "tree-zoo.yaml", local)
    assert main(["--manifest", str(target), "pin", "--write-manifest", "--merge", str(fragment)]) == 2
    err = capsys.readouterr().err
    assert f"entries.{ENTRY}.model: lists only paths on this machine" in err and "--repo" in err
    unknown = {**local, "urls": ["https://example.invalid/model.safetensors"], "sha256": None}
    assert main(["--manifest", str(target), "pin", "--write-manifest", "--merge",
                 str(_fragment(tmp_path / "f2.yaml", unknown))]) == 2
    assert "only files published with a checksum are merged" in capsys.readouterr().err
    assert target.read_text() == before
    alone = {**local, "urls": ["https://example.invalid/model_final.pth"], "format": "detectron2"}
    with pytest.raises(ManifestError, match=f"entries.{ENTRY}.model_alternatives: alternatives of a model that is not"):
        load_manifest([_fragment(tmp_path / "f3.yaml", None, [alone])])


def test_one_repository_per_entry(published, monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("PYCONTRAST_ZOO_HOME", str(published.home))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.chdir(tmp_path)
    with FakeHub(tmp_path / "hub") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.base)
        out = io.StringIO()
        with redirect_stdout(out):  # one repository per entry is the default
            assert main(["--manifest", str(published.manifest), "publish", ENTRY, "--what", "log,pretrain",
                         "--to", "hf://org", "--quiet"]) == 0
        (slug, collection), = hub.collections.items()
        assert slug.startswith("org/") and collection["items"] == [f"org/{ENTRY}", f"org/{PRETRAIN}"]
        assert f"collection: {hub.base}/collections/{slug}" in out.getvalue()
        assert set(_tree_files(tmp_path / "hub" / "org" / ENTRY)) == {"README.md", "config.yaml", "log.txt",
                                                                      "SHA256SUMS"}
        assert set(_tree_files(tmp_path / "hub" / "org" / PRETRAIN)) == {"InfoMin_200.pth", "README.md", "SHA256SUMS"}
        assert resolve_published(f"hf://org/{ENTRY}", weights=False).config.read_bytes() == \
            (published.tree / ENTRY / "config.yaml").read_bytes()
        zoo = load_manifest([tmp_path / "zoo-fragment.yaml"])
        assert zoo.entry(ENTRY).log.urls[0] == f"hf://org/{ENTRY}/log.txt"
        monkeypatch.setenv("PYCONTRAST_ZOO_HOME", str(tmp_path / "empty-cache"))
        assert sources.fetch_entry_file(ENTRY, "log", zoo=zoo, quiet=True).read_bytes() == published.served["log"]
        assert f"/org/{ENTRY}/resolve/main/log.txt" in {r.path for r in hub.requests if r.method == "GET"}


@pytest.mark.parametrize("flag", ["--dry-run", "--weights-from-cache"])
def test_cache_only_says_what_is_missing_and_a_failed_publish_leaves_nothing(flag, tmp_path, capsys):
    out = tmp_path / "tree"
    assert main(["publish", ENTRY, "--to", str(out), flag, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "offline mode is on" not in err[0]
    assert f"{flag} reads only the cache and local files, and {ENTRY}/model (model_final.pth): it is not cached" \
        in err[0] and f"`pycontrast-zoo download {ENTRY}`" in err[0]
    assert not out.exists()  # nothing written: not even the config the tree starts with


def test_offline_mode_set_by_the_user_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYCONTRAST_ZOO_OFFLINE", "1")
    assert main(["publish", ENTRY, "--to", str(tmp_path / "tree"), "--quiet"]) == 2
    assert "offline mode is on (PYCONTRAST_ZOO_OFFLINE" in capsys.readouterr().err
    assert not (tmp_path / "tree").exists()
