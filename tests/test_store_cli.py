"""``pycontrast-zoo download | verify | info | cache`` on the store's edge cases: Ctrl-C with parallel jobs
keeps resumable partials that the next run resumes, missing files fail ``verify``, partials are listed and
removable, and entries without a log are described as such."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


from pycontrast_det import store
from pycontrast_det.cli import main

from store_helpers import (fast_net, partials, payload, resume_range, server,  # noqa: F401
                           sigint_reaches_children, wait_for_temps, write_manifest)

REPO = Path(__file__).resolve().parents[1]


def test_ctrl_c_with_parallel_jobs_keeps_partials_and_the_next_run_resumes_them(server, tmp_path, capsys,
                                                                              sigint_reaches_children):
    model, log = payload(1_500_000, seed=1), payload(900_000, seed=2)
    urls = {"/m/model_final.pth": model, "/l/log.txt": log}
    for path, data in urls.items():
        server.add(path, data, mode="slow", chunk=16_384, delay=0.02, validators=True)
    manifest = write_manifest(tmp_path, [server.base + "/m/model_final.pth"], [server.base + "/l/log.txt"])
    argv = ["--manifest", str(manifest), "download", "my_det", "--jobs", "2", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "pycontrast_det", *argv], env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = store.files_dir() / "my_det"
    wait_for_temps([root / "model", root / "log"], 100_000, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err, err
    kept = {p.key: p for p in partials()}
    assert sorted(kept) == ["my_det/log", "my_det/model"], (err, store.cached_files())
    assert [c.kind for c in store.cached_files()] == ["partial", "partial"]  # no temp file leaked
    assert kept["my_det/model"].total_bytes == len(model) and kept["my_det/log"].total_bytes == len(log)

    assert main(["--manifest", str(manifest), "cache", "ls"]) == 0
    listing = capsys.readouterr().out
    for item in kept.values():
        assert f"{item.size_bytes}/{item.total_bytes} (" in listing

    for route in server.routes.values():
        route.mode = "ok"
    assert main(argv) == 0
    for path in urls:
        role = "model" if "model" in path else "log"
        assert server.ranges(path)[-1] == resume_range(kept[f"my_det/{role}"].size_bytes)
    assert (root / "model" / "model_final.pth").read_bytes() == model
    assert (root / "log" / "log.txt").read_bytes() == log
    assert [c.kind for c in store.cached_files()] == ["file", "file"]


def test_verify_of_a_named_entry_fails_when_its_file_is_missing(server, tmp_path, capsys):
    data = payload()
    manifest = write_manifest(tmp_path, [server.add("/v/model_final.pth", data)])
    m = ["--manifest", str(manifest)]
    assert main(m + ["verify", "my_det"]) == 1
    assert "my_det/model: MISSING: not cached; run `pycontrast-zoo download my_det`" in capsys.readouterr().out
    assert main(m + ["download", "my_det", "--quiet"]) == 0
    capsys.readouterr()
    assert main(m + ["verify", "my_det"]) == 0
    assert "my_det/model: UNVERIFIED" in capsys.readouterr().out


def test_an_entry_without_a_log_says_so_plainly(server, tmp_path, capsys):
    manifest = write_manifest(tmp_path, [server.add("/n/model_final.pth", payload())])
    m = ["--manifest", str(manifest)]
    assert main(m + ["info", "my_det"]) == 0
    out = capsys.readouterr().out
    assert "published: model (no training log)" in out and "model and log" not in out
    assert main(m + ["download", "my_det", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "my_det: no log published\n" in err and "None" not in err


def test_cache_rm_partial_removes_only_partials(server, tmp_path, monkeypatch, capsys):
    good, cut = payload(seed=1), payload(300_000, seed=2)
    manifest = write_manifest(tmp_path, [server.add("/c/model_final.pth", cut, mode="cut", cut_at=120_000)],
                              [server.add("/c/log.txt", good)])
    m = ["--manifest", str(manifest)]
    monkeypatch.setenv("PYCONTRAST_ZOO_RETRIES", "0")
    assert main(m + ["download", "my_det", "--quiet"]) == 2
    capsys.readouterr()
    assert sorted((c.key, c.kind) for c in store.cached_files()) == [("my_det/log", "file"),
                                                                     ("my_det/model", "partial")]
    assert main(m + ["cache", "rm", "--partial"]) == 0
    assert "model_final.pth." in capsys.readouterr().out
    assert [(c.key, c.kind) for c in store.cached_files()] == [("my_det/log", "file")]
    assert not any(p.name.endswith(".part.json") for p in (store.files_dir() / "my_det" / "model").glob("*"))
    assert main(m + ["cache", "rm"]) == 2
    assert "--all" in capsys.readouterr().err
