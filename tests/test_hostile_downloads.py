"""Issue 16, servers that lie or never end (items 1-4, 7-10): every test ends with the cache holding only bytes a
server served whole, nothing outside the cache changed, and the command exiting 0 or 2 with one line."""
from __future__ import annotations

import codecs
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pycontrast_det import store
from pycontrast_det.errors import BadResponseError, ChecksumError
from pycontrast_det.zoo import FileRef

from hostile_helpers import assert_cache_holds_only, digest, download, manifest, outside, snapshot  # noqa: F401
from http_server import HTML_PAGE
from store_helpers import fast_net, partials, payload, ref, resume_range, server, wait_for_temps  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
PAGE_PREFIXES = {"utf8-bom": codecs.BOM_UTF8, "comment": b"<!-- served by the CDN -->\n",
                 "xml-prolog": b'<?xml version="1.0" encoding="utf-8"?>\n',
                 "bom-blank-comment-prolog": codecs.BOM_UTF8 + b"\r\n  <!-- a -->\n<?xml version='1.0'?>\n<!--b-->",
                 "utf16-bom": codecs.BOM_UTF16_LE}


def _then_good(server, path: str, capsys, tmp_path, data: bytes, before: dict, **route) -> None:
    """The server now serves ``data`` normally: the same command succeeds with exactly those bytes."""
    server.add(path, data, **route)
    code, line = download(tmp_path / "manifest.yaml", capsys)
    assert code == 0, line
    assert_cache_holds_only([data])
    assert [c.kind for c in store.cached_files()] == ["file"]
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("prefix", list(PAGE_PREFIXES))
def test_1_an_html_interstitial_behind_a_bom_comment_or_prolog_is_refused(server, tmp_path, capsys, prefix):
    page = PAGE_PREFIXES[prefix] + (HTML_PAGE if prefix != "utf16-bom" else HTML_PAGE.decode().encode("utf-16-le"))
    url = server.add("/s/x/model_final.pth", page)  # 200 application/octet-stream
    manifest(tmp_path, [url])
    before = snapshot(tmp_path)
    code, line = download(tmp_path / "manifest.yaml", capsys)
    assert code == 2 and "HTML page" in line
    assert_cache_holds_only([])
    _then_good(server, "/s/x/model_final.pth", capsys, tmp_path, payload(), before)


def test_1_binary_bytes_that_merely_start_with_a_bom_are_not_a_page():
    from pycontrast_det.store._http import looks_like_html

    assert not looks_like_html(codecs.BOM_UTF8 + b"PK\x03\x04" + payload(100))
    assert not looks_like_html(b"<!-- just a comment --> \x80\x02}q\x00")
    assert looks_like_html(b"  \n<!DOCTYPE html><html>")


def test_2_a_zero_byte_answer_is_refused_unless_the_manifest_says_0(server, tmp_path, capsys):
    url = server.add("/s/x/model_final.pth", b"")  # 200, Content-Length: 0
    manifest(tmp_path, [url])
    before = snapshot(tmp_path)
    code, line = download(tmp_path / "manifest.yaml", capsys)
    assert code == 2 and "empty body" in line
    assert_cache_holds_only([])
    empty = FileRef(urls=(url,), sha256=digest(b""), size_bytes=0, format="text", filename="empty.txt")
    assert store.fetch_file(empty, "e/log", quiet=True).read_bytes() == b""  # an empty file that is meant
    store.remove_cached(["e"])
    _then_good(server, "/s/x/model_final.pth", capsys, tmp_path, payload(), before)


@pytest.mark.parametrize("encoding", ["br", "gzip"])
def test_3_a_content_encoding_never_asked_for_is_refused_at_once(server, tmp_path, capsys, encoding):
    url = server.add("/s/x/model_final.pth", payload(50_000, seed=3), headers={"Content-Encoding": encoding})
    manifest(tmp_path, [url])
    before = snapshot(tmp_path)
    code, line = download(tmp_path / "manifest.yaml", capsys)
    assert code == 2 and f"Content-Encoding {encoding!r}" in line
    assert len(server.ranges("/s/x/model_final.pth")) == 1  # not retried as a network failure
    assert_cache_holds_only([])
    _then_good(server, "/s/x/model_final.pth", capsys, tmp_path, payload(), before)


def test_4_a_same_size_replacement_without_validators_or_checksum_is_never_spliced(server, tmp_path, capsys,
                                                                                   monkeypatch):
    old = payload(400_000, seed=1)
    new = b"N" * 1000 + old[1000:250_000] + payload(150_000, seed=2)  # same size, same bytes around the cut
    url = server.add("/s/x/model_final.pth", old, mode="cut", cut_at=200_000)
    manifest(tmp_path, [url])
    before = snapshot(tmp_path)
    monkeypatch.setenv("PYCONTRAST_ZOO_RETRIES", "0")
    code, _ = download(tmp_path / "manifest.yaml", capsys)
    assert code == 2 and partials()[0].size_bytes == 200_000
    server.routes["/s/x/model_final.pth"].data, server.routes["/s/x/model_final.pth"].mode = new, "ok"
    code, line = download(tmp_path / "manifest.yaml", capsys)
    assert code == 0, line
    assert server.ranges("/s/x/model_final.pth")[-1] is None  # restarted from byte 0, not resumed
    assert_cache_holds_only([new])
    assert snapshot(tmp_path) == before


def test_4_with_a_published_checksum_the_partial_is_resumed(server, tmp_path, capsys, monkeypatch):
    data = payload(400_000, seed=1)
    url = server.add("/s/x/model_final.pth", data, mode="cut", cut_at=200_000, times=1)
    manifest(tmp_path, [url], data=data)
    monkeypatch.setenv("PYCONTRAST_ZOO_RETRIES", "0")
    assert download(tmp_path / "manifest.yaml", capsys)[0] == 2
    assert download(tmp_path / "manifest.yaml", capsys)[0] == 0
    assert server.ranges("/s/x/model_final.pth")[-1] == resume_range(200_000)
    assert_cache_holds_only([data])


@pytest.fixture
def slow_net(monkeypatch):
    """A small minimum speed bound: 1 s to connect and for silence, 5000 bytes/s."""
    monkeypatch.setenv("PYCONTRAST_ZOO_TIMEOUT", "1")
    monkeypatch.setenv("PYCONTRAST_ZOO_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("PYCONTRAST_ZOO_MIN_SPEED", "5000")
    monkeypatch.setenv("PYCONTRAST_ZOO_RETRIES", "0")


def test_7_a_server_trickling_the_body_fails_in_bounded_time_and_the_partial_resumes(server, tmp_path, capsys,
                                                                                      slow_net):
    data = payload(5000)
    url = server.add("/s/x/model_final.pth", data, mode="slow", chunk=1, delay=0.05, validators=True)
    manifest(tmp_path, [url])
    before = snapshot(tmp_path)
    started = time.monotonic()
    code, line = download(tmp_path / "manifest.yaml", capsys)
    assert time.monotonic() - started < 60  # bound: 2 s + 5000 B at 5000 B/s; a trickle used to run forever
    assert code == 2 and "too slow" in line and "PYCONTRAST_ZOO_MIN_SPEED" in line
    [kept] = partials()
    assert 0 < kept.size_bytes < len(data)
    assert_cache_holds_only([])
    server.routes["/s/x/model_final.pth"].mode = "ok"
    assert download(tmp_path / "manifest.yaml", capsys)[0] == 0
    assert server.ranges("/s/x/model_final.pth")[-1] == resume_range(kept.size_bytes)
    assert_cache_holds_only([data])
    assert snapshot(tmp_path) == before


def test_7_a_server_trickling_its_headers_fails_in_bounded_time(server, tmp_path, capsys, slow_net):
    url = server.add("/s/x/model_final.pth", payload(), mode="trickle_headers", delay=0.1)
    manifest(tmp_path, [url])
    before = snapshot(tmp_path)
    started = time.monotonic()
    code, line = download(tmp_path / "manifest.yaml", capsys)
    assert time.monotonic() - started < 60
    assert code == 2 and "status and headers" in line
    assert_cache_holds_only([])
    _then_good(server, "/s/x/model_final.pth", capsys, tmp_path, payload(), before)


@pytest.mark.parametrize("known", [True, False], ids=["manifest-size", "no-size"])
def test_8_an_endless_body_is_cut_at_the_expected_size_and_refused(server, tmp_path, capsys, monkeypatch, known):
    data = payload(300_000)
    url = server.add("/s/x/model_final.pth", data, mode="endless", chunk=65_536, delay=0)
    manifest(tmp_path, [url], data=data if known else None)
    monkeypatch.setenv("PYCONTRAST_ZOO_MAX_BYTES", "1000000")
    before = snapshot(tmp_path)
    code, line = download(tmp_path / "manifest.yaml", capsys)
    assert code == 2 and "cut and refused" in line
    assert ("300000 bytes announced" if known else "PYCONTRAST_ZOO_MAX_BYTES (1000000)") in line
    assert_cache_holds_only([])
    assert sum(c.size_bytes for c in store.cached_files()) <= 1_000_000  # never written past the bound
    _then_good(server, "/s/x/model_final.pth", capsys, tmp_path, data, before)


def test_8_a_body_longer_than_the_manifest_size_is_refused(server):
    data = payload(100_000)
    url = server.add("/long.pth", data, mode="no_length", extra=10)
    with pytest.raises(BadResponseError, match="cut and refused"):
        store.fetch_file(ref(url, data=data), "e/model", quiet=True)
    assert_cache_holds_only([])


_CHILD = """
import sys
from pycontrast_det.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_9_sigterm_keeps_a_resumable_partial_and_leaves_no_temp_file(server, tmp_path):
    data = payload(1_000_000)
    url = server.add("/s/x/model_final.pth", data, mode="slow", chunk=16_384, delay=0.1, validators=True)  # 6 s
    path = manifest(tmp_path, [url])
    before = snapshot(tmp_path)
    argv = [sys.executable, "-c", _CHILD, "--manifest", str(path), "download", "my_det", "--what", "model", "--quiet"]
    proc = subprocess.Popen(argv, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_temps([store.files_dir() / "my_det" / "model"], 100_000, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines() == ["pycontrast-zoo download: terminated (SIGTERM): partial downloads are "
                                        "kept; run it again to resume"]
    assert [c.kind for c in store.cached_files()] == ["partial"]  # no orphan temp file
    kept = partials()[0].size_bytes
    assert 100_000 <= kept < len(data)
    server.routes["/s/x/model_final.pth"].mode = "ok"
    rerun = subprocess.run(argv, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                           timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert server.ranges("/s/x/model_final.pth")[-1] == resume_range(kept)
    assert_cache_holds_only([data])
    assert [c.kind for c in store.cached_files()] == ["file"]
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("answer", ["html", "401", "403", "404", "html_body"])
def test_10_an_error_page_answered_to_a_resume_keeps_the_partial(server, tmp_path, capsys, monkeypatch, answer):
    data = payload(600_000)
    url = server.add("/s/x/model_final.pth", data, mode="cut", cut_at=400_000, validators=True)
    manifest(tmp_path, [url])
    before = snapshot(tmp_path)
    monkeypatch.setenv("PYCONTRAST_ZOO_RETRIES", "0")
    assert download(tmp_path / "manifest.yaml", capsys)[0] == 2
    [kept] = partials()
    route = server.routes["/s/x/model_final.pth"]
    route.mode = "status" if answer.isdigit() else answer
    route.status = int(answer) if answer.isdigit() else 500
    code, line = download(tmp_path / "manifest.yaml", capsys)
    assert code == 2 and (f"HTTP {answer}" in line if answer.isdigit() else "HTML page" in line)
    assert partials() == [kept]  # the same partial, same size
    route.mode = "ok"
    assert download(tmp_path / "manifest.yaml", capsys)[0] == 0
    assert server.ranges("/s/x/model_final.pth")[-1] == resume_range(kept.size_bytes)
    assert_cache_holds_only([data])
    assert snapshot(tmp_path) == before


def test_10_an_announced_size_other_than_the_manifest_keeps_the_partial(server, tmp_path, capsys, monkeypatch):
    data = payload(600_000)
    url = server.add("/s/x/model_final.pth", data, mode="cut", cut_at=400_000, validators=True)
    manifest(tmp_path, [url], data=data)
    monkeypatch.setenv("PYCONTRAST_ZOO_RETRIES", "0")
    assert download(tmp_path / "manifest.yaml", capsys)[0] == 2
    [kept] = partials()
    server.routes["/s/x/model_final.pth"].data, server.routes["/s/x/model_final.pth"].mode = payload(7), "ok"
    code, line = download(tmp_path / "manifest.yaml", capsys)
    assert code == 2 and "size mismatch" in line
    assert partials() == [kept]
    with pytest.raises(ChecksumError):
        store.fetch_file(ref(url, data=data), "my_det/model", quiet=True)
    assert_cache_holds_only([])
