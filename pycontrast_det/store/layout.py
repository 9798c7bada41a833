"""Where the cache keeps what, and its admin (list, remove). No torch here.

Under ``<cache>/files/<entry>/<role>/`` (keyed by entry and role, never by URL basename alone: every PyContrast
release is called ``model_final.pth``):

- ``<filename>``: the trusted file, the only name ever returned;
- ``.<filename>.verified.json``: what was verified about it (sha256, size, mtime, inode, how it was fetched);
- ``<filename>.<url-hash>.part`` + ``<filename>.<url-hash>.part.json``: bytes of an interrupted download from
  one URL and the validators they were received under (never trusted; resumed only if they provably continue);
- ``.<filename>.<random>.tmp``: a download in progress (or left by a killed process);
- ``.<filename>.lock``: the inter-process lock (an optimisation: correctness never depends on it).

``<cache>/pins.json`` holds the checksums recorded by ``pycontrast-zoo pin``.

A mirror (``PYCONTRAST_ZOO_ENDPOINT``; a tree made by ``pycontrast-zoo publish``, or a copy of its Hugging Face
repository) keeps the file of cache key ``<name>/<role>`` at ``<name>/<filename>`` (:func:`mirror_path`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from ..errors import ZooError
from ..refs import FileRef

ENV_HOME = "PYCONTRAST_ZOO_HOME"
#: The roles a zoo entry's files can have: the second part of a cache key ``<entry>/<role>``.
ROLES = ("model", "log", "pretrain")
#: First part of the cache keys of files known only by their URL (``url/<hash of the URL>``): no mirror has them.
URL_KEY = "url"
#: What to do when the cache cannot be written (passed to the atomic-write helpers).
CACHE_ELSEWHERE = f"set {ENV_HOME} to a writable folder with free space for the download cache"
_PARTIAL_RE = re.compile(r"\.[0-9a-f]{12}\.part$")
_RECORD_SUFFIX = ".verified.json"


def cache_dir() -> Path:
    """The cache root: $PYCONTRAST_ZOO_HOME, else $XDG_CACHE_HOME/pycontrast-zoo, else ~/.cache/pycontrast-zoo."""
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "pycontrast-zoo"


def files_dir() -> Path:
    """Where fetched files live: ``<cache>/files/<entry>/<role>/<filename>``."""
    return cache_dir() / "files"


def pins_path() -> Path:
    """The pin lock file written by ``pycontrast-zoo pin``."""
    return cache_dir() / "pins.json"


def check_key(key: str) -> tuple[str, ...]:
    """The parts of a cache key ``<entry>/<role>``; ZooError unless they are plain names."""
    parts = tuple(key.split("/"))
    if not parts or any(not p or p in (".", "..") or p.startswith(".") or "\\" in p for p in parts):
        raise ZooError(f"bad cache key {key!r}: expected '<entry>/<role>' made of plain names")
    return parts


def cache_path(file: FileRef, key: str) -> Path:
    """The one trusted location of ``file`` under cache key ``key`` (``<entry>/<role>``)."""
    return files_dir().joinpath(*check_key(key)) / file.filename


def mirror_path(file: FileRef, key: str) -> Optional[str]:
    """Where a mirror keeps the file of cache key ``<name>/<role>``: ``<name>/<filename>`` (e.g.
    ``mask_rcnn_fpn_1x_infomin/model.safetensors``, ``infomin/InfoMin_200.pth``); None for URL-only files."""
    parts = check_key(key)
    return None if parts[0] == URL_KEY else f"{parts[0]}/{file.filename}"


def partial_path(dest: Path, url: str) -> Path:
    """Resumable bytes of ``dest`` from ``url``: keyed by URL so a resume never splices two sources."""
    return dest.with_name(f"{dest.name}.{hashlib.sha1(url.encode()).hexdigest()[:12]}.part")


def validators_path(part: Path) -> Path:
    """The sidecar of a partial: URL, announced total size, ETag, Last-Modified, pieces so far."""
    return part.with_name(part.name + ".json")


def record_path(dest: Path) -> Path:
    """The sidecar of a trusted file: what was verified about it."""
    return dest.with_name(f".{dest.name}{_RECORD_SUFFIX}")


def lock_path(dest: Path) -> Path:
    """The inter-process lock of a trusted file."""
    return dest.with_name(f".{dest.name}.lock")


def temp_prefix(dest: Path) -> str:
    """Prefix of the temp files of downloads in progress for ``dest`` (suffix ``.tmp``)."""
    return f".{dest.name}."


def partials_of(dest: Path) -> list[Path]:
    """Every partial of ``dest``, from any of its URLs."""
    if not dest.parent.is_dir():
        return []
    return sorted(p for p in dest.parent.iterdir()
                  if p.name.startswith(dest.name + ".") and _PARTIAL_RE.search(p.name))


def remove_partials(dest: Path) -> None:
    """Delete the partials of ``dest`` (all URLs) with their sidecars: the file is complete now."""
    for part in partials_of(dest):
        part.unlink(missing_ok=True)
        validators_path(part).unlink(missing_ok=True)


def _kind(name: str) -> Optional[str]:
    """``file``, ``partial``, ``temp``, or None for the cache's own metadata (locks, sidecars)."""
    metadata = name.endswith((".lock", ".part.json")) or (name.startswith(".") and name.endswith(_RECORD_SUFFIX))
    if metadata:
        return None
    if _PARTIAL_RE.search(name):
        return "partial"
    if name.startswith("."):
        return "temp"
    return "file"


@dataclass(frozen=True)
class CachedFile:
    """A file under ``<cache>/files``: kind ``file`` (trusted), ``partial`` (resumable) or ``temp``;
    ``total_bytes`` is the size the server announced for the whole file (partials, when known)."""

    key: str
    path: Path
    size_bytes: int
    kind: str
    total_bytes: Optional[int] = None


def _announced_total(part: Path) -> Optional[int]:
    try:
        total = json.loads(validators_path(part).read_text(encoding="utf-8")).get("total")
    except (OSError, ValueError, AttributeError):
        return None
    return total if isinstance(total, int) else None


def cached_files() -> list[CachedFile]:
    """Everything in the file cache, sorted by key then name (locks and sidecars left out)."""
    root = files_dir()
    out = []
    for path in sorted(root.rglob("*")) if root.is_dir() else ():
        kind = _kind(path.name)
        if kind is None or not path.is_file():
            continue
        out.append(CachedFile(key=path.parent.relative_to(root).as_posix(), path=path,
                              size_bytes=path.stat().st_size, kind=kind,
                              total_bytes=_announced_total(path) if kind == "partial" else None))
    return out


def remove_cached(names: Iterable[str] = (), *, partial_only: bool = False) -> list[Path]:
    """Delete cached files whose key is or starts with one of ``names`` (an entry, a pretrain or
    ``entry/role``), everything when ``names`` is empty; with ``partial_only``, only partials and temp files.
    Sidecars go with their files. Returns what was removed."""
    names = [n.strip("/") for n in names]
    removed = []
    for item in cached_files():
        if partial_only and item.kind == "file":
            continue
        if not names or any(item.key == n or item.key.startswith(n + "/") for n in names):
            item.path.unlink(missing_ok=True)
            (record_path(item.path) if item.kind == "file" else validators_path(item.path)).unlink(missing_ok=True)
            removed.append(item.path)
    root = files_dir()
    folders = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) if root.is_dir() else []
    for folder in folders:  # drop folders left with nothing but metadata (locks, orphan sidecars)
        leftovers = list(folder.iterdir())
        if all(p.is_file() and _kind(p.name) is None for p in leftovers):
            for meta in leftovers:
                meta.unlink(missing_ok=True)
            folder.rmdir()
    return removed
