"""What the cache verified about each trusted file, the cache-hit check built on it, and ``verify``.

Beside every trusted file a small record keeps its sha256, size, mtime and inode, and how many pieces
(HTTP responses) its bytes came in. A cache hit whose size, mtime and inode still match the record, and whose
recorded sha256 is the expected one (manifest, pin, else the one recorded at download), costs a ``stat``; any
other hit is re-hashed, and a file whose bytes are not the expected ones is removed, never returned.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from .. import atomic
from ..errors import ChecksumError, FilesystemError
from ..refs import FileRef
from .layout import CACHE_ELSEWHERE, cache_path, planted, record_path
from .pins import Expected, expected

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20  # big reads (syscalls and hashing amortised), small enough to stay in cache


def hash_file(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a file, read in big chunks."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(CHUNK_BYTES)
            if not chunk:
                break
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


@dataclass(frozen=True)
class Record:
    """What was verified about a trusted file. ``pieces``: how many responses (or copies) its bytes came in;
    1 = one verified piece, None = unknown (the file was put in place by hand)."""

    sha256: str
    size_bytes: int
    mtime_ns: int
    inode: int
    pieces: Optional[int]
    url: Optional[str]

    def describes(self, st: os.stat_result) -> bool:
        """Whether the file behind ``st`` is unchanged since this record was written."""
        return (st.st_size, st.st_mtime_ns, st.st_ino) == (self.size_bytes, self.mtime_ns, self.inode)


def read_record(dest: Path) -> Optional[Record]:
    """The record of ``dest``; None when there is none or it cannot be read."""
    try:
        return Record(**json.loads(record_path(dest).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def write_record(dest: Path, tmp: Path, sha256: str, pieces: Optional[int], url: Optional[str]) -> Record:
    """Record what was verified about ``tmp``, the file about to become (or being) ``dest``: os.replace keeps
    inode and mtime, so the record written before the rename describes the published file."""
    st = os.stat(tmp)
    record = Record(sha256, st.st_size, st.st_mtime_ns, st.st_ino, pieces, url)
    atomic.write_text(record_path(dest), json.dumps(asdict(record)) + "\n", elsewhere=CACHE_ELSEWHERE)
    return record


def _refresh_record(dest: Path, sha256: str, pieces: Optional[int], url: Optional[str]) -> None:
    """Re-record a re-verified file; best effort (a read-only cache still serves what it holds)."""
    try:
        write_record(dest, dest, sha256, pieces, url)
    except (OSError, FilesystemError) as exc:
        log.debug("%s: cannot update its record (%s); it is re-hashed on every use", dest, exc)


def discard(dest: Path, st: os.stat_result) -> None:
    """Remove a trusted file whose bytes are wrong (the one ``st`` describes: not a newer file another process
    has just published in its place), with its record."""
    with atomic.guard(dest, CACHE_ELSEWHERE):
        try:
            if os.stat(dest).st_ino == st.st_ino:
                dest.unlink()
        except FileNotFoundError:
            pass
        record = read_record(dest)
        if record is None or record.inode == st.st_ino:
            record_path(dest).unlink(missing_ok=True)


@dataclass(frozen=True)
class Hit:
    """A cache lookup: the trusted path, or why there is none (``problem`` set when a wrong file was removed)."""

    path: Optional[Path]
    problem: Optional[str] = None


def check_hit(dest: Path, want: Expected) -> Hit:
    """Return ``dest`` if it holds the expected bytes (hashing only when the record does not vouch for them);
    remove it (and say why) if it does not. A planted symlink or hard link is never a hit."""
    if planted(dest):
        return Hit(None, f"{dest} was planted (a link, not a file the store wrote); ignored")
    try:
        st = dest.stat()
    except FileNotFoundError:
        if record_path(dest).exists():  # the file was deleted by hand: a file put there later is new
            record_path(dest).unlink(missing_ok=True)
        return Hit(None)
    if want.size_bytes is not None and st.st_size != want.size_bytes:
        discard(dest, st)
        return Hit(None, f"{dest} had {st.st_size} bytes, expected {want.size_bytes} ({want.source}); removed it")
    record = read_record(dest)
    sha = want.sha256 or (record.sha256 if record is not None else None)
    if record is not None and record.describes(st) and record.sha256 == sha:
        return Hit(dest)
    actual, _ = hash_file(dest)
    if sha is not None and actual != sha:
        source = want.source if want.sha256 else "recorded when it was downloaded"
        discard(dest, st)
        return Hit(None, f"{dest} had sha256 {actual}, expected {sha} ({source}); removed it")
    same = record is not None and record.sha256 == actual
    _refresh_record(dest, actual, record.pieces if same and record else None,
                    record.url if same and record else None)
    return Hit(dest)


def check_file(sha256: Optional[str], size: Optional[int], got_sha: str, got_size: int) -> None:
    """ChecksumError unless ``got_sha`` / ``got_size`` are the expected ``sha256`` / ``size`` (None: any)."""
    if size is not None and got_size != size:
        raise ChecksumError(f"size mismatch: expected {size} bytes, got {got_size}; discarded")
    if sha256 is not None and got_sha != sha256:
        raise ChecksumError(f"sha256 mismatch: expected {sha256}, got {got_sha} ({got_size} bytes); discarded")


@dataclass(frozen=True)
class Verification:
    """The result of re-hashing one cached file: status ok | mismatch | missing | unverified."""

    key: str
    path: Path
    status: str
    expected_sha256: Optional[str]
    actual_sha256: Optional[str]
    size_bytes: Optional[int]
    message: str


def verify_file(file: FileRef, key: str) -> Verification:
    """Re-hash the cached copy of ``file`` against the manifest sha256, else the pin, else the sha256 recorded
    when it was downloaded (a file changed since is a mismatch)."""
    path = cache_path(file, key)
    want = expected(file, key)
    entry = key.split("/")[0]
    if planted(path) or not path.is_file():
        return Verification(key, path, "missing", want.sha256, None, None,
                            f"not cached; run `pycontrast-zoo download {entry}`")
    actual, actual_size = hash_file(path)
    record = read_record(path)
    fix = f"remove it with `pycontrast-zoo cache rm {entry}` and download again"
    if want.sha256 is None:
        if record is not None and record.sha256 != actual:
            return Verification(key, path, "mismatch", record.sha256, actual, actual_size,
                                f"changed since it was downloaded: sha256 {actual}, recorded {record.sha256}; {fix}")
        return Verification(key, path, "unverified", None, actual, actual_size,
                            f"unverified: no published checksum; sha256 here is {actual}; "
                            f"run `pycontrast-zoo pin {entry}` to record it")
    if actual != want.sha256 or (want.size_bytes is not None and actual_size != want.size_bytes):
        return Verification(key, path, "mismatch", want.sha256, actual, actual_size,
                            f"sha256 mismatch ({want.source}): expected {want.sha256}, got {actual} "
                            f"({actual_size} bytes); {fix}")
    same = record is not None and record.sha256 == actual
    _refresh_record(path, actual, record.pieces if same and record else None,
                    record.url if same and record else None)
    return Verification(key, path, "ok", want.sha256, actual, actual_size, f"sha256 matches ({want.source})")
