"""Helpers shared by the store tests: test bytes, FileRefs, short network settings, and the end-of-test check
that the cache holds nothing wrong and every later run agrees."""
from __future__ import annotations

import hashlib
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

import pytest
import yaml

from pycontrast_det import store
from pycontrast_det.zoo import FileRef

from http_server import FileServer

OVERLAP = store._http.OVERLAP_BYTES


@pytest.fixture(autouse=True)
def fast_net(monkeypatch):
    """Few retries, tiny backoff, short timeouts: a failing test costs milliseconds, not minutes."""
    monkeypatch.setenv("PYCONTRAST_ZOO_RETRIES", "2")
    monkeypatch.setenv("PYCONTRAST_ZOO_BACKOFF", "0.01")
    monkeypatch.setenv("PYCONTRAST_ZOO_TIMEOUT", "10")
    monkeypatch.setenv("PYCONTRAST_ZOO_CONNECT_TIMEOUT", "2")


@pytest.fixture
def sigint_reaches_children():
    """Children started in the test get SIGINT's default action: a shell running the suite in the background
    ignores SIGINT, and an ignored signal stays ignored across exec, so Ctrl-C tests would see it do nothing."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)  # reset to the default in a child at exec
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture
def server():
    with FileServer() as srv:
        yield srv


def payload(n: int = 200_000, seed: int = 0) -> bytes:
    """Deterministic, non-repeating test bytes."""
    out = bytearray()
    block = hashlib.sha256(f"seed{seed}".encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ref(*urls: str, data: Optional[bytes] = None, known: bool = True, filename: str = "model_final.pth") -> FileRef:
    """A FileRef for ``urls``; with ``known``, the sha256 and size of ``data`` are published."""
    published = data is not None and known
    return FileRef(urls=tuple(urls), sha256=sha(data) if published else None,
                   size_bytes=len(data) if published else None, format="detectron2", filename=filename)


def resume_range(offset: int) -> str:
    """The Range header of a resume from ``offset`` (it asks for a little before, to compare the overlap)."""
    return f"bytes={max(0, offset - OVERLAP)}-"


def partials() -> list[store.CachedFile]:
    return [c for c in store.cached_files() if c.kind == "partial"]


def assert_nothing_trusted(file: FileRef, key: str) -> None:
    """No final file in place, and nothing in the cache listed as a trusted file."""
    assert not store.cache_path(file, key).exists()
    assert [c for c in store.cached_files() if c.kind == "file"] == []


def assert_agrees(server: FileServer, path: str, file: FileRef, key: str, original: bytes) -> None:
    """The cache holds no complete file whose bytes differ from ``original``; then, with the server serving
    ``original`` normally, an online, an offline, a ``verify`` and a ``pin`` run all agree on it, and after
    ``cache rm`` the pinned file is fetched again."""
    for item in store.cached_files():
        if item.kind == "file":
            assert item.path.read_bytes() == original, f"{item.path} holds wrong bytes"
    route = server.routes[path]
    route.data, route.mode = original, "ok"
    assert store.fetch_file(file, key, quiet=True).read_bytes() == original
    seen = len(server.requests)
    assert store.fetch_file(file, key, quiet=True, offline=True).read_bytes() == original
    assert len(server.requests) == seen  # offline: no network
    result = store.verify_file(file, key)
    assert result.status in ("ok", "unverified") and result.actual_sha256 == sha(original), result
    pin = store.pin_file(file, key, quiet=True)
    assert (pin.sha256, pin.size_bytes) == (sha(original), len(original))
    assert store.verify_file(file, key).status == "ok"
    store.remove_cached([key])
    assert store.fetch_file(file, key, quiet=True).read_bytes() == original
    assert [c.kind for c in store.cached_files()] == ["file"]  # no partial or temp left behind


def write_manifest(folder: Path, model_urls: Sequence[str], log_urls: Optional[Sequence[str]] = None,
                   note: Optional[str] = None) -> Path:
    """A user manifest (merged over the shipped one) with one detector entry ``my_det`` whose model (and log)
    have no published checksum, from a pretrain ``mine`` without a file."""
    def file(urls: Sequence[str], fmt: str) -> dict:
        return {"urls": list(urls), "sha256": None, "size_bytes": None, "format": fmt}

    (folder / "cfg.yaml").write_text("_BASE_: x\n")
    entry = {"detector": "fpn", "schedule": "1x", "pretrain": "mine", "config": "cfg.yaml", "box_ap": 30.0,
             "mask_ap": 27.0, "published": True, "model": file(model_urls, "detectron2"),
             "log": file(log_urls, "text") if log_urls else None}
    if note:
        entry["note"] = note
    data = {"schema_version": 1, "merge": True,
            "pretrains": {"mine": {"method": "Mine", "epochs": 1, "imagenet_top1": None, "file": None}},
            "entries": {"my_det": entry}}
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _temp_bytes(folder: Path) -> int:
    """The size of the largest download in progress (temp file) in ``folder``; 0 when there is none."""
    sizes = [0]
    for temp in folder.glob(".*.tmp") if folder.is_dir() else ():
        try:
            sizes.append(temp.stat().st_size)
        except FileNotFoundError:  # published or removed meanwhile
            pass
    return max(sizes)


def wait_for_temps(folders: list[Path], min_bytes: int, proc: subprocess.Popen) -> None:
    """Until every folder holds a download in progress of at least ``min_bytes`` (fails if ``proc`` ends first or
    a minute passes)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if min(_temp_bytes(f) for f in folders) >= min_bytes:
            return
        if proc.poll() is not None:
            pytest.fail(f"the download ended early: {proc.communicate()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("the downloads never started")
