"""The zoo checks itself: each entry's effective config (config file + config_fixes) against the config its training
log ran with (``pycontrast-zoo audit``), config_fixes applied by every use, known issues shown everywhere, and a
cached drifting log warned about on load. The logs are detectron2-format ``log.txt`` files written here."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml

from pycontrast_det.engine import RunOptions
from pycontrast_det import zoo
from pycontrast_det.cli import main
from pycontrast_det.config import load_config
from pycontrast_det.errors import ManifestError
from pycontrast_det.zoo.logconfig import IGNORED_KEYS, compare_configs, read_log_config

REPO = Path(__file__).resolve().parents[1]
RAND_1X, SUPERVISED_1X, C4 = "mask_rcnn_fpn_1x_rand", "mask_rcnn_fpn_1x_supervised", "mask_rcnn_c4_1x_supervised"
TORCHVISION_MEAN, TORCHVISION_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
ISSUE_34 = "https://github.com/HobbitLong/PyContrast/issues/34"


def d2_log(full: Optional[dict], config_file: str = "configs/R_50_FPN_1x.yaml") -> str:
    """A detectron2 ``log.txt``: the header lines, the config file's contents, the full config dumped as detectron2
    does (block YAML, sorted keys, sequences not indented), then training and evaluation lines."""
    lines = [
        "[06/14 09:12:03] detectron2 INFO: Rank of current process: 0. World size: 8",
        "[06/14 09:12:05] detectron2 INFO: Environment info:",
        "----------------------  ---------------------------------------------",
        "sys.platform            linux",
        "[06/14 09:12:05] detectron2 INFO: Command line arguments: Namespace(config_file='" + config_file +
        "', dist_url='tcp://127.0.0.1:50152', eval_only=False, machine_rank=0, num_gpus=8, num_machines=1, "
        "opts=['MODEL.WEIGHTS', '/checkpoint/user/pretrain.pkl'], resume=False)",
        f"[06/14 09:12:05] detectron2 INFO: Contents of args.config_file={config_file}:",
        '_BASE_: "Base-RCNN-FPN.yaml"', "MODEL:", '  WEIGHTS: ""', "",
    ]
    if full is not None:
        lines += ["[06/14 09:12:05] detectron2 INFO: Running with full config:",
                  yaml.safe_dump(full, default_flow_style=False).rstrip(), ""]
    lines += ["[06/14 09:12:05] detectron2 INFO: Full config saved to ./output/config.yaml",
              "\x1b[32m[06/14 09:14:10 d2.utils.events]: \x1b[0m eta: 1 day, 2:03:04  iter: 19  total_loss: 3.1  "
              "loss_cls: 1.2  lr: 0.000400  max_mem: 3100M",
              "[06/15 11:01:02] d2.evaluation.testing INFO: copypaste: Task: bbox",
              "[06/15 11:01:02] d2.evaluation.testing INFO: copypaste: AP,AP50,AP75,APs,APm,APl",
              "[06/15 11:01:02] d2.evaluation.testing INFO: copypaste: 32.8,51.0,35.0,18.0,35.0,43.0"]
    return "\n".join(lines) + "\n"


def logged_config(config: str, overrides: tuple[str, ...] = ()) -> dict:
    """A config as a cluster run logs it: other paths, workers and devices, and a key newer detectron2 has."""
    cfg = load_config(config, list(overrides)).to_dict()
    cfg["MODEL"]["WEIGHTS"] = "/checkpoint/user/pretrain.pkl"
    cfg["MODEL"]["DEVICE"] = "cuda"
    cfg["OUTPUT_DIR"] = "/checkpoint/user/output"
    cfg["DATALOADER"]["NUM_WORKERS"] = 4
    cfg["FUTURE_SECTION"] = {"KEY": 1}
    return cfg


def manifest_with_logs(folder: Path, logs: dict[str, str]) -> Path:
    """A user manifest merged over the shipped one: the named entries as shipped, their logs the texts given
    (files in ``folder``, fetched through the store)."""
    records = {}
    for name, text in logs.items():
        path = folder / f"{name}.log.txt"
        path.write_text(text, encoding="utf-8")
        record = zoo.entry_record(zoo.get_entry(name))
        record["log"] = {"urls": [str(path)], "sha256": None, "size_bytes": None, "format": "text"}
        records[name] = record
    manifest = folder / "manifest.yaml"
    manifest.write_text(zoo.dump_manifest(records, {}, comment="test manifest: logs written by the test"),
                        encoding="utf-8")
    return manifest


def audit(manifest: Path, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    code = main(["--manifest", str(manifest), "audit", "--quiet", *args])
    return code, capsys.readouterr().out


def _flat_keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        keys += _flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys


def _row(out: str, key: str) -> list[str]:
    [line] = [line for line in out.splitlines() if line.split()[:1] == [key]]
    return line.split(None, 3)


# ----------------------------------------------------------------------------------------------- audit


def test_audit_finds_input_format_mean_and_stride_differences_and_exits_1(tmp_path, capsys):
    manifest = manifest_with_logs(tmp_path, {SUPERVISED_1X: d2_log(logged_config("R_50_FPN_1x_infomin"))})
    code, out = audit(manifest, capsys, SUPERVISED_1X)
    assert code == 1
    assert _row(out, "INPUT.FORMAT") == ["INPUT.FORMAT", "BGR", "RGB", "model-defining"]
    assert _row(out, "MODEL.PIXEL_MEAN")[:2] == ["MODEL.PIXEL_MEAN", "[103.53,"]
    assert "[123.675, 116.28, 103.53]  model-defining" in out
    assert _row(out, "MODEL.RESNETS.STRIDE_IN_1X1") == ["MODEL.RESNETS.STRIDE_IN_1X1", "True", "False",
                                                        "model-defining"]
    assert "4 model-defining and 0 other differ" in out  # format, mean, std, stride; nothing else
    shown = [line.split()[0] for line in out.splitlines() if line.startswith("  ") and line.split()]
    assert {"OUTPUT_DIR", "MODEL.WEIGHTS", "MODEL.DEVICE", "DATALOADER.NUM_WORKERS"}.isdisjoint(shown)  # ignored
    assert "not compared (keys this package's config does not have): FUTURE_SECTION.KEY" in out
    assert f"{SUPERVISED_1X}: its training log ran configs/R_50_FPN_1x.yaml (command line: Namespace(" in out
    assert "opts=['MODEL.WEIGHTS', '/checkpoint/user/pretrain.pkl']" in out


def test_audit_of_an_identical_log_exits_0(tmp_path, capsys):
    entry = zoo.get_entry(RAND_1X)
    manifest = manifest_with_logs(tmp_path, {RAND_1X: d2_log(logged_config(str(entry.config_path),
                                                                            entry.config_overrides))})
    code, out = audit(manifest, capsys, RAND_1X)
    assert code == 0
    assert "0 model-defining and 0 other differ" in out and "+ config_fixes INPUT.FORMAT RGB" in out
    compared = int(out.split(" keys compared")[0].rsplit(" ", 1)[1])
    flat = _flat_keys(load_config(str(entry.config_path)).to_dict())
    ignored = [k for k in flat if any(k == p or (p[-1] in "._" and k.startswith(p)) for p in IGNORED_KEYS)]
    assert "OUTPUT_DIR" in ignored and "MODEL.WEIGHTS" in ignored
    assert compared == len(flat) - len(ignored)  # every other key of the config, not a sample


def test_audit_says_when_a_log_has_no_config_dump_or_an_entry_no_log(tmp_path, capsys):
    manifest = manifest_with_logs(tmp_path, {SUPERVISED_1X: d2_log(None)})
    code, out = audit(manifest, capsys, SUPERVISED_1X, C4)
    assert code == 0
    assert f"{SUPERVISED_1X}: its training log says nothing comparable about its config (it has no 'Running " \
           "with full config:' dump)" in out
    assert f"{C4}: no training log was published; nothing to compare" in out


def test_audit_refuses_an_unknown_entry_and_no_entry(tmp_path, capsys):
    assert main(["audit", "mask_rcnn_fpn_1x_rnad"]) == 2
    assert "did you mean: mask_rcnn_fpn_1x_rand" in capsys.readouterr().err.lower()
    assert main(["audit"]) == 2
    assert "--all" in capsys.readouterr().err


def test_audit_write_manifest_records_the_logs_values_as_config_fixes(tmp_path, capsys):
    manifest = manifest_with_logs(tmp_path, {RAND_1X: d2_log(logged_config("R_50_FPN_1x_infomin"))})
    code, out = audit(manifest, capsys, RAND_1X, "--write-manifest")
    assert code == 1
    assert "1 model-defining and 0 other differ" in out  # the fixes already cover format, mean and std
    assert _row(out, "MODEL.RESNETS.STRIDE_IN_1X1")[1:3] == ["True", "False"]
    text = manifest.read_text(encoding="utf-8")
    assert text.startswith("# test manifest: logs written by the test")  # edited in place, comments kept
    fixes = dict(zoo.load_manifest([manifest]).entry(RAND_1X).config_fixes)
    assert fixes == {"INPUT.FORMAT": "RGB", "MODEL.PIXEL_MEAN": tuple(TORCHVISION_MEAN),
                     "MODEL.PIXEL_STD": tuple(TORCHVISION_STD), "MODEL.RESNETS.STRIDE_IN_1X1": False}
    code, out = audit(manifest, capsys, RAND_1X)
    assert code == 0 and "0 model-defining and 0 other differ" in out


def test_read_log_config_reads_colour_tuples_and_names_a_broken_dump():
    text = ("\x1b[32m[06/14 09:12:05 detectron2]: \x1b[0mRunning with full config:\n"
            "SOLVER:\n  STEPS: !!python/tuple\n  - 60000\n  - 80000\n"
            "[06/14 09:12:05] detectron2 INFO: Full config saved\n")
    logged = read_log_config(text)
    assert logged.full == {"SOLVER": {"STEPS": [60000, 80000]}} and logged.problem is None
    broken = read_log_config("[06/14 09:12:05] d2 INFO: Running with full config:\nA: [1, 2\n", "x/log.txt")
    assert broken.full is None and broken.problem is not None
    assert broken.problem.startswith("x/log.txt:") and "\n" not in broken.problem
    cmp = compare_configs({"SOLVER": {"STEPS": "(60000, 80000)", "MAX_ITER": 90000}},
                          {"SOLVER": {"STEPS": [60000, 80000], "MAX_ITER": 90000.0}})
    assert cmp.diffs == () and cmp.compared == 2


# ------------------------------------------------------------------------------- config_fixes, issues


def test_load_of_the_random_init_1x_row_builds_rgb_with_torchvision_mean_std_and_warns_once(monkeypatch):
    import pycontrast_det as pcd
    from pycontrast_det.modeling import api

    monkeypatch.setattr(api, "_WARNED", set())
    with pytest.warns(UserWarning) as seen:
        model = pcd.load(RAND_1X, pretrained=False)
    assert model.cfg.INPUT.FORMAT == "RGB"
    assert list(model.cfg.MODEL.PIXEL_MEAN) == TORCHVISION_MEAN and list(model.cfg.MODEL.PIXEL_STD) == TORCHVISION_STD
    assert model.pixel_mean.flatten().tolist() == pytest.approx(TORCHVISION_MEAN)
    assert model.pixel_std.flatten().tolist() == pytest.approx(TORCHVISION_STD)
    [issue] = [str(w.message) for w in seen if ISSUE_34 in str(w.message)]
    assert issue.startswith(f"{RAND_1X}: known issue:") and "\n" not in issue
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process: the second load is quiet
        pcd.load(RAND_1X, pretrained=False)


def test_load_warns_when_the_cached_log_drifts_and_not_before_it_is_cached(tmp_path, capsys, monkeypatch):
    import pycontrast_det as pcd
    from pycontrast_det.modeling import api

    manifest = manifest_with_logs(tmp_path, {SUPERVISED_1X: d2_log(logged_config("R_50_FPN_1x_infomin"))})
    monkeypatch.setenv("PYCONTRAST_ZOO_MANIFEST", str(manifest))
    monkeypatch.setattr(api, "_WARNED", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing cached yet: no warning (and nothing fetched)
        pcd.load(SUPERVISED_1X, pretrained=False)
    assert main(["download", SUPERVISED_1X, "--what", "log", "--quiet"]) == 0
    monkeypatch.setenv("PYCONTRAST_ZOO_OFFLINE", "1")
    with pytest.warns(UserWarning, match="differs from its cached training log") as seen:
        pcd.load(SUPERVISED_1X, pretrained=False)
    [line] = [str(w.message) for w in seen]
    assert "INPUT.FORMAT BGR (log: RGB)" in line and "MODEL.RESNETS.STRIDE_IN_1X1 True (log: False)" in line


def test_reproduce_dry_run_trains_with_the_config_fixes(capsys):
    from pycontrast_det.recipes.reproduce import plan_reproduction

    cfg = plan_reproduction(RAND_1X).config()
    assert cfg.INPUT.FORMAT == "RGB" and list(cfg.MODEL.PIXEL_STD) == TORCHVISION_STD
    assert main(["reproduce", RAND_1X, "--dry-run"]) == 0
    out = capsys.readouterr().out
    commands = out.split("commands:", 1)[1]
    assert commands.count("INPUT.FORMAT RGB") == 2  # ours and detectron2's
    assert commands.count("MODEL.PIXEL_STD '[58.395, 57.12, 57.375]'") == 2
    supervised = plan_reproduction(SUPERVISED_1X).config()
    assert supervised.INPUT.FORMAT == "BGR"  # an entry without fixes is as its config says
    assert plan_reproduction(RAND_1X, config="R_50_FPN_1x_rand").config().INPUT.FORMAT == "BGR"  # --config: as given


def test_known_issues_show_in_info_list_table_and_the_model_card(tmp_path, capsys):
    from pycontrast_det.publish import card
    from pycontrast_det.publish.target import parse_target

    assert main(["info", RAND_1X]) == 0
    out = capsys.readouterr().out
    assert "known issue: PyContrast's config inherits BGR" in out and ISSUE_34 in out
    assert "config fixes (every use applies them): INPUT.FORMAT RGB MODEL.PIXEL_MEAN [123.675, 116.28, 103.53]" in out
    assert main(["list", "--schedule", "1x"]) == 0
    rows = {line.split()[0]: line.split()[-1] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows[RAND_1X] == "!" and rows[SUPERVISED_1X] != "!"
    assert main(["list", "--json"]) == 0
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed[RAND_1X]["known_issues"][0]["url"] == ISSUE_34 and listed[SUPERVISED_1X]["known_issues"] == []
    assert listed["mask_rcnn_fpn_2x_rand"]["config_fixes"][:2] == ["INPUT.FORMAT", "RGB"]
    assert main(["table"]) == 0
    assert f"| `{RAND_1X}` [!1] |" in capsys.readouterr().out
    entry = zoo.get_entry(RAND_1X)
    cfg = load_config(entry.config_path, entry.config_overrides)
    text = card.entry_card(entry, zoo.get_pretrain("rand"), cfg, [], parse_target(str(tmp_path)))
    assert "> **Known issue:** PyContrast's config inherits BGR" in text and ISSUE_34 in text
    assert "RGB input" in text and "with the config fixes `INPUT.FORMAT RGB" in text


def test_shipped_manifest_records_issue_34_the_6x_typo_and_the_c4_sources():
    for name in (RAND_1X, "mask_rcnn_fpn_2x_rand"):
        entry = zoo.get_entry(name)
        assert dict(entry.config_fixes) == {"INPUT.FORMAT": "RGB", "MODEL.PIXEL_MEAN": tuple(TORCHVISION_MEAN),
                                            "MODEL.PIXEL_STD": tuple(TORCHVISION_STD)}
        assert [i.url for i in entry.known_issues] == [ISSUE_34]
    assert not zoo.get_entry("mask_rcnn_fpn_6x_rand").config_fixes
    assert "5400000" in (zoo.get_entry("mask_rcnn_fpn_6x_rand").note or "")
    assert load_config(zoo.get_entry("mask_rcnn_fpn_6x_rand").config_path).SOLVER.MAX_ITER == 540000
    for entry in zoo.list_entries(detector="c4"):
        paper = "InfoMin paper" if entry.pretrain == "infomin" else "MoCo v1 paper"
        assert entry.note is not None and paper in entry.note, entry.name
    others = [e for e in zoo.list_entries() if e.name not in (RAND_1X, "mask_rcnn_fpn_2x_rand")]
    assert all(not e.config_fixes and not e.known_issues for e in others)


@pytest.mark.parametrize("field, value, what", [
    ("config_fixes", {"input.format": "RGB"}, "is not a dotted config key"),
    ("config_fixes", {"MODEL.PIXEL_MEAN": [{"a": 1}]}, "expected a value or a list of values"),
    ("config_fixes", ["INPUT.FORMAT", "RGB"], "expected a mapping of config KEY: value"),
    ("known_issues", [{"text": "x"}], "missing field(s) url"),
    ("known_issues", [{"text": "x", "url": "ftp://a/b"}], "is not an http(s) URL"),
    ("known_issues", [{"text": "", "url": ISSUE_34}], "expected one non-empty line"),
])
def test_bad_config_fixes_and_known_issues_are_one_line_errors(tmp_path, field, value, what):
    record = zoo.entry_record(zoo.get_entry(SUPERVISED_1X))
    record[field] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"schema_version": 1, "merge": True, "entries": {SUPERVISED_1X: record}}))
    with pytest.raises(ManifestError) as err:
        zoo.load_manifest([path])
    assert str(err.value).startswith(f"{path}: entries.{SUPERVISED_1X}.{field}") and what in str(err.value)
    assert "\n" not in str(err.value)


def test_a_broken_manifest_yaml_is_one_line_with_its_position(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("schema_version: 1\nentries:\n  a: [1, 2\n")
    with pytest.raises(ManifestError) as err:
        zoo.load_manifest([path])
    assert str(err.value).startswith(f"{path}:") and "\n" not in str(err.value) and "not valid YAML" in str(err.value)


# ------------------------------------------------------------------------------------------------ layers


def test_store_does_not_import_the_manifest_package():
    for path in sorted((REPO / "pycontrast_det" / "store").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[Any] = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            assert not any(n == "zoo" or ".zoo" in n or n.startswith("zoo.") for n in names), path.name
    code = ("import sys, pycontrast_det.store, pycontrast_det.refs; "
            "print(sorted(m for m in sys.modules if m.startswith('pycontrast_det.zoo')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "[]"


def test_finetune_plans_with_the_config_fixes(tmp_path):
    from pycontrast_det.recipes.finetune import plan_finetune
    from test_finetune import make_dataset

    plan = plan_finetune(RAND_1X, make_dataset(tmp_path / "data"), schedule="4",
                         options=RunOptions(output_dir=tmp_path / "out"))
    cfg = plan.cfg()
    assert cfg.INPUT.FORMAT == "RGB" and list(cfg.MODEL.PIXEL_MEAN) == TORCHVISION_MEAN
    assert "INPUT.FORMAT RGB" in (plan.command() or "")
    assert plan_finetune(RAND_1X, tmp_path / "data", schedule="4", config="R_50_FPN_1x_rand",
                         options=RunOptions(output_dir=tmp_path / "out2")).cfg().INPUT.FORMAT == "BGR"  # as given
