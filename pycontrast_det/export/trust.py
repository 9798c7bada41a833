"""Which TorchScript files may be loaded: a TorchScript archive runs its code (``__setstate__``, any method) when
``torch.jit.load`` reads it, so only files this package exported on this machine (their sha256 recorded in
``<cache>/trusted-exports.json`` when written) or files the caller vouches for (``trusted=True``) are loaded.
ONNX files run no code on load and need no trust."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from .. import atomic
from ..errors import UntrustedExportError
from ..store import cache_dir
from ..store.layout import CACHE_ELSEWHERE, planted


def trust_record() -> Path:
    """The record of the sha256 of every TorchScript file exported here."""
    return cache_dir() / "trusted-exports.json"


def _recorded() -> dict[str, dict[str, str]]:
    try:
        data = json.loads(trust_record().read_text(encoding="utf-8"))
        return dict(data["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def record_export(path: Path) -> None:
    """Record the sha256 of ``path``, a TorchScript file this package has just written."""
    from filelock import FileLock

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    record = trust_record()
    atomic.make_dirs(record.parent, CACHE_ELSEWHERE)
    planted(record.with_name(record.name + ".lock"))  # a planted symlink is removed, never opened (O_TRUNC)
    with atomic.guard(record, CACHE_ELSEWHERE), FileLock(str(record) + ".lock"):
        known = _recorded()
        known[digest] = {"path": str(path.resolve()), "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                     time.gmtime())}
        atomic.write_text(record, json.dumps({"version": 1, "sha256": known}, indent=1) + "\n",
                          elsewhere=CACHE_ELSEWHERE)


def check_trusted(path: Path, data: bytes, trusted: bool) -> None:
    """UntrustedExportError unless ``data`` (the bytes of ``path`` about to be loaded) was exported here, or the
    caller said the file is trusted."""
    if trusted or hashlib.sha256(data).hexdigest() in _recorded():
        return
    raise UntrustedExportError(
        f"{path}: refused: a TorchScript archive can run code when it is loaded, and this one was not exported "
        f"on this machine (its sha256 is not in {trust_record()}); load it with trusted=True (--trust) only if "
        f"you trust where it came from, or use an ONNX export (--format onnx), which runs no code on load")
