"""Where the cache keeps what, and its admin (list, remove). No torch here.

Under ``<cache>/files/<entry>/<role>/`` (keyed by entry and role, never by URL basename alone: every PyContrast
release is called ``model_final.pth``):

- ``<filename>``: the trusted file, the only name ever returned;
- ``.<filename>.verified.json``: what was verified about it (sha256, size, mtime, inode, how it was fetched);
- ``<filename>.<url-hash>.part`` + ``<filename>.<url-hash>.part.json``: bytes of an interrupted download from
  one URL and the validators they were received under (never trusted; resumed only if they provably continue);
- ``.<filename>.<pid>-<random>.tmp``: a download in progress of process ``pid`` (removed by a later download
  once that process is gone);
- ``.<filename>.lock``: the inter-process lock (an optimisation: correctness never depends on it).

A file name longer than :data:`MAX_NAME_BYTES` is stored under a shortened name (its start, a hash, its suffix).
In a shared cache another user may plant files: every path the store opens, renames, truncates or deletes is
checked to lie inside the cache and not to be a symlink (or a hard link to elsewhere); a planted one is reported
and ignored (the symlink itself removed, never followed).

``<cache>/pins.json`` holds the checksums recorded by ``pycontrast-zoo pin``.

A mirror (``PYCONTRAST_ZOO_ENDPOINT``; a tree made by ``pycontrast-zoo publish``, or a copy of its Hugging Face
repository) keeps the file of cache key ``<name>/<role>`` at ``<name>/<filename>`` (:func:`mirror_path`).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from .. import atomic, settings
from ..errors import ZooError
from ..refs import FileRef

log = logging.getLogger(__name__)

ENV_HOME = settings.HOME
#: The longest file name kept as is (the cache adds up to 40 bytes of prefix and suffix; most filesystems allow 255).
MAX_NAME_BYTES = 200
#: The roles a zoo entry's files can have: the second part of a cache key ``<entry>/<role>``.
ROLES = ("model", "log", "pretrain")
#: First part of the cache keys of files known only by their URL (``url/<hash of the URL>``): no mirror has them.
URL_KEY = "url"
#: What to do when the cache cannot be written (passed to the atomic-write helpers).
CACHE_ELSEWHERE = f"set {ENV_HOME} to a writable folder with free space for the download cache"
_PARTIAL_RE = re.compile(r"\.[0-9a-f]{12}\.part$")
_TEMP_PID_RE = re.compile(r"\.(\d+)-[^.]*\.tmp$")
_RECORD_SUFFIX = ".verified.json"


def cache_dir() -> Path:
    """The cache root: $PYCONTRAST_ZOO_HOME, else $XDG_CACHE_HOME/pycontrast-zoo, else ~/.cache/pycontrast-zoo."""
    return settings.home()


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
    """The one trusted location of ``file`` under cache key ``key`` (``<entry>/<role>``); ZooError when the
    file has no usable name or its folder leads out of the cache (a planted symlink)."""
    dest = files_dir().joinpath(*check_key(key)) / stored_name(file.filename)
    check_inside(dest)
    return dest


def stored_name(filename: str) -> str:
    """The name ``filename`` is cached under: itself, or when longer than MAX_NAME_BYTES its start, a hash of
    it and its suffix (the lock, temp and partial names add to it); ZooError for a name that is none."""
    if filename in ("", ".", "..") or "/" in filename or "\\" in filename or "\0" in filename:
        raise ZooError(f"{filename!r}: not a file name (does the URL end in a folder or '..'?); give the URL of "
                       f"the file itself")
    if len(filename.encode()) <= MAX_NAME_BYTES:
        return filename
    suffix = "".join(Path(filename).suffixes[-2:])[-20:]
    digest = hashlib.sha256(filename.encode()).hexdigest()[:16]
    start = filename.encode()[:MAX_NAME_BYTES - 40].decode("utf-8", "ignore")
    return f"{start}~{digest}{suffix}"


def check_inside(path: Path) -> None:
    """ZooError unless ``path``'s folder, symlinks resolved, lies inside the cache's ``files`` folder."""
    root = os.path.realpath(files_dir())
    folder = os.path.realpath(path.parent)
    if folder != root and not folder.startswith(root + os.sep):
        raise ZooError(f"{path.parent} leads out of the cache (to {folder}): a symlink planted in the cache? "
                       f"remove it, or set {ENV_HOME} to a folder only you can write")


def planted(path: Path) -> bool:
    """Whether ``path`` is a symlink, or a file with other hard links (it could be a file outside the cache):
    reported, and a symlink removed (unlink never follows it). False for a plain file or no file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        log.warning("%s: a symlink planted in the cache (to %s); ignored and removed", path, os.readlink(path))
        with atomic.guard(path, CACHE_ELSEWHERE):
            path.unlink(missing_ok=True)
        return True
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        log.warning("%s: not a plain file of the cache (a hard link or special file planted there?); ignored", path)
        return True
    return False


def open_nofollow(path: Path, flags: int = os.O_RDONLY) -> int:
    """``os.open`` that refuses a symlink (O_NOFOLLOW) and anything but a plain file with one link; OSError
    ELOOP for a planted one."""
    fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        raise OSError(errno.ELOOP, "not a plain file of the cache (planted?)", str(path))
    return fd


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
    """Prefix of this process's temp files of downloads in progress for ``dest`` (suffix ``.tmp``)."""
    return f".{dest.name}.{os.getpid()}-"


def temp_owner_alive(temp: Path) -> bool:
    """Whether the process that made the temp file ``temp`` still runs (True when that cannot be told)."""
    match = _TEMP_PID_RE.search(temp.name)
    if match is None:
        return True
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_orphan_temps(dest: Path) -> None:
    """Delete the temp files of ``dest`` left by processes that are gone (killed mid-download)."""
    try:
        names = os.listdir(dest.parent)
    except OSError:
        return
    for name in names:
        temp = dest.parent / name
        if name.startswith(f".{dest.name}.") and name.endswith(".tmp") and not temp_owner_alive(temp):
            log.info("%s: removing the temp file of a download whose process is gone", temp)
            temp.unlink(missing_ok=True)


def partials_of(dest: Path) -> list[Path]:
    """Every partial of ``dest``, from any of its URLs."""
    if not dest.parent.is_dir():
        return []
    return sorted(p for p in dest.parent.iterdir()
                  if p.name.startswith(dest.name + ".") and _PARTIAL_RE.search(p.name))


def remove_partials(dest: Path) -> None:
    """Delete the partials of ``dest`` (all URLs) with their sidecars: the file is complete now."""
    for part in partials_of(dest):
        part.unlink(missing_ok=True)  # unlink removes a planted symlink itself, never its target
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
    """Everything in the file cache, sorted by key then name (locks, sidecars and planted symlinks left out)."""
    root = files_dir()
    out = []
    for path in sorted(root.rglob("*")) if root.is_dir() else ():
        kind = _kind(path.name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:  # removed meanwhile (a download finished, another `cache rm`)
            continue
        if kind is None or not stat.S_ISREG(st.st_mode):
            continue
        out.append(CachedFile(key=path.parent.relative_to(root).as_posix(), path=path, size_bytes=st.st_size,
                              kind=kind, total_bytes=_announced_total(path) if kind == "partial" else None))
    return out


def _lock_held(lock: Path) -> bool:
    """Whether another process holds the lock file ``lock`` now (a download running)."""
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def remove_cached(names: Iterable[str] = (), *, partial_only: bool = False) -> list[Path]:
    """Delete cached files whose key is or starts with one of ``names`` (an entry, a pretrain or
    ``entry/role``), everything when ``names`` is empty; with ``partial_only``, only partials and temp files.
    Sidecars go with their files; a running download's temp file and lock are left alone. Returns what was
    removed; FilesystemError when the cache cannot be written."""
    names = [n.strip("/") for n in names]
    removed = []
    root = files_dir()
    with atomic.guard(root, CACHE_ELSEWHERE):
        for item in cached_files():
            if partial_only and item.kind == "file":
                continue
            if item.kind == "temp" and temp_owner_alive(item.path):
                log.info("%s: a download in progress; left alone", item.path)
                continue
            if not names or any(item.key == n or item.key.startswith(n + "/") for n in names):
                item.path.unlink(missing_ok=True)
                (record_path(item.path) if item.kind == "file" else validators_path(item.path)).unlink(missing_ok=True)
                removed.append(item.path)
        folders = sorted((p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()),
                         key=lambda p: -len(p.parts)) if root.is_dir() else []
        for folder in folders:  # drop folders left with nothing but metadata (unheld locks, orphan sidecars)
            leftovers = list(folder.iterdir())
            if all(p.is_file() and not p.is_symlink() and _kind(p.name) is None and not
                   (p.name.endswith(".lock") and _lock_held(p)) for p in leftovers):
                for meta in leftovers:
                    meta.unlink(missing_ok=True)
                try:
                    folder.rmdir()
                except OSError as exc:  # something appeared meanwhile (a new download): keep the folder
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                        raise
    return removed
