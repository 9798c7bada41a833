"""Bytes being fetched: a temp file beside the destination, hashed while written (one pass), published only
after every check, else kept as a resumable partial with the validators it was received under.

Consistency at any interruption point: ``size`` counts the bytes handed to the file; a kept partial is cut to
``size`` before it is recorded (a write interrupted before it was counted leaves nothing extra), and an adopted
partial is hashed again from its bytes. A kept partial is opened with O_NOFOLLOW and taken over by rename; the
Partial then writes through the descriptor of the very file at its path, never an old one."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

from .. import atomic
from ..errors import ChecksumError, DownloadError, DownloadInterrupted, FilesystemError
from .layout import CACHE_ELSEWHERE, open_nofollow, planted, remove_partials, temp_prefix, validators_path
from .verify import CHUNK_BYTES, check_file, write_record

log = logging.getLogger(__name__)

WRITEBACK_BYTES = 8 << 20  # written bytes between two writebacks started (the final fsync then costs ~nothing)
_generation = [0]  # bumped by interrupt_downloads; a Partial made before the bump stops at its next write


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (what ``timeout``, ``docker stop`` and SLURM send) stops a download as Ctrl-C
    does: DownloadInterrupted, the partial kept. Only on the main thread, and only where SIGTERM still has its
    default action (an application's own handler is left alone)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise DownloadInterrupted("terminated (SIGTERM)", signum=signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def interrupt_downloads() -> None:
    """Make every download running in this process stop at its next chunk and keep its partial, so that a
    later run resumes it (Ctrl-C reaches only the main thread; downloads on other threads learn it here)."""
    _generation[0] += 1


class _Hasher:
    """sha256 fed from a helper thread, so hashing overlaps receiving and writing (hashlib drops the GIL)."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._abandoned = False
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            if self._abandoned:
                return
            try:
                data = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if data is None:
                return
            self._sha.update(data)

    def update(self, data: bytes) -> None:
        self._queue.put(data)

    def hexdigest(self) -> str:
        """Wait for every queued byte, then the digest (the hasher is finished afterwards)."""
        self._queue.put(None)
        self._thread.join()
        return self._sha.hexdigest()

    def abandon(self) -> None:
        """Stop without waiting: the digest is not needed, and Ctrl-C may have interrupted a queue operation
        (Condition objects are not signal-safe), so touch no lock here; the thread ends within a second."""
        self._abandoned = True


@dataclass
class Validators:
    """What the bytes of a partial were received under: a resume must match all of it.

    ``total``: the size announced for the whole file (None: unknown, the partial cannot be resumed);
    ``etag`` / ``last_modified``: the server's validators, sent back as If-Range; ``pieces``: how many responses
    (or copies) the bytes came in (1 = one verified piece); ``size``: the partial's size when recorded.
    """

    url: str
    total: Optional[int] = None
    etag: Optional[str] = None
    last_modified: Optional[str] = None
    pieces: int = 0
    size: int = 0


def _read_validators(path: Path) -> Optional[Validators]:
    try:
        return Validators(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


class Partial:
    """The bytes of one fetch of ``dest`` from ``url`` (create it inside ``atomic.guard``: it makes a file)."""

    def __init__(self, dest: Path, url: str) -> None:
        atomic.make_dirs(dest.parent, CACHE_ELSEWHERE)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=temp_prefix(dest), suffix=".tmp")
        self.path = Path(name)
        self.fh: BinaryIO = os.fdopen(fd, "r+b")
        self.sha = _Hasher()
        self.size = 0
        self.validators = Validators(url)
        self._generation = _generation[0]
        self._synced = 0  # bytes whose writeback was started
        self.adopted = False  # holds bytes kept by an earlier run (not just received in this call)

    def adopt(self, part: Path) -> bool:
        """Take over a kept partial of the same URL (atomically: one process wins) with its validators and
        hash its bytes; False (and nothing adopted) if there is none, it cannot be resumed, or it was planted
        (a symlink, a hard link: reported, never followed)."""
        sidecar = validators_path(part)
        if planted(part) or planted(sidecar):
            return False
        try:
            fd = open_nofollow(part, os.O_RDWR)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("%s: not adopted (%s)", part, exc.strerror or exc)
            return False
        fh = os.fdopen(fd, "r+b")
        try:
            os.replace(part, self.path)  # atomic: of two racing processes only one gets the bytes
            here, mine = os.lstat(self.path), os.fstat(fd)
        except FileNotFoundError:
            fh.close()
            return False
        if (here.st_ino, here.st_dev) != (mine.st_ino, mine.st_dev):  # swapped between open and rename
            log.warning("%s: changed while being adopted (planted?); ignored", part)
            fh.close()
            self.path.unlink(missing_ok=True)
            self._reopen_empty()
            return False
        self.fh.close()  # the temp file it was is gone (replaced): from now on write to the adopted one
        self.fh = fh
        kept = _read_validators(sidecar)
        sidecar.unlink(missing_ok=True)
        size = mine.st_size
        if kept is None or kept.url != self.validators.url or kept.size != size or kept.total is None \
                or size > kept.total:
            log.info("%s: partial without matching validators; starting from byte 0", part)
            self.fh.truncate(0)
            return False
        while True:
            chunk = self.fh.read(CHUNK_BYTES)
            if not chunk:
                break
            self.sha.update(chunk)
            self.size += len(chunk)
        self.validators = kept
        self.adopted = True
        return True

    def _reopen_empty(self) -> None:
        """A new empty temp file (the one this Partial had is gone)."""
        self.fh.close()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        self.fh = os.fdopen(fd, "r+b")

    def tail(self, n: int) -> bytes:
        """The last ``n`` bytes written (to check that a resumed response overlaps them exactly)."""
        self.fh.flush()
        return os.pread(self.fh.fileno(), n, self.size - n)

    def check_interrupted(self) -> None:
        """DownloadInterrupted once :func:`interrupt_downloads` was called after this Partial was made."""
        if _generation[0] != self._generation:
            raise DownloadInterrupted("download interrupted")

    def write(self, data: bytes) -> None:
        self.check_interrupted()
        self.fh.write(data)
        self.size += len(data)  # counted before hashed: an interruption between them leaves no uncounted bytes
        self.sha.update(data)
        if self.size - self._synced >= WRITEBACK_BYTES:
            self.fh.flush()
            atomic.start_writeback(self.fh.fileno(), self._synced, self.size - self._synced)
            self._synced = self.size

    def reset(self, url: Optional[str] = None) -> None:
        """Start over from byte 0 (the server's answer does not continue these bytes)."""
        self.fh.seek(0)
        self.fh.truncate()
        self.sha.abandon()
        self.sha = _Hasher()
        self.size = self._synced = 0
        self.validators = Validators(url or self.validators.url)
        self.adopted = False

    def discard(self) -> None:
        self.fh.close()
        self.sha.abandon()
        self.path.unlink(missing_ok=True)

    def keep(self, part: Path) -> None:
        """Leave the bytes as a resumable (never trusted) partial with its validators, if they can be resumed
        (some bytes, and a known total); otherwise discard them. Never raises: it runs while failing."""
        self.sha.abandon()
        try:
            self.fh.flush()
            self.fh.truncate(self.size)  # bytes written but not counted (interrupted mid-write) are dropped
        except (OSError, ValueError):
            pass
        self.fh.close()
        if not self.size or self.validators.total is None:
            self.path.unlink(missing_ok=True)
            return
        self.validators.size = self.size
        try:
            atomic.write_text(validators_path(part), json.dumps(asdict(self.validators)) + "\n",
                              elsewhere=CACHE_ELSEWHERE)
            os.replace(self.path, part)
        except (OSError, FilesystemError) as exc:
            log.warning("%s: cannot keep the partial download (%s)", part, exc)
            self.path.unlink(missing_ok=True)

    def commit(self, dest: Path, sha256: Optional[str], size: Optional[int]) -> Path:
        """Check the size announced for the whole file, the expected size and sha256, record what was
        verified, then publish as ``dest`` atomically and drop the file's partials; on any failure discard."""
        try:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            written = os.fstat(self.fh.fileno())
            self.fh.close()
            actual = self.sha.hexdigest()
            if written.st_size != self.size:
                raise ChecksumError(f"{self.path}: holds {written.st_size} bytes, {self.size} were written: "
                                    f"changed by another process; discarded")
            try:
                here = os.lstat(self.path)
            except FileNotFoundError:
                raise DownloadError(f"{self.path}: the download's temp file was removed while it ran (`cache rm`?); "
                                    f"run this again") from None
            if (here.st_ino, here.st_dev) != (written.st_ino, written.st_dev):
                raise DownloadError(f"{self.path}: replaced by another file while the download ran; run this again")
            total = self.validators.total
            if total is not None and self.size != total:
                raise ChecksumError(f"size mismatch: the server announced {total} bytes for the whole file, "
                                    f"got {self.size}; discarded")
            check_file(sha256, size, actual, self.size)
            # an mtime in the past: any later write to the file changes it, so the record cannot vouch for it
            past = (int(time.time()) - 1) * 10**9
            os.utime(self.path, ns=(past, past))
            write_record(dest, self.path, actual, self.validators.pieces, self.validators.url)
            atomic.publish(self.path, dest, synced=True)
        except BaseException:
            self.discard()
            raise
        remove_partials(dest)
        return dest
