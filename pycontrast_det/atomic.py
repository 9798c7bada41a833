"""Write a file so that a reader sees the old version or the whole new one, never a torn one. No torch here.

Every writer of the project goes through this module: a temp file in the destination's folder (same
filesystem, so ``os.replace`` is atomic), fsync'ed before the rename, the folder fsync'ed after it, the usual
permissions (``0666 & ~umask``; ``mkstemp`` alone makes ``0600``). OS errors that mean "nothing can be written
here" (read-only filesystem, permission, disk or quota full, file size limit) become one
:class:`~pycontrast_det.errors.FilesystemError` that names the path and what to do.
"""
from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

from .errors import FilesystemError

__all__ = ["write_bytes", "write_text", "atomic_path", "publish", "guard", "make_dirs", "filesystem_error",
           "start_writeback"]

PathLike = Union[str, "os.PathLike[str]"]

_CANNOT_WRITE = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                 errno.EPERM: "operation not permitted"}
_NO_ROOM = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.EFBIG: "file too large for this filesystem or the process's file size limit"}
_DEFAULT_ELSEWHERE = "write to a folder you own"


def _read_umask() -> int:
    """The process umask, read once at import (os.umask is process-wide: never toggle it while threads run)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def filesystem_error(exc: OSError, path: PathLike, elsewhere: str = _DEFAULT_ELSEWHERE) -> Optional[FilesystemError]:
    """The named error for ``exc`` (raised while writing ``path``), or None when it is another kind of failure.

    Args:
        exc: the OSError as raised.
        path: what was being written; named unless the OS error names a file itself.
        elsewhere: how to write somewhere else instead (e.g. which environment variable moves a cache).
    """
    where = exc.filename if isinstance(exc.filename, str) and exc.filename else os.fspath(path)
    if exc.errno in _CANNOT_WRITE:
        return FilesystemError(f"cannot write {where}: {_CANNOT_WRITE[exc.errno]}; {elsewhere}")
    if exc.errno in _NO_ROOM:
        return FilesystemError(f"cannot write {where}: {_NO_ROOM[exc.errno]}; free space there, or {elsewhere}")
    return None


@contextmanager
def guard(path: PathLike, elsewhere: str = _DEFAULT_ELSEWHERE) -> Iterator[None]:
    """Turn "cannot write here" OS errors raised inside the block into a FilesystemError naming ``path``."""
    try:
        yield
    except OSError as exc:
        named = filesystem_error(exc, path, elsewhere)
        if named is None:
            raise
        raise named from None


def make_dirs(folder: PathLike, elsewhere: str = _DEFAULT_ELSEWHERE) -> Path:
    """``mkdir -p folder``, failing with a FilesystemError that names it."""
    folder = Path(folder)
    with guard(folder, elsewhere):
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: some filesystems cannot fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@lru_cache(maxsize=1)
def _sync_file_range() -> Optional[Callable[[int, int, int, int], int]]:
    """Linux's sync_file_range(2) through ctypes; None where the C library has none."""
    import ctypes

    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing ``nbytes`` from ``offset`` of ``fd`` to disk without waiting (Linux; elsewhere nothing),
    so that the fsync before a large file's publication has little left to do."""
    function = _sync_file_range()
    if function is not None:
        function(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE: queue the writeback, return at once


def publish(tmp: PathLike, dest: PathLike, *, synced: bool = False) -> None:
    """Move the finished temp file ``tmp`` onto ``dest``: fsync (unless ``synced``), usual permissions,
    ``os.replace``, fsync of the folder. Raw OSErrors; callers wrap this in :func:`guard`."""
    tmp, dest = Path(tmp), Path(dest)
    if not synced:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


@contextmanager
def atomic_path(path: PathLike, elsewhere: str = _DEFAULT_ELSEWHERE) -> Iterator[Path]:
    """A temp path beside ``path`` to write to (``torch.save(obj, tmp)``, ``safetensors``' ``save_file``); when
    the block ends without an error the file there replaces ``path`` atomically, otherwise it is removed."""
    path = Path(path)
    make_dirs(path.parent, elsewhere)
    with guard(path, elsewhere):
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    tmp = Path(name)
    try:
        with guard(path, elsewhere):
            yield tmp
            publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: PathLike, data: bytes, elsewhere: str = _DEFAULT_ELSEWHERE) -> Path:
    """Atomically replace ``path`` with ``data``; returns the path."""
    with atomic_path(path, elsewhere) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return Path(path)


def write_text(path: PathLike, text: str, encoding: str = "utf-8", elsewhere: str = _DEFAULT_ELSEWHERE) -> Path:
    """Atomically replace ``path`` with ``text`` (encoded with ``encoding``); returns the path."""
    return write_bytes(path, text.encode(encoding), elsewhere)
