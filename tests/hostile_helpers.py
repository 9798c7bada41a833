"""Helpers of the hostile-server and hostile-cache tests (issue 16): a manifest with or without checksums, the
CLI run that must end with exit 0 or 2 and at most one error line, and the end-of-test checks (the cache holds
only bytes a server served whole; nothing outside the cache changed)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Optional

import pytest
import yaml

from pycontrast_det import store
from pycontrast_det.cli import main


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(folder: Path, urls: list[str], data: Optional[bytes] = None, name: str = "manifest.yaml") -> Path:
    """A user manifest with one detector ``my_det`` whose model has ``urls``; with ``data``, its published sha256
    and size."""
    (folder / "cfg.yaml").write_text("_BASE_: x\n")
    model = {"urls": urls, "sha256": digest(data) if data is not None else None,
             "size_bytes": len(data) if data is not None else None, "format": "detectron2"}
    entry = {"detector": "fpn", "schedule": "1x", "pretrain": "mine", "config": "cfg.yaml", "box_ap": 30.0,
             "mask_ap": 27.0, "published": True, "model": model, "log": None}
    body = {"schema_version": 1, "merge": True,
            "pretrains": {"mine": {"method": "Mine", "epochs": 1, "imagenet_top1": None, "file": None}},
            "entries": {"my_det": entry}}
    path = folder / name
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def download(path: Path, capsys: pytest.CaptureFixture, *extra: str) -> tuple[int, str]:
    """``pycontrast-zoo --manifest PATH download my_det --what model``: (exit code, its one error line or "")."""
    return cli(["--manifest", str(path), "download", "my_det", "--what", "model", "--quiet", *extra], capsys)


def cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Run the CLI: it must exit 0 or 2, print no traceback and at most one error line (``download`` reports a
    failed file as ``KEY: FAILED: why`` in one line, then a count)."""
    code = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line or ": FAILED: " in line]
    assert code in (0, 2), err
    assert "Traceback" not in err, err
    assert len(errors) == (1 if code == 2 else 0), err
    return code, errors[0] if errors else ""


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """(sha256, size) of every file under ``root`` (outside the cache: it must never change)."""
    return {str(p): (digest(p.read_bytes()), p.stat().st_size) for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def assert_cache_holds_only(served: Iterable[bytes]) -> None:
    """Every trusted file in the cache is one of ``served`` (bytes a server served whole), none a link."""
    allowed = {digest(b) for b in served}
    for item in store.cached_files():
        if item.kind == "file":
            assert not item.path.is_symlink()
            assert digest(item.path.read_bytes()) in allowed, f"{item.path} holds bytes no server served whole"
    for path in store.files_dir().rglob("*") if store.files_dir().is_dir() else ():
        assert not path.is_symlink() or not path.name.endswith((".pth", ".part")), f"{path}: a link published"


@pytest.fixture
def outside(tmp_path):
    """A file outside the cache that planted links point at; at the end nothing under ``tmp_path`` (where it
    and the manifests live; the cache is elsewhere) may have changed but what the test wrote itself."""
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"precious bytes outside the cache\n" * 100)
    yield victim
