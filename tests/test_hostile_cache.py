"""Issue 16, a hostile shared cache and interruptions (items 5, 6), and the failures that were tracebacks: every
test ends with the cache holding only bytes a server served whole, nothing outside the cache changed, and the
command exiting 0 or 2 with one line."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pycontrast_det import store
from pycontrast_det.errors import ConfigError, SettingsError, ZooError
from pycontrast_det.store.layout import lock_path, partial_path, record_path, validators_path

from hostile_helpers import assert_cache_holds_only, cli, download, manifest, outside, snapshot  # noqa: F401
from store_helpers import (fast_net, partials, payload, ref, resume_range, server,  # noqa: F401
                           sigint_reaches_children, wait_for_temps)

REPO = Path(__file__).resolve().parents[1]
KEY = "my_det/model"


def _plant(server, tmp_path, victim: Path, where: str, data: bytes) -> str:
    """Serve ``data``; plant a symlink to ``victim`` at the named place of its cache slot; returns the URL."""
    url = server.add("/s/x/model_final.pth", data, validators=True)
    manifest(tmp_path, [url])
    dest = store.cache_path(ref(url, data=data), KEY)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(dest, url)
    target = {"part": part, "part-hardlink": part, "dest": dest, "lock": lock_path(dest),
              "record": record_path(dest), "sidecar": validators_path(part)}[where]
    if where == "part-hardlink":
        os.link(victim, target)
    else:
        target.symlink_to(victim)
    if where.startswith("part"):  # a sidecar that says the planted partial may be resumed
        size = victim.stat().st_size
        validators_path(part).write_text(json.dumps({"url": url, "total": len(data), "etag": None,
                                                     "last_modified": None, "pieces": 1, "size": size}))
    return url


@pytest.mark.parametrize("where", ["part", "part-hardlink", "dest", "lock", "record", "sidecar"])
def test_5_links_planted_in_a_shared_cache_are_never_followed(server, tmp_path, capsys, outside, where):
    data = payload(300_000)
    _plant(server, tmp_path, outside, where, data)
    before = snapshot(tmp_path)
    code, line = download(tmp_path / "manifest.yaml", capsys)
    assert code == 0, line
    assert snapshot(tmp_path) == before  # the victim outside the cache is untouched
    dest = store.files_dir() / "my_det" / "model" / "model_final.pth"
    assert not dest.is_symlink() and dest.read_bytes() == data
    assert_cache_holds_only([data])


def test_5_a_cache_folder_linked_out_of_the_cache_is_refused(server, tmp_path, capsys, outside):
    data = payload()
    manifest(tmp_path, [server.add("/s/x/model_final.pth", data)])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store.files_dir().mkdir(parents=True)
    (store.files_dir() / "my_det").symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(tmp_path)
    code, line = download(tmp_path / "manifest.yaml", capsys)
    assert code == 2 and "leads out of the cache" in line
    assert snapshot(tmp_path) == before and list(elsewhere.iterdir()) == []


def test_6_an_interrupt_between_write_and_count_leaves_a_consistent_partial(server, monkeypatch):
    data = payload(600_000)
    url = server.add("/s/x/model_final.pth", data, validators=True)
    file = ref(url, data=data, known=False)
    real_write = store.partials.Partial.write

    def interrupted(self, chunk):  # Ctrl-C lands after the bytes reached the file, before they were counted
        if self.size == 0:  # the first bytes are written and counted, whatever size the chunks come in
            real_write(self, chunk[:50_000])
            chunk = chunk[50_000:]
        self.fh.write(chunk)
        raise KeyboardInterrupt

    monkeypatch.setattr(store.partials.Partial, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.fetch_file(file, KEY, quiet=True)
    monkeypatch.setattr(store.partials.Partial, "write", real_write)
    [kept] = partials()
    recorded = json.loads(validators_path(kept.path).read_text())["size"]
    assert kept.size_bytes == recorded and kept.path.read_bytes() == data[:recorded]  # nothing uncounted kept
    assert store.fetch_file(file, KEY, quiet=True).read_bytes() == data
    assert server.ranges("/s/x/model_final.pth")[-1] == resume_range(recorded)
    assert_cache_holds_only([data])
    assert [c.kind for c in store.cached_files()] == ["file"]


def test_6_a_partial_whose_record_disagrees_is_restarted_into_the_file_at_its_path(server):
    data = payload(300_000)
    url = server.add("/s/x/model_final.pth", data, validators=True)
    file = ref(url, data=data, known=False)
    dest = store.cache_path(file, KEY)
    dest.parent.mkdir(parents=True)
    part = partial_path(dest, url)
    part.write_bytes(data[:150_000])  # the record below says fewer bytes: an interrupted write
    validators_path(part).write_text(json.dumps({"url": url, "total": len(data), "etag": None,
                                                 "last_modified": None, "pieces": 1, "size": 100_000}))
    path = store.fetch_file(file, KEY, quiet=True)
    assert path.read_bytes() == data and path.stat().st_size == len(data)  # never an empty file verified
    assert store.verify_file(file, KEY).actual_sha256 == store.hash_file(path)[0]
    assert_cache_holds_only([data])


_CHILD = """
import sys
from pycontrast_det.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_cache_rm_during_a_download_leaves_its_temp_file_and_lock_alone(server, tmp_path, capsys):
    data = payload(600_000)
    url = server.add("/s/x/model_final.pth", data, mode="slow", chunk=8192, delay=0.1)  # about 7 s in all
    path = manifest(tmp_path, [url])
    argv = ["--manifest", str(path), "download", "my_det", "--what", "model", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, *argv], env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folder = store.files_dir() / "my_det" / "model"
    wait_for_temps([folder], 1, proc)
    assert cli(["--manifest", str(path), "cache", "rm", "--partial"], capsys)[0] == 0
    assert cli(["--manifest", str(path), "cache", "rm", "--all"], capsys)[0] == 0
    assert list(folder.glob("*.tmp")) and (folder / ".model_final.pth.lock").exists()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert_cache_holds_only([data])


def test_cache_rm_on_a_read_only_cache_is_one_line(server, tmp_path, capsys, monkeypatch):
    data = payload()
    path = manifest(tmp_path, [server.add("/s/x/model_final.pth", data)])
    assert download(path, capsys)[0] == 0

    def refuse(self, missing_ok=False):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    with monkeypatch.context() as patched:
        patched.setattr(Path, "unlink", refuse)
        code, line = cli(["--manifest", str(path), "cache", "rm", "--all"], capsys)
    assert code == 2 and "read-only file system" in line
    assert_cache_holds_only([data])
    assert [c.kind for c in store.cached_files()] == ["file"]


def test_an_offline_hf_path_with_dotdot_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    path = manifest(tmp_path, ["hf://org/repo/../../etc/model_final.pth"])
    monkeypatch.setenv("PYCONTRAST_ZOO_OFFLINE", "1")
    before = snapshot(tmp_path)
    code, line = download(path, capsys)
    assert code == 2 and "'..'" in line
    assert snapshot(tmp_path) == before
    assert_cache_holds_only([])


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/weights/..", "http://127.0.0.1:9/weights/."])
def test_a_weights_url_ending_in_dotdot_is_one_named_error(url):
    with pytest.raises(ZooError, match="not a file name"):
        store.fetch_url(url, quiet=True)
    assert_cache_holds_only([])


def test_a_250_character_file_name_is_cached_under_a_shortened_name(server):
    data = payload()
    name = "m" * 246 + ".pth"
    url = server.add(f"/s/{name}", data)
    path = store.fetch_url(url, quiet=True)
    assert path.read_bytes() == data and len(path.name) <= 200 and path.name.endswith(".pth")
    assert store.fetch_url(url, quiet=True, offline=True) == path
    assert_cache_holds_only([data])


@pytest.mark.parametrize("setting", ["PYCONTRAST_ZOO_TIMEOUT=0", "PYCONTRAST_ZOO_TIMEOUT=-1",
                                     "PYCONTRAST_ZOO_TIMEOUT=inf", "PYCONTRAST_ZOO_TIMEOUT=nan",
                                     "PYCONTRAST_ZOO_CONNECT_TIMEOUT=0", "PYCONTRAST_ZOO_BACKOFF=-1",
                                     "PYCONTRAST_ZOO_RETRIES=2.5", "PYCONTRAST_ZOO_MIN_SPEED=0",
                                     "PYCONTRAST_ZOO_MAX_BYTES=lots"])
def test_a_bad_network_setting_is_one_line_naming_it(server, tmp_path, capsys, monkeypatch, setting):
    name, value = setting.split("=")
    path = manifest(tmp_path, [server.add("/s/x/model_final.pth", payload())])
    monkeypatch.setenv(name, value)
    code, line = download(path, capsys)
    assert code == 2 and f"{name}={value!r}: expected" in line
    assert server.requests == [] and store.cached_files() == []


def test_a_home_that_is_a_file_is_one_line_naming_the_variable(tmp_path, capsys, monkeypatch):
    home = tmp_path / "home.txt"
    home.write_text("not a folder")
    path = manifest(tmp_path, ["http://127.0.0.1:9/model_final.pth"])
    monkeypatch.setenv("PYCONTRAST_ZOO_HOME", str(home))
    with pytest.raises(SettingsError, match="PYCONTRAST_ZOO_HOME=.*not a folder; set it to a folder"):
        store.cache_dir()
    code, line = download(path, capsys)
    assert code == 2 and "not a folder" in line and "pin" not in line
    assert home.read_text() == "not a folder"


def test_a_yaml_error_in_a_config_is_one_line_with_file_line_column(tmp_path):
    from pycontrast_det.config import load_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  WEIGHTS: [unclosed\nSOLVER: {}\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    [line] = str(err.value).splitlines()
    assert f"{bad}:" in line and "^" not in line


def test_ctrl_c_while_headers_trickle_stops_at_once(server, tmp_path, sigint_reaches_children):
    import signal

    url = server.add("/s/x/model_final.pth", payload(), mode="trickle_headers", delay=0.2)
    path = manifest(tmp_path, [url])
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, "--manifest", str(path), "download", "my_det", "--what",
                             "model", "--quiet"], env=dict(os.environ, PYTHONPATH=str(REPO),
                                                            PYCONTRAST_ZOO_TIMEOUT="30"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(s.path.startswith("/s/x/") for s in server.requests):
        time.sleep(0.02)
    time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert time.monotonic() - sent < 10  # the read timeout is 30 s: it did not wait for it
    assert proc.returncode == 130
    assert_cache_holds_only([])


def test_9_a_temp_file_left_by_a_killed_process_is_removed_by_the_next_download(server):
    data = payload()
    file = ref(server.add("/s/x/model_final.pth", data), data=data)
    dest = store.cache_path(file, KEY)
    dest.parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()  # a process that has ended
    orphan = dest.parent / f".{dest.name}.{dead}-abc123.tmp"
    orphan.write_bytes(data[:1000])
    mine = dest.parent / f".{dest.name}.{os.getpid()}-xyz789.tmp"  # a download of a running process
    mine.write_bytes(b"in progress")
    assert store.fetch_file(file, KEY, quiet=True).read_bytes() == data
    assert not orphan.exists() and mine.exists()
    mine.unlink()
    assert_cache_holds_only([data])
