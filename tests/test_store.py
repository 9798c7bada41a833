"""The download cache against a real HTTP server on 127.0.0.1: success, resume, broken servers, mirrors,
offline, concurrency, interruption, imports. After every failure nothing a later run trusts is cached."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pycontrast_det import store
from pycontrast_det.checkpoints import sources
from pycontrast_det.errors import ChecksumError, DownloadError, HTMLResponseError, OfflineError, ZooError
from pycontrast_det.zoo import FileRef

from store_helpers import (assert_nothing_trusted, fast_net, payload, ref, resume_range, server,  # noqa: F401
                           sigint_reaches_children, wait_for_temps)

REPO = Path(__file__).resolve().parents[1]


def test_plain_download_lands_under_entry_and_role_and_hits_cache(server):
    data = payload()
    file = ref(server.add("/s/abc/model_final.pth", data), data=data)
    path = store.fetch_file(file, "mask_rcnn_x/model", quiet=True)
    assert path == store.cache_dir() / "files" / "mask_rcnn_x" / "model" / "model_final.pth"
    assert path.read_bytes() == data
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode
    again = store.fetch_file(file, "mask_rcnn_x/model", quiet=True)
    assert again == path and len(server.ranges("/s/abc/model_final.pth")) == 1  # cache hit: no request
    assert [c.kind for c in store.cached_files()] == ["file"]


def test_same_basename_different_entries_never_collide(server):
    a, b = payload(seed=1), payload(seed=2)
    pa = store.fetch_file(ref(server.add("/s/1/model_final.pth", a), data=a), "entry_a/model", quiet=True)
    pb = store.fetch_file(ref(server.add("/s/2/model_final.pth", b), data=b), "entry_b/model", quiet=True)
    assert pa != pb and pa.read_bytes() == a and pb.read_bytes() == b


def test_cut_connection_resumes_with_range_in_the_same_call(server):
    data = payload(300_000)
    file = ref(server.add("/cut.pth", data, mode="cut", cut_at=120_000, times=1), data=data)
    path = store.fetch_file(file, "e/model", quiet=True)
    assert path.read_bytes() == data
    assert server.ranges("/cut.pth") == [None, resume_range(120_000)]


def test_partial_from_an_interrupted_run_is_rehashed_and_resumed(server, monkeypatch):
    data = payload(300_000)
    url = server.add("/p.pth", data, mode="cut", cut_at=100_000)
    file = ref(url, data=data)
    monkeypatch.setenv("PYCONTRAST_ZOO_RETRIES", "0")
    with pytest.raises(DownloadError, match="connection|Connection"):
        store.fetch_file(file, "e/model", quiet=True)
    assert_nothing_trusted(file, "e/model")
    parts = [c for c in store.cached_files() if c.kind == "partial"]
    assert len(parts) == 1 and parts[0].size_bytes == 100_000
    server.routes["/p.pth"].mode = "ok"
    path = store.fetch_file(file, "e/model", quiet=True)
    assert path.read_bytes() == data  # the sha256 over re-hashed partial + new bytes matched
    assert server.ranges("/p.pth")[-1] == resume_range(100_000)
    assert [c.kind for c in store.cached_files()] == ["file"]


def test_corrupt_partial_is_caught_by_the_overlap_or_the_final_hash(server, monkeypatch):
    data = payload(300_000)
    url = server.add("/q.pth", data, mode="cut", cut_at=200_000)
    file = ref(url, data=data)
    monkeypatch.setenv("PYCONTRAST_ZOO_RETRIES", "0")
    with pytest.raises(DownloadError):
        store.fetch_file(file, "e/model", quiet=True)
    part = next(c.path for c in store.cached_files() if c.kind == "partial")
    kept = part.read_bytes()
    part.write_bytes(kept[:-1000] + b"\0" * 1000)  # its last bytes rotted: the overlap differs, start over
    server.routes["/q.pth"].mode = "ok"
    assert store.fetch_file(file, "e/model", quiet=True).read_bytes() == data
    assert server.ranges("/q.pth")[-2:] == [resume_range(200_000), None]

    store.remove_cached()
    server.routes["/q.pth"].mode = "cut"
    with pytest.raises(DownloadError):
        store.fetch_file(file, "e/model", quiet=True)
    part = next(c.path for c in store.cached_files() if c.kind == "partial")
    part.write_bytes(b"\0" * 1000 + part.read_bytes()[1000:])  # rotted before the overlap: the hash catches it
    server.routes["/q.pth"].mode = "ok"
    assert store.fetch_file(file, "e/model", quiet=True).read_bytes() == data  # fetched again from byte 0
    assert server.ranges("/q.pth")[-2:] == [resume_range(200_000), None]
    assert [c.kind for c in store.cached_files()] == ["file"]


def test_server_ignoring_range_restarts_cleanly(server, monkeypatch):
    data = payload(300_000)
    url = server.add("/nr.pth", data, mode="cut", cut_at=150_000)
    file = ref(url, data=data)
    monkeypatch.setenv("PYCONTRAST_ZOO_RETRIES", "0")
    with pytest.raises(DownloadError):
        store.fetch_file(file, "e/model", quiet=True)
    server.routes["/nr.pth"].mode = "no_range"
    path = store.fetch_file(file, "e/model", quiet=True)
    assert server.ranges("/nr.pth")[-1] == resume_range(150_000)  # asked to resume, got a 200 with everything
    assert path.read_bytes() == data


def test_truncated_200_is_never_cached_as_good(server):
    data = payload(200_000)
    file = ref(server.add("/t.pth", data, mode="truncate", cut_at=50_000), data=data, known=False)
    with pytest.raises(DownloadError, match="gave up after 3 attempts"):
        store.fetch_file(file, "e/model", quiet=True)
    assert_nothing_trusted(file, "e/model")
    assert len(server.ranges("/t.pth")) == 3


def test_truncated_once_then_resumed(server):
    data = payload(200_000)
    file = ref(server.add("/t1.pth", data, mode="truncate", cut_at=150_000, times=1), data=data)
    assert store.fetch_file(file, "e/model", quiet=True).read_bytes() == data
    assert server.ranges("/t1.pth") == [None, resume_range(150_000)]


def test_wrong_bytes_name_expected_and_actual_hash_and_cache_nothing(server):
    good, bad = payload(seed=1), payload(seed=2)
    file = ref(server.add("/w.pth", bad), data=good)
    expected, actual = hashlib.sha256(good).hexdigest(), hashlib.sha256(bad).hexdigest()
    with pytest.raises(ChecksumError) as err:
        store.fetch_file(file, "e/model", quiet=True)
    assert expected in str(err.value) and actual in str(err.value)
    assert_nothing_trusted(file, "e/model")
    assert store.cached_files() == []  # no partial either: those bytes are known bad


def test_wrong_size_announced_is_rejected_before_download(server):
    data = payload(100_000)
    file = FileRef(urls=(server.add("/sz.pth", data),), sha256=None, size_bytes=99_999, format="detectron2")
    with pytest.raises(ChecksumError, match="99999"):
        store.fetch_file(file, "e/model", quiet=True)
    assert_nothing_trusted(file, "e/model")


@pytest.mark.parametrize("mode", ["html", "html_body"])
def test_html_page_is_refused_with_a_clear_error(server, mode):
    data = payload()
    file = ref(server.add("/h.pth", data, mode=mode), data=data)
    with pytest.raises(HTMLResponseError, match="HTML page"):
        store.fetch_file(file, "e/model", quiet=True)
    assert_nothing_trusted(file, "e/model")
    assert store.cached_files() == []


def test_404_then_working_mirror(server):
    data = payload()
    dead = server.base + "/gone/model_final.pth"
    file = ref(dead, server.add("/mirror/model_final.pth", data), data=data)
    assert store.fetch_file(file, "e/model", quiet=True).read_bytes() == data
    assert server.ranges("/gone/model_final.pth") == [None]


def test_all_urls_dead_lists_each(server):
    file = ref(server.base + "/a.pth", server.base + "/b.pth", data=payload())
    with pytest.raises(DownloadError) as err:
        store.fetch_file(file, "e/model", quiet=True)
    assert "/a.pth: HTTP 404" in str(err.value) and "/b.pth: HTTP 404" in str(err.value)
    assert_nothing_trusted(file, "e/model")


def test_500s_then_success(server):
    data = payload()
    file = ref(server.add("/flaky.pth", data, mode="status", status=503, times=2), data=data)
    assert store.fetch_file(file, "e/model", quiet=True).read_bytes() == data
    assert len(server.ranges("/flaky.pth")) == 3


def test_500s_forever_fail_after_retries(server):
    data = payload()
    file = ref(server.add("/down.pth", data, mode="status", status=500), data=data)
    with pytest.raises(DownloadError, match="HTTP 500"):
        store.fetch_file(file, "e/model", quiet=True)
    assert len(server.ranges("/down.pth")) == 3
    assert_nothing_trusted(file, "e/model")


def test_offline_missing_file_names_the_path_and_touches_no_network(server, monkeypatch):
    data = payload()
    file = ref(server.add("/off.pth", data), data=data)
    monkeypatch.setenv("PYCONTRAST_ZOO_OFFLINE", "1")
    with pytest.raises(OfflineError) as err:
        store.fetch_file(file, "e/model", quiet=True)
    assert str(store.cache_path(file, "e/model")) in str(err.value)
    assert server.requests == []


def test_offline_with_file_cached_and_hf_offline_flag(server, monkeypatch):
    data = payload()
    file = ref(server.add("/off2.pth", data), data=data)
    store.fetch_file(file, "e/model", quiet=True)
    seen = len(server.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert store.fetch_file(file, "e/model", quiet=True).read_bytes() == data
    assert len(server.requests) == seen


def test_cache_hit_with_wrong_size_is_refetched(server):
    data = payload()
    file = ref(server.add("/re.pth", data), data=data)
    path = store.fetch_file(file, "e/model", quiet=True)
    path.write_bytes(data[:1000])
    assert store.fetch_file(file, "e/model", quiet=True).read_bytes() == data
    assert len(server.ranges("/re.pth")) == 2


_CHILD = """
import os, sys, time
from pycontrast_det import store
from pycontrast_det.store.fetch import _fetch_unlocked
from pycontrast_det.zoo import FileRef
url, sha, size, locked, barrier = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
file = FileRef(urls=(url,), sha256=sha, size_bytes=size, format="detectron2")
fetch = store.fetch_file if locked else _fetch_unlocked
if barrier:  # start together: say we are ready, wait for the go
    open(os.path.join(barrier, f"ready-{os.getpid()}"), "w").close()
    while not os.path.exists(os.path.join(barrier, "go")):
        time.sleep(0.01)
print(fetch(file, "e/model", quiet=True), flush=True)
"""


def _child(url: str, data: bytes, locked: bool, barrier: str = "") -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", _CHILD, url, hashlib.sha256(data).hexdigest(), str(len(data)),
                             "1" if locked else "0", barrier], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("locked", [True, False], ids=["with-lock", "without-lock"])
def test_two_processes_fetching_at_once_end_with_one_correct_file(server, locked, tmp_path):
    data = payload(400_000)
    url = server.add("/both/model_final.pth", data, mode="slow", chunk=16_384, delay=0.05)
    procs = [_child(url, data, locked, str(tmp_path)) for _ in range(2)]
    deadline = time.time() + 60
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.time() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    paths = {o[0].strip() for o in outs}
    assert len(paths) == 1
    assert Path(paths.pop()).read_bytes() == data
    assert [c.kind for c in store.cached_files()] == ["file"]  # no temp or partial left behind
    # with the lock the second process waits and reuses the file; without it both really download at once
    assert len(server.ranges("/both/model_final.pth")) == (1 if locked else 2)


def test_sigint_mid_download_leaves_nothing_trusted_and_rerun_succeeds(server, sigint_reaches_children):
    data = payload(1_000_000)
    url = server.add("/slow/model_final.pth", data, mode="slow", chunk=16_384, delay=0.02)
    file = ref(url, data=data)
    proc = _child(url, data, locked=True)
    wait_for_temps([store.cache_path(file, "e/model").parent], 100_000, proc)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert_nothing_trusted(file, "e/model")
    kept = [c for c in store.cached_files() if c.kind == "partial"]
    assert len(kept) == 1 and 100_000 <= kept[0].size_bytes < len(data)
    server.routes["/slow/model_final.pth"].mode = "ok"
    assert store.fetch_file(file, "e/model", quiet=True).read_bytes() == data
    assert server.ranges("/slow/model_final.pth")[-1] == resume_range(kept[0].size_bytes)
    assert [c.kind for c in store.cached_files()] == ["file"]


def test_import_from_dir_is_verified(tmp_path):
    data = payload()
    file = ref("https://example.invalid/s/x/model_final.pth", data=data)
    src = tmp_path / "carry" / "mask_rcnn_x"
    src.mkdir(parents=True)
    (src / "model_final.pth").write_bytes(data[:-1] + b"\0")
    with pytest.raises(ChecksumError, match=hashlib.sha256(data).hexdigest()):
        store.import_from_dir(tmp_path / "carry", file, "mask_rcnn_x/model")
    assert_nothing_trusted(file, "mask_rcnn_x/model")
    (src / "model_final.pth").write_bytes(data)
    path = store.import_from_dir(tmp_path / "carry", file, "mask_rcnn_x/model")
    assert path == store.cache_path(file, "mask_rcnn_x/model") and path.read_bytes() == data


def test_import_from_flat_dir_needs_a_checksum(tmp_path):
    data = payload()
    (tmp_path / "model_final.pth").write_bytes(data)
    unknown = ref("https://example.invalid/m/model_final.pth", data=data, known=False)
    with pytest.raises(DownloadError, match="not found"):
        store.import_from_dir(tmp_path, unknown, "e/model")  # a bare model_final.pth could be any entry's
    known = ref("https://example.invalid/m/model_final.pth", data=data)
    assert store.import_from_dir(tmp_path, known, "e/model").read_bytes() == data
    (tmp_path / "InsDis.pth").write_bytes(data)  # a name no other file of the shipped zoo has
    insdis = ref("https://example.invalid/InsDis.pth", data=data, known=False, filename="InsDis.pth")
    with pytest.raises(DownloadError, match="not found"):
        store.import_from_dir(tmp_path, insdis, "insdis/pretrain")  # the store cannot know the name is unique
    assert sources.import_entry_file(tmp_path, insdis, "insdis/pretrain").read_bytes() == data


def test_endpoint_is_a_mirror_in_the_publish_layout_tried_first(server, monkeypatch, tmp_path):
    data = payload()
    original = server.add("/s/abc123/model_final.pth", data)
    file = ref(original, data=data)
    monkeypatch.setenv("PYCONTRAST_ZOO_ENDPOINT", server.base + "/mirror/")
    mirror = server.base + "/mirror/e/model_final.pth"  # <entry>/<filename>, as `pycontrast-zoo publish` lays it out
    assert store.candidate_urls(file, "e/model") == [mirror, original]
    assert store.candidate_urls(file) == [original]  # no cache key, no mirror
    server.add("/mirror/e/model_final.pth", payload(seed=5))  # the mirror serves other bytes: refused
    assert store.fetch_file(file, "e/model", quiet=True).read_bytes() == data
    gets = [s.path for s in server.requests if s.method == "GET"]
    assert gets == ["/mirror/e/model_final.pth", "/s/abc123/model_final.pth"]

    unknown = ref(original, data=data, known=False)
    server.routes["/mirror/e/model_final.pth"].data = data
    store.remove_cached(["e"])
    assert store.fetch_file(unknown, "e/model", quiet=True).read_bytes() == data
    assert store.proven_checksum(unknown, "e/model") is None  # came from the mirror: nothing proven about the URL
    monkeypatch.delenv("PYCONTRAST_ZOO_ENDPOINT")
    store.remove_cached(["e"])
    store.fetch_file(unknown, "e/model", quiet=True)
    assert store.proven_checksum(unknown, "e/model") == (hashlib.sha256(data).hexdigest(), len(data))

    folder = tmp_path / "tree"
    (folder / "f").mkdir(parents=True)
    (folder / "f" / "model_final.pth").write_bytes(data)
    monkeypatch.setenv("PYCONTRAST_ZOO_OFFLINE", "1")
    for endpoint in (str(folder), folder.as_uri()):  # a shared folder or a file:// URL: used offline too
        monkeypatch.setenv("PYCONTRAST_ZOO_ENDPOINT", endpoint)
        store.remove_cached(["f"])
        assert store.fetch_file(file, "f/model", quiet=True).read_bytes() == data
    assert store.mirror_url(file, "url/0123456789abcdef") is None  # a file known by its URL only
    monkeypatch.setenv("PYCONTRAST_ZOO_ENDPOINT", "ftp://mirror.example/zoo")
    with pytest.raises(ZooError, match="PYCONTRAST_ZOO_ENDPOINT='ftp://mirror.example/zoo': URL scheme 'ftp'"):
        store.candidate_urls(file, "e/model")


def test_dropbox_links_are_made_raw():
    file = ref("https://www.dropbox.com/s/x/log.txt?dl=0", "https://example.org/a?dl=0")
    assert store.candidate_urls(file) == ["https://www.dropbox.com/s/x/log.txt?dl=1", "https://example.org/a?dl=0"]


def test_file_url_and_local_path(tmp_path):
    data = payload()
    src = tmp_path / "w.pth"
    src.write_bytes(data)
    by_url = store.fetch_file(ref(src.as_uri(), data=data), "a/model", quiet=True)
    by_path = store.fetch_file(ref(str(src), data=data), "b/model", quiet=True)
    assert by_url.read_bytes() == data and by_path.read_bytes() == data
    with pytest.raises(ChecksumError):
        store.fetch_file(ref(src.as_uri(), data=payload(seed=9)), "c/model", quiet=True)
    assert not store.cache_path(ref(str(src)), "c/model").exists()


def test_hf_url_through_hf_endpoint_then_offline_from_hf_cache(server, monkeypatch, tmp_path):
    data = payload()
    commit = "0123456789abcdef0123456789abcdef01234567"
    path = "/org/pycontrast-det/resolve/main/fpn/model_final.pth"
    server.add(path, data, headers={"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'})
    monkeypatch.setenv("HF_ENDPOINT", server.base)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    file = ref("hf://org/pycontrast-det/fpn/model_final.pth", data=data)
    assert store.fetch_file(file, "e/model", quiet=True).read_bytes() == data
    assert any(s.method == "GET" and s.path == path for s in server.requests)
    missing = ref("hf://org/pycontrast-det/fpn/other.pth", data=data, filename="other.pth")
    with pytest.raises(DownloadError, match="huggingface_hub"):
        store.fetch_file(missing, "f/model", quiet=True)
    assert not store.cache_path(missing, "f/model").exists()

    store.remove_cached(["e"])
    seen = len(server.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert store.fetch_file(file, "e/model", quiet=True).read_bytes() == data
    assert len(server.requests) == seen  # served from the Hugging Face cache, no network
    store.remove_cached(["e"])
    with pytest.raises(OfflineError, match=str(store.cache_path(missing, "f/model"))):
        store.fetch_file(missing, "f/model", quiet=True)
    assert_nothing_trusted(missing, "f/model")
    assert len(server.requests) == seen


def test_verify_statuses_and_pins(server):
    data = payload()
    url = server.add("/v.pth", data)
    unknown = ref(url, data=data, known=False)
    assert store.verify_file(unknown, "e/model").status == "missing"
    store.fetch_file(unknown, "e/model", quiet=True)
    result = store.verify_file(unknown, "e/model")
    assert result.status == "unverified" and "pycontrast-zoo pin e" in result.message
    assert result.actual_sha256 == hashlib.sha256(data).hexdigest()
    assert store.checksum_status(unknown, "e/model").startswith("unverified: no published checksum")

    pin = store.pin_file(unknown, "e/model", quiet=True)
    assert (pin.sha256, pin.size_bytes) == (hashlib.sha256(data).hexdigest(), len(data))
    lock = json.loads((store.cache_dir() / "pins.json").read_text())
    assert lock["pins"]["e/model"]["sha256"] == pin.sha256
    assert store.verify_file(unknown, "e/model").status == "ok"
    assert "pins.json" in store.checksum_status(unknown, "e/model")

    path = store.cache_path(unknown, "e/model")
    path.write_bytes(payload(seed=5))  # same size, other bytes
    result = store.verify_file(unknown, "e/model")
    assert result.status == "mismatch" and pin.sha256 in result.message
    store.remove_cached(["e/model"])
    server.routes["/v.pth"].data = payload(seed=5)  # the server now sends other bytes: the pin catches it
    with pytest.raises(ChecksumError, match=pin.sha256):
        store.fetch_file(unknown, "e/model", quiet=True)
    assert_nothing_trusted(unknown, "e/model")


def test_cache_listing_and_removal(server):
    a, b = payload(seed=1), payload(seed=2)
    store.fetch_file(ref(server.add("/1.pth", a), data=a), "entry_a/model", quiet=True)
    store.fetch_file(ref(server.add("/2.txt", b), data=b, filename="log.txt"), "entry_a/log", quiet=True)
    store.fetch_file(ref(server.add("/3.pth", b), data=b), "entry_b/model", quiet=True)
    assert [c.key for c in store.cached_files()] == ["entry_a/log", "entry_a/model", "entry_b/model"]
    removed = store.remove_cached(["entry_a"])
    assert len(removed) == 2 and [c.key for c in store.cached_files()] == ["entry_b/model"]
    assert not (store.files_dir() / "entry_a").exists()
    store.remove_cached()
    assert store.cached_files() == []


def test_redirect_is_followed(server):
    data = payload()
    server.add("/content/abc", data)
    file = ref(server.add("/s/abc/model_final.pth", b"", mode="redirect", location="/content/abc"), data=data)
    assert store.fetch_file(file, "e/model", quiet=True).read_bytes() == data


def test_fetch_url_keys_by_the_whole_url(server):
    a, b = payload(seed=1), payload(seed=2)
    pa = store.fetch_url(server.add("/run1/model_final.pth", a), quiet=True)
    pb = store.fetch_url(server.add("/run2/model_final.pth", b), quiet=True)
    assert pa.name == pb.name == "model_final.pth" and pa != pb
    assert (pa.read_bytes(), pb.read_bytes()) == (a, b)


def test_unsupported_scheme_is_a_download_error():
    with pytest.raises(DownloadError, match="unsupported URL scheme"):
        store.fetch_file(ref("ftp://example.invalid/x.pth"), "e/model", quiet=True)


def test_unverified_download_says_so(server, caplog):
    data = payload()
    file = ref(server.add("/u/model_final.pth", data), data=data, known=False)
    with caplog.at_level("WARNING", logger="pycontrast_det.store"):
        store.fetch_file(file, "mask_rcnn_x/model", quiet=True)
    assert "unverified: no published checksum; run `pycontrast-zoo pin mask_rcnn_x`" in caplog.text


def test_bad_cache_keys_are_refused():
    with pytest.raises(Exception, match="bad cache key"):
        store.cache_path(ref("https://example.invalid/x"), "../escape")
