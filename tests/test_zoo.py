"""The manifest: shipped values against PyContrast's published table, validation errors, merge rules,
queries, the generated README table, in-place checksum edits and the zoo CLI commands."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pycontrast_det import resources, store, zoo
from pycontrast_det.cli import main
from pycontrast_det.errors import ManifestError, UnknownEntryError

from http_server import FileServer

REPO = Path(__file__).resolve().parents[1]

# PyContrast's published R50-FPN table: sched, pretrain, box, mask, config, Dropbox model id, log id.
FPN_ROWS = [
    ("1x", "rand", 32.8, 29.9, "R_50_FPN_1x_rand", "szuzbuxmbglnnrj", "n2gq6s8digc034z"),
    ("1x", "supervised", 39.7, 35.9, "R_50_FPN_1x", "vunziha5hd11qki", "2lsv2knlzj54ynz"),
    ("1x", "insdis", 38.8, 35.2, "R_50_FPN_1x_infomin", "bc131tpru4iw7n1", "xsndddym1gjm0mi"),
    ("1x", "pirl", 38.6, 35.1, "R_50_FPN_1x_infomin", "li01ay7j9z7cwj3", "00tf21z5sqvzslh"),
    ("1x", "moco_v1", 39.4, 35.6, "R_50_FPN_1x_infomin", "ljs130qyj9w3zhs", "1qp52p6hahbwxq4"),
    ("1x", "infomin", 40.6, 36.7, "R_50_FPN_1x_infomin", "trn58ixmgb4ecnh", "g78b0awygmmnohd"),
    ("2x", "rand", 38.4, 34.7, "R_50_FPN_2x_rand", "s1be6i6aosvcgxp", "8qyahtv1h6hfbgy"),
    ("2x", "supervised", 41.6, 37.6, "R_50_FPN_2x", "6ekidu2z19fhe1v", "xhpefhr5gkq6yg3"),
    ("2x", "insdis", 41.3, 37.3, "R_50_FPN_2x_infomin", "m9tsvdxx9h5qa5a", "ot4lzwwicz7is4x"),
    ("2x", "pirl", 41.2, 37.4, "R_50_FPN_2x_infomin", "riiqvsnx1qk0ec4", "iuj0wqkb925ply2"),
    ("2x", "moco_v1", 41.7, 37.5, "R_50_FPN_2x_infomin", "eofvp6t9e17b9wq", "80pgilcus418iri"),
    ("2x", "moco_v2", 41.7, 37.6, "R_50_FPN_2x_infomin", "hcoastwec4al1nq", "berheqqzzxy9kos"),
    ("2x", "infomin", 42.5, 38.4, "R_50_FPN_2x_infomin", "oh0ke3sdil40kge", "qoidmj93k95rqbd"),
    ("6x", "rand", 42.7, 38.6, "R_50_FPN_6x_rand", "3t0ez4d5z06ks6y", "z5g8xigbmm05z26"),
    ("6x", "supervised", 42.6, 38.5, "R_50_FPN_6x", "6hotgcfrbluk8a4", "06d1bfz75wuqply"),
    ("6x", "infomin", 43.6, 39.2, "R_50_FPN_6x_infomin", "7xrlpd3klx0hwnj", "1rrwanmhzihtl1m"),
]
# R50-C4: config only (numbers as in the MoCo v1 paper).
C4_ROWS = [
    ("1x", "supervised", 38.2, 33.3, "R_50_C4_1x"), ("1x", "moco_v1", 38.5, 33.6, "R_50_C4_1x_infomin"),
    ("1x", "infomin", 39.0, 34.1, "R_50_C4_1x_infomin"), ("2x", "supervised", 40.0, 34.7, "R_50_C4_2x"),
    ("2x", "moco_v1", 40.7, 35.6, "R_50_C4_2x_infomin"), ("2x", "infomin", 41.3, 36.0, "R_50_C4_2x_infomin"),
]
# PyContrast's pre-trained encoders: file, epochs, ImageNet linear top-1, Dropbox token.
PRETRAINS = {
    "insdis": ("InsDis.pth", 200, 59.5, "AACcsSIt1_Njv7GsmsuzZ6Sta"),
    "cmc": ("CMC.pth", 200, 58.6, "AACYcqgM-lcG3__QIbxuM2Koa"),
    "moco_v1": ("MoCo.pth", 200, 60.8, "AAB53yJAYuCrOFluygBsVKOOa"),
    "pirl": ("PIRL.pth", 200, 61.7, "AADN4jKnvTI0U5oT6hTmQZz8a"),
    "moco_v2": ("MoCov2.pth", 200, 67.5, "AABaYuKiiZFYowa31yKeGGOQa"),
    "infomin": ("InfoMin_200.pth", 200, 70.1, "AACgeWc3nQ4P4zUh48KWqhxBa"),
    "infomin_800": ("InfoMin_800.pth", 800, 73.0, "AAAzMTynP3Qc8mIE4XWkgILUa"),
}
MOCO_RELEASES = {"moco_v1": ("moco_v1_200ep", "b251726a"), "moco_v2": ("moco_v2_200ep", "59fd9945"),
                 "moco_v2_800": ("moco_v2_800ep", "a04e12f8")}


# ------------------------------------------------------------------------------------- shipped manifest


def test_shipped_fpn_entries_match_the_published_table():
    shipped = zoo.load_manifest()
    fpn = [e for e in shipped.entries.values() if e.detector == "fpn"]
    assert [e.name for e in fpn] == [f"mask_rcnn_fpn_{s}_{p}" for s, p, *_ in FPN_ROWS]
    for entry, (sched, pre, box, mask, cfg, model_id, log_id) in zip(fpn, FPN_ROWS):
        assert (entry.schedule, entry.pretrain, entry.box_ap, entry.mask_ap) == (sched, pre, box, mask)
        assert entry.config == f"configs/{cfg}.yaml" and entry.published
        assert entry.model.urls[0] == f"https://www.dropbox.com/s/{model_id}/model_final.pth?dl=1"
        assert entry.model.published_url == f"https://www.dropbox.com/s/{model_id}/model_final.pth?dl=0"
        assert entry.log.urls[0] == f"https://www.dropbox.com/s/{log_id}/log.txt?dl=1"
        assert entry.log.published_url == f"https://www.dropbox.com/s/{log_id}/log.txt?dl=0"
        assert (entry.model.format, entry.log.format) == ("detectron2", "text")


def test_shipped_c4_entries_are_config_only():
    c4 = zoo.list_entries(detector="c4")
    assert [(e.schedule, e.pretrain, e.box_ap, e.mask_ap, Path(e.config).stem) for e in c4] == C4_ROWS
    assert all(e.model is None and e.log is None and not e.published and e.note for e in c4)
    assert len(zoo.load_manifest().entries) == 22


def test_shipped_pretrains():
    for name, (filename, epochs, top1, token) in PRETRAINS.items():
        pre = zoo.get_pretrain(name)
        assert (pre.epochs, pre.imagenet_top1, pre.file.filename) == (epochs, top1, filename)
        assert pre.file.urls[0] == f"https://www.dropbox.com/sh/87d24jqsl6ra7t2/{token}/{filename}?dl=1"
        assert pre.file.format == ("pycontrast_cmc" if name == "cmc" else "pycontrast")
    assert not zoo.get_pretrain("cmc").can_init_r50
    assert all(zoo.get_pretrain(n).can_init_r50 for n in PRETRAINS if n != "cmc")
    assert zoo.get_pretrain("rand").file is None
    supervised = zoo.get_pretrain("supervised").file
    assert supervised.urls == ("https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl",)
    assert supervised.format == "msra_c2"
    for name, (release, md5) in MOCO_RELEASES.items():
        pre = zoo.get_pretrain(name)
        moco = pre.alternatives[0] if pre.alternatives else pre.file
        assert moco.format == "moco" and moco.md5_prefix == md5
        assert moco.urls == (f"https://dl.fbaipublicfiles.com/moco/moco_checkpoints/{release}/"
                             f"{release}_pretrain.pth.tar",)
    used = {e.pretrain for e in zoo.load_manifest().entries.values()}
    assert used == {"rand", "supervised", "insdis", "pirl", "moco_v1", "moco_v2", "infomin"}


def test_shipped_configs_exist_in_the_configs_folder():
    expected = {"Base-RCNN-FPN.yaml", "Base-RCNN-C4-BN.yaml"}
    expected |= {f"R_50_FPN_{s}{v}.yaml" for s in ("1x", "2x", "6x") for v in ("", "_rand", "_infomin")}
    expected |= {f"R_50_C4_{s}{v}.yaml" for s in ("1x", "2x") for v in ("", "_infomin")}
    present = {p.name for p in resources.configs_dir().glob("*.yaml")}
    assert expected <= present
    for entry in zoo.load_manifest().entries.values():
        assert entry.config_path == (resources.configs_dir() / Path(entry.config).name).resolve()


def test_shipped_checksums_are_well_formed_or_absent():
    """Nothing was published; any value present must be a real sha256 written by `pin --write-manifest`."""
    shipped = zoo.load_manifest()
    files = [f for e in shipped.entries.values() for f in (e.model, e.log) if f is not None]
    files += [f for p in shipped.pretrains.values() for f in ((p.file,) if p.file else ()) + p.alternatives]
    assert len(files) == 16 * 2 + 9 + 2
    for file in files:
        assert file.sha256 is None or len(file.sha256) == 64
        assert (file.sha256 is None) == (file.size_bytes is None)


# ------------------------------------------------------------------------------------------- queries


def test_filters():
    assert len(zoo.list_entries()) == 22
    assert [e.name for e in zoo.list_entries(schedule="6x")] == [
        "mask_rcnn_fpn_6x_rand", "mask_rcnn_fpn_6x_supervised", "mask_rcnn_fpn_6x_infomin"]
    assert [e.name for e in zoo.list_entries(pretrain="infomin")] == [
        "mask_rcnn_fpn_1x_infomin", "mask_rcnn_fpn_2x_infomin", "mask_rcnn_fpn_6x_infomin",
        "mask_rcnn_c4_1x_infomin", "mask_rcnn_c4_2x_infomin"]
    assert [e.name for e in zoo.list_entries(detector="fpn", min_box_ap=42.6)] == [
        "mask_rcnn_fpn_6x_rand", "mask_rcnn_fpn_6x_supervised", "mask_rcnn_fpn_6x_infomin"]
    assert [e.name for e in zoo.list_entries(detector="c4", schedule="2x", min_box_ap=40.5)] == [
        "mask_rcnn_c4_2x_moco_v1", "mask_rcnn_c4_2x_infomin"]
    assert zoo.list_entries(min_box_ap=50) == []
    with pytest.raises(UnknownEntryError, match="infomin"):
        zoo.list_entries(pretrain="infomn")
    assert [e.name for e in zoo.load_manifest().entries_for_pretrain("moco_v2")] == ["mask_rcnn_fpn_2x_moco_v2"]


def test_did_you_mean():
    with pytest.raises(UnknownEntryError) as err:
        zoo.get_entry("mask_rcnn_fpn_2x_infomn")
    assert "Did you mean: mask_rcnn_fpn_2x_infomin" in str(err.value)
    assert isinstance(err.value, KeyError)
    with pytest.raises(UnknownEntryError, match="Did you mean: moco_v2"):
        zoo.get_pretrain("mocov2")
    assert zoo.get_entry("mask_rcnn_c4_1x_moco_v1").detector == "c4"


def test_readme_contains_the_generated_table():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert zoo.TABLE_START in readme and zoo.TABLE_END in readme, "README.md needs the zoo-table markers"
    inside = readme.split(zoo.TABLE_START, 1)[1].split(zoo.TABLE_END, 1)[0]
    assert inside.strip() == zoo.render_table().strip(), "README table is stale: paste `pycontrast-zoo table`"


def test_render_table_rows():
    lines = zoo.render_table().splitlines()
    assert len(lines) == 2 + 22 + 3  # header, 22 rows, a blank line and the two random-init rows' known issues
    assert lines[2].startswith("| `mask_rcnn_fpn_1x_rand` [!1] |") and lines[-2].startswith("- [!1] mask_rcnn_fpn_1x")
    assert "issues/34" in lines[-1] and "mask_rcnn_fpn_2x_rand" in lines[-1]
    lines = lines[:-3]
    assert lines[2 + 12] == ("| `mask_rcnn_fpn_2x_infomin` | FPN | 2x | InfoMin | 42.5 | 38.4 | "
                             "[R_50_FPN_2x_infomin](configs/R_50_FPN_2x_infomin.yaml) | "
                             "[model](https://www.dropbox.com/s/oh0ke3sdil40kge/model_final.pth?dl=0) | "
                             "[log](https://www.dropbox.com/s/qoidmj93k95rqbd/log.txt?dl=0) |")
    assert lines[-1].endswith("| not published | not published |") and "`mask_rcnn_c4_2x_infomin`" in lines[-1]


# ---------------------------------------------------------------------------------- broken manifests

SHA = "ab" * 32


def _valid() -> dict:
    return {
        "schema_version": 1,
        "pretrains": {"mine": {"method": "Mine", "epochs": 100, "imagenet_top1": 50.0,
                               "file": {"urls": ["https://example.org/mine.pth"], "sha256": SHA,
                                        "size_bytes": 10, "format": "pycontrast"}}},
        "entries": {"my_det": {"detector": "fpn", "schedule": "1x", "pretrain": "mine", "config": "cfg.yaml",
                               "box_ap": 30.0, "mask_ap": 27.0, "published": True,
                               "model": {"urls": ["https://example.org/m/model_final.pth"], "sha256": None,
                                         "size_bytes": None, "format": "detectron2"},
                               "log": None}},
    }


def _write(tmp_path: Path, data: dict, name: str = "user.yaml") -> Path:
    (tmp_path / "cfg.yaml").write_text("_BASE_: x\n")
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_valid_user_manifest_replaces_the_shipped_one(tmp_path):
    loaded = zoo.load_manifest([_write(tmp_path, _valid())])
    assert list(loaded.entries) == ["my_det"] and list(loaded.pretrains) == ["mine"]
    assert loaded.entries["my_det"].config_path == tmp_path / "cfg.yaml"


def _mutations():
    def m(fn):
        data = _valid()
        fn(data)
        return data
    det = lambda d: d["entries"]["my_det"]  # noqa: E731
    pre = lambda d: d["pretrains"]["mine"]  # noqa: E731
    return [
        ("unknown-field", m(lambda d: det(d).update(colour="red")), "entries.my_det", "colour"),
        ("missing-field", m(lambda d: det(d).pop("mask_ap")), "entries.my_det", "mask_ap"),
        ("dangling-pretrain", m(lambda d: det(d).update(pretrain="min")), "entries.my_det.pretrain", "'min'"),
        ("missing-config", m(lambda d: det(d).update(config="nope.yaml")), "entries.my_det.config", "nope.yaml"),
        ("bad-scheme", m(lambda d: det(d)["model"].update(urls=["ftp://x.org/m.pth"])),
         "entries.my_det.model.urls[0]", "ftp"),
        ("no-host", m(lambda d: det(d)["model"].update(urls=["https:///m.pth"])), "entries.my_det.model.urls[0]",
         "no host"),
        ("short-sha", m(lambda d: pre(d)["file"].update(sha256="abc123")), "pretrains.mine.file.sha256", "abc123"),
        ("upper-sha", m(lambda d: pre(d)["file"].update(sha256="AB" * 32)), "pretrains.mine.file.sha256", "64"),
        ("bad-format", m(lambda d: pre(d)["file"].update(format="zip")), "pretrains.mine.file.format", "zip"),
        ("bad-detector", m(lambda d: det(d).update(detector="retina")), "entries.my_det.detector", "retina"),
        ("bad-schedule", m(lambda d: det(d).update(schedule="long")), "entries.my_det.schedule", "long"),
        ("ap-type", m(lambda d: det(d).update(box_ap="high")), "entries.my_det.box_ap", "high"),
        ("ap-range", m(lambda d: det(d).update(mask_ap=270)), "entries.my_det.mask_ap", "270"),
        ("published-no-model", m(lambda d: det(d).update(model=None)), "entries.my_det.model", "published"),
        ("unpublished-no-note", m(lambda d: det(d).update(published=False, model=None)), "entries.my_det.note",
         "note"),
        ("negative-size", m(lambda d: pre(d)["file"].update(size_bytes=-1)), "pretrains.mine.file.size_bytes", "-1"),
        ("empty-urls", m(lambda d: det(d)["model"].update(urls=[])), "entries.my_det.model.urls", "non-empty"),
        ("schema-too-new", m(lambda d: d.update(schema_version=99)), "schema_version", "upgrade"),
        ("no-schema", m(lambda d: d.pop("schema_version")), "top level", "schema_version"),
        ("bad-name", m(lambda d: d["entries"].update({"has space": det(d)})), "entries.has space", "valid name"),
    ]


@pytest.mark.parametrize("data,where,what", [m[1:] for m in _mutations()], ids=[m[0] for m in _mutations()])
def test_broken_manifest_errors_name_file_entry_and_field(tmp_path, data, where, what):
    path = _write(tmp_path, data)
    with pytest.raises(ManifestError) as err:
        zoo.load_manifest([path])
    message = str(err.value)
    assert str(path) in message and where in message and what in message


def test_duplicate_entry_names_are_refused(tmp_path):
    path = _write(tmp_path, _valid())
    text = path.read_text()
    block = text[text.index("  my_det:"):]
    path.write_text(text + block)
    with pytest.raises(ManifestError, match=r"'my_det' defined twice \(first at line \d+\)") as err:
        zoo.load_manifest([path])
    assert str(path) in str(err.value)


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("entries: [unclosed\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        zoo.load_manifest([bad])
    with pytest.raises(ManifestError, match="cannot read manifest"):
        zoo.load_manifest([tmp_path / "absent.yaml"])
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("schema_version: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        zoo.load_manifest([unsafe])
    for text in ("", "# nothing yet\n", "{}\n"):  # an empty manifest says what one holds
        empty = tmp_path / "empty.yaml"
        empty.write_text(text)
        with pytest.raises(ManifestError, match="the manifest is empty; a manifest holds schema_version: 1"):
            zoo.load_manifest([empty])


def test_merge_overrides_entry_by_entry_and_env_var(tmp_path, monkeypatch):
    data = _valid()
    data["merge"] = True
    data["entries"]["mask_rcnn_fpn_1x_rand"] = copy.deepcopy(data["entries"]["my_det"])
    data["entries"]["mask_rcnn_fpn_1x_rand"]["pretrain"] = "rand"  # a pretrain from the shipped manifest
    path = _write(tmp_path, data)
    merged = zoo.load_manifest([path])
    assert len(merged.entries) == 23 and merged.entries["mask_rcnn_fpn_1x_rand"].box_ap == 30.0
    assert merged.entries["mask_rcnn_fpn_1x_rand"].source == path
    assert merged.entries["mask_rcnn_fpn_2x_infomin"].box_ap == 42.5
    assert merged.sources == (resources.manifest_path().resolve(), path)

    other = _valid()
    other["entries"] = {"second": other["entries"].pop("my_det")}
    second = _write(tmp_path, other, "second.yaml")
    monkeypatch.setenv(zoo.ENV_MANIFEST, os.pathsep.join([str(path), str(second)]))
    replaced = zoo.load_manifest()  # the second (no merge) replaces everything before it
    assert list(replaced.entries) == ["second"]
    assert zoo.get_entry("second").box_ap == 30.0


def test_merge_references_are_checked_after_merging(tmp_path):
    data = _valid()
    data["merge"] = True
    data["entries"]["my_det"]["pretrain"] = "infomn"
    with pytest.raises(ManifestError, match="unknown pretrain 'infomn' \\(did you mean infomin"):
        zoo.load_manifest([_write(tmp_path, data)])


def test_relative_local_paths_resolve_next_to_the_manifest(tmp_path):
    data = _valid()
    data["entries"]["my_det"]["model"]["urls"] = ["weights/model_final.pth"]
    loaded = zoo.load_manifest([_write(tmp_path, data)])
    assert loaded.entries["my_det"].model.urls == (str(tmp_path / "weights" / "model_final.pth"),)


# ----------------------------------------------------------------------------------- manifest editing


def test_update_manifest_checksums_edits_values_in_place(tmp_path):
    copy_path = tmp_path / "zoo.yaml"
    copy_path.write_text(resources.manifest_path().read_text())
    (tmp_path / "configs").symlink_to(resources.configs_dir())
    before = copy_path.read_text().splitlines()
    zoo.update_manifest_checksums(copy_path, {("entries", "mask_rcnn_fpn_2x_infomin", "log"): ("c" * 64, 123),
                                              ("pretrains", "moco_v2", "file"): ("d" * 64, 456)})
    after = copy_path.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(before) == len(after) and len(changed) == 4  # two sha256 and two size_bytes lines, nothing else
    loaded = zoo.load_manifest([copy_path])
    assert (loaded.entries["mask_rcnn_fpn_2x_infomin"].log.sha256, loaded.entries["mask_rcnn_fpn_2x_infomin"]
            .log.size_bytes) == ("c" * 64, 123)
    assert loaded.entries["mask_rcnn_fpn_2x_infomin"].model.sha256 is None
    assert (loaded.pretrains["moco_v2"].file.sha256, loaded.pretrains["moco_v2"].alternatives[0].sha256) == \
        ("d" * 64, None)
    with pytest.raises(ManifestError, match="malformed sha256"):
        zoo.update_manifest_checksums(copy_path, {("entries", "mask_rcnn_fpn_2x_infomin", "log"): ("xyz", 1)})
    with pytest.raises(ManifestError, match="entries.nope"):
        zoo.update_manifest_checksums(copy_path, {("entries", "nope", "log"): ("c" * 64, 1)})


# ----------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("argv", [["list"], ["list", "--json"], ["info", "mask_rcnn_fpn_2x_infomin"],
                                  ["info", "moco_v2"], ["table"]])
def test_light_commands_do_not_import_torch(argv):
    code = ("import sys\nfrom pycontrast_det.cli import main\n"
            f"assert main({argv!r}) == 0\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


def test_cli_list_info_table_output(capsys):
    assert main(["list", "--detector", "fpn", "--schedule", "2x", "--min-box-ap", "41.7", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["mask_rcnn_fpn_2x_moco_v1", "mask_rcnn_fpn_2x_moco_v2",
                                         "mask_rcnn_fpn_2x_infomin"]
    assert rows[2]["box_ap"] == 42.5 and rows[2]["cached"] == []
    assert main(["info", "mask_rcnn_c4_2x_infomin"]) == 0
    out = capsys.readouterr().out
    assert "config only" in out and "R_50_C4_2x_infomin.yaml" in out and "infomin/pretrain" in out
    assert main(["table"]) == 0
    assert capsys.readouterr().out == zoo.render_table()
    assert main(["info", "mask_rcnn_fpn_2x_infomn"]) == 2
    assert "Did you mean: mask_rcnn_fpn_2x_infomin" in capsys.readouterr().err


def test_cli_download_verify_pin_cache_against_local_server(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PYCONTRAST_ZOO_BACKOFF", "0.01")
    model, log = os.urandom(50_000), b"[iter 0] loss 1.0\n"
    with FileServer() as srv:
        data = _valid()
        data["merge"] = True
        data["entries"]["my_det"]["model"]["urls"] = [srv.add("/s/m1/model_final.pth", model)]
        data["entries"]["my_det"]["log"] = {"urls": [srv.add("/s/l1/log.txt", log)], "sha256": None,
                                            "size_bytes": None, "format": "text"}
        data["pretrains"]["mine"]["file"].update(urls=[srv.add("/mine.pth", b"0123456789")],
                                                 sha256=hashlib.sha256(b"0123456789").hexdigest())
        manifest = _write(tmp_path, data)
        m = ["--manifest", str(manifest)]
        assert main(m + ["download", "my_det", "--quiet"]) == 0
        out = capsys.readouterr().out
        assert "my_det/model:" in out and "my_det/log:" in out and "mine/pretrain:" in out
        cached = store.files_dir() / "my_det" / "model" / "model_final.pth"
        assert cached.read_bytes() == model

        assert main(m + ["list", "--json"]) == 0
        row = next(r for r in json.loads(capsys.readouterr().out) if r["name"] == "my_det")
        assert row["cached"] == ["model", "log", "pretrain"]

        assert main(m + ["verify"]) == 0
        out = capsys.readouterr().out
        assert "my_det/model: UNVERIFIED: unverified: no published checksum" in out
        assert "mine/pretrain: OK" in out

        assert main(m + ["pin", "my_det", "--what", "model"]) == 0
        assert hashlib.sha256(model).hexdigest() in capsys.readouterr().out
        assert main(m + ["verify", "my_det"]) == 0
        assert "my_det/model: OK" in capsys.readouterr().out

        cached.write_bytes(os.urandom(50_000))
        assert main(m + ["verify", "my_det"]) == 1
        assert "my_det/model: MISMATCH" in capsys.readouterr().out

        assert main(m + ["cache", "rm", "my_det"]) == 0
        assert not cached.exists() and "removed" in capsys.readouterr().out
        assert main(m + ["pin", "my_det", "--what", "model,log", "--write-manifest", "--quiet"]) == 0
        capsys.readouterr()
        rewritten = zoo.load_manifest([manifest]).entries["my_det"]
        assert (rewritten.model.sha256, rewritten.model.size_bytes) == (hashlib.sha256(model).hexdigest(), 50_000)
        assert (rewritten.log.sha256, rewritten.log.size_bytes) == (hashlib.sha256(log).hexdigest(), len(log))

        carry = tmp_path / "carry"
        (carry / "my_det").mkdir(parents=True)
        (carry / "my_det" / "model_final.pth").write_bytes(model)
        assert main(m + ["cache", "rm", "--all"]) == 0
        assert main(m + ["download", "my_det", "--what", "model", "--from-dir", str(carry)]) == 0
        assert cached.read_bytes() == model
        requests_before = len(srv.requests)

    assert main(m + ["cache", "ls"]) == 0
    assert "my_det/model" in capsys.readouterr().out
    assert main(["cache", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(store.cache_dir())
    assert main(m + ["download", "my_det", "--what", "model"]) == 0  # cache hit: the server is gone
    assert requests_before == 3 + 2  # download (model, log, pretrain) + pin --write-manifest after cache rm


def test_cli_download_reports_each_failure_and_keeps_going(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PYCONTRAST_ZOO_RETRIES", "0")
    good = os.urandom(20_000)
    with FileServer() as srv:
        data = _valid()
        data["merge"] = True
        data["pretrains"]["mine"]["file"] = None
        data["entries"]["my_det"]["model"]["urls"] = [srv.add("/ok/model_final.pth", good)]
        data["entries"]["dead_det"] = copy.deepcopy(data["entries"]["my_det"])
        data["entries"]["dead_det"]["model"]["urls"] = [srv.base + "/gone/model_final.pth"]
        data["entries"]["html_det"] = copy.deepcopy(data["entries"]["my_det"])
        data["entries"]["html_det"]["model"]["urls"] = [srv.add("/quota/model_final.pth", b"", mode="html")]
        m = ["--manifest", str(_write(tmp_path, data))]
        assert main(m + ["download", "dead_det", "my_det", "html_det", "--jobs", "3", "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert "my_det/model: " + str(store.files_dir() / "my_det" / "model" / "model_final.pth") in out
    assert "dead_det/model: FAILED" in err and "/gone/model_final.pth: HTTP 404" in err
    assert "html_det/model: FAILED" in err and "HTML page" in err
    assert "2 of 3 file(s) failed" in err
    assert [c.key for c in store.cached_files() if c.kind == "file"] == ["my_det/model"]
    assert main(m + ["download", "--all", "my_det"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(m + ["download", "my_dett"]) == 2
    assert "Did you mean: my_det" in capsys.readouterr().err
