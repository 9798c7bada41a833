"""URL -> verified local file: the download cache of pycontrast-det. No torch here.

Layout: ``<cache>/files/<entry>/<role>/<filename>`` (keyed by entry and role, never by URL basename alone:
every PyContrast release is called ``model_final.pth``), ``<cache>/pins.json`` (checksums recorded by
``pycontrast-zoo pin``). Only the final ``<filename>`` is ever trusted; downloads go to a unique temp file in
the same folder and are ``os.replace``'d into place after the size and sha256 checks. An interrupted HTTP
download is kept as ``<filename>.<url-hash>.part`` and resumed (its bytes re-hashed first) by a later run.

Environment: ``PYCONTRAST_ZOO_HOME`` (cache root), ``PYCONTRAST_ZOO_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``
(never touch the network), ``PYCONTRAST_ZOO_ENDPOINT`` (mirror: every http(s) URL has its scheme and host
replaced by the endpoint, path and query kept: ``https://www.dropbox.com/s/ID/f.pth?dl=1`` ->
``$ENDPOINT/s/ID/f.pth?dl=1``), ``PYCONTRAST_ZOO_RETRIES`` / ``PYCONTRAST_ZOO_BACKOFF`` /
``PYCONTRAST_ZOO_TIMEOUT`` (retries per URL on connection errors and 5xx, first backoff and read timeout in
seconds). ``HTTP(S)_PROXY`` is honoured (requests), ``HF_ENDPOINT`` / ``HF_HUB_CACHE`` for ``hf://`` URLs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Optional, Sequence, Union
from urllib.parse import parse_qsl, unquote, urlencode, urlparse

from .errors import ChecksumError, DownloadError, HTMLResponseError, OfflineError, ZooError
from .zoo import FileRef, PretrainEntry, Zoo, load_manifest

__all__ = [
    "cache_dir", "files_dir", "cache_path", "fetch_file", "fetch_url", "fetch_entry_file", "fetch_pretrain",
    "entry_files", "pretrain_files", "import_from_dir", "hash_file", "verify_file", "pin_file", "load_pins",
    "checksum_status", "cached_files", "remove_cached", "candidate_urls", "is_offline", "Pin", "Verification",
    "CachedFile", "RetryPolicy", "retry_policy", "ROLES",
]

log = logging.getLogger(__name__)

ENV_HOME = "PYCONTRAST_ZOO_HOME"
ENV_OFFLINE = "PYCONTRAST_ZOO_OFFLINE"
ENV_ENDPOINT = "PYCONTRAST_ZOO_ENDPOINT"
ROLES = ("model", "log", "pretrain")
CHUNK_BYTES = 1 << 20          # big reads (syscalls and hashing amortised), small enough to stay in cache
LOCK_WAIT_S = 3600.0           # another process downloading the same file: wait for it, then reuse
_TRUE = {"1", "true", "yes", "on"}


# ------------------------------------------------------------------------------------------- settings


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


def _pins_path() -> Path:
    return cache_dir() / "pins.json"


def is_offline(offline: Optional[bool] = None) -> bool:
    """``offline`` if given, else whether PYCONTRAST_ZOO_OFFLINE or HF_HUB_OFFLINE is set to a true value."""
    if offline is not None:
        return offline
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in (ENV_OFFLINE, "HF_HUB_OFFLINE"))


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one URL: attempts after the first, first backoff (doubling, capped) and read timeout."""

    retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    timeout_s: float = 60.0

    def delay(self, attempt: int) -> float:
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)


def retry_policy() -> RetryPolicy:
    """The policy from PYCONTRAST_ZOO_RETRIES / _BACKOFF / _TIMEOUT (defaults: 4 retries, 1 s, 60 s)."""
    default = RetryPolicy()
    try:
        return RetryPolicy(
            retries=int(os.environ.get("PYCONTRAST_ZOO_RETRIES", default.retries)),
            backoff_s=float(os.environ.get("PYCONTRAST_ZOO_BACKOFF", default.backoff_s)),
            timeout_s=float(os.environ.get("PYCONTRAST_ZOO_TIMEOUT", default.timeout_s)),
        )
    except ValueError as exc:
        raise ZooError(f"bad PYCONTRAST_ZOO_RETRIES/BACKOFF/TIMEOUT value: {exc}") from None


# ----------------------------------------------------------------------------------------------- keys


def _check_key(key: str) -> tuple[str, ...]:
    parts = tuple(key.split("/"))
    if not parts or any(not p or p in (".", "..") or p.startswith(".") or "\\" in p for p in parts):
        raise ZooError(f"bad cache key {key!r}: expected '<entry>/<role>' made of plain names")
    return parts


def cache_path(file: FileRef, key: str) -> Path:
    """The one trusted location of ``file`` under cache key ``key`` (``<entry>/<role>``)."""
    return files_dir().joinpath(*_check_key(key)) / file.filename


def _partial_path(dest: Path, url: str) -> Path:
    """Resumable bytes of ``dest`` from ``url``: keyed by URL so a resume never splices two sources."""
    return dest.with_name(f"{dest.name}.{hashlib.sha1(url.encode()).hexdigest()[:12]}.part")


# ----------------------------------------------------------------------------------------------- pins


@dataclass(frozen=True)
class Pin:
    """A checksum recorded on this machine by ``pycontrast-zoo pin`` (trust on first download)."""

    key: str
    filename: str
    sha256: str
    size_bytes: int
    url: str
    pinned_at: str


def load_pins() -> dict[str, Pin]:
    """The pin lock file (``<cache>/pins.json``) as key -> Pin; empty when there is none."""
    path = _pins_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ZooError(f"{path}: unreadable pin lock file ({exc}); delete it and run `pycontrast-zoo pin`") from None
    try:
        return {key: Pin(key=key, **value) for key, value in data["pins"].items()}
    except (KeyError, TypeError) as exc:
        raise ZooError(f"{path}: malformed pin lock file ({exc}); delete it and run `pycontrast-zoo pin`") from None


def _record_pin(pin: Pin) -> None:
    from filelock import FileLock

    path = _pins_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        pins = load_pins()
        pins[pin.key] = pin
        body = {"version": 1, "pins": {k: {f: v for f, v in asdict(p).items() if f != "key"}
                                       for k, p in sorted(pins.items())}}
        _atomic_write_text(path, json.dumps(body, indent=2) + "\n")


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        _publish(Path(tmp), path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _expected(file: FileRef, key: str) -> tuple[Optional[str], Optional[int], str]:
    """(sha256, size, where from): the manifest's values, else this machine's pin for the same file name."""
    if file.sha256 is not None:
        return file.sha256, file.size_bytes, "manifest"
    pin = load_pins().get(key)
    if pin is not None and pin.filename == file.filename:
        return pin.sha256, pin.size_bytes, f"pin in {_pins_path()}"
    return None, file.size_bytes, "none"


def checksum_status(file: FileRef, key: str) -> str:
    """One line: where the expected sha256 of this file comes from, or that there is none."""
    sha, _, source = _expected(file, key)
    if sha is None:
        return f"unverified: no published checksum; run `pycontrast-zoo pin {key.split('/')[0]}`"
    return f"sha256 {sha} ({source})"


# ------------------------------------------------------------------------------------- partial files


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


class _Partial:
    """Bytes being fetched: a unique temp file beside the destination, hashed while written (one pass)."""

    def __init__(self, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        self.path = Path(name)
        self.fh: BinaryIO = os.fdopen(fd, "r+b")
        self.sha = _Hasher()
        self.size = 0

    def adopt(self, part: Path) -> bool:
        """Take over a kept partial (atomically: one process wins) and hash its bytes; False if none."""
        try:
            os.replace(part, self.path)  # atomic: of two racing processes only one gets the bytes
        except FileNotFoundError:
            return False
        self.fh.close()
        self.fh = open(self.path, "r+b")
        while True:
            chunk = self.fh.read(CHUNK_BYTES)
            if not chunk:
                break
            self.sha.update(chunk)
            self.size += len(chunk)
        return True

    def write(self, data: bytes) -> None:
        self.fh.write(data)
        self.sha.update(data)
        self.size += len(data)

    def reset(self) -> None:
        """Start over (the server ignored our Range request, or the partial is unusable)."""
        self.fh.seek(0)
        self.fh.truncate()
        self.sha.abandon()
        self.sha = _Hasher()
        self.size = 0

    def discard(self) -> None:
        self.fh.close()
        self.sha.abandon()
        self.path.unlink(missing_ok=True)

    def keep(self, part: Path) -> None:
        """Leave the bytes as a resumable (never trusted) partial for a later run."""
        self.fh.close()
        self.sha.abandon()
        if self.size:
            os.replace(self.path, part)
        else:
            self.path.unlink(missing_ok=True)

    def commit(self, dest: Path, sha256: Optional[str], size: Optional[int]) -> Path:
        """Check size and sha256, then atomically publish as ``dest``; on mismatch discard and raise."""
        self.fh.close()
        actual = self.sha.hexdigest()
        if size is not None and self.size != size:
            self.path.unlink(missing_ok=True)
            raise ChecksumError(f"size mismatch: expected {size} bytes, got {self.size}; discarded")
        if sha256 is not None and actual != sha256:
            self.path.unlink(missing_ok=True)
            raise ChecksumError(f"sha256 mismatch: expected {sha256}, got {actual} "
                                f"({self.size} bytes); discarded")
        _publish(self.path, dest)
        return dest


def _read_umask() -> int:
    """The process umask, read once at import (os.umask is process-wide: never toggle it while threads run)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def _publish(tmp: Path, dest: Path) -> None:
    """Give the file the usual permissions (mkstemp makes 0600) and move it into place atomically."""
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, dest)


# ------------------------------------------------------------------------------------------- sources


class _Skip(Exception):
    """This URL cannot serve the file (404, offline, unknown repo): try the next one."""


class _Transient(Exception):
    """Worth retrying the same URL (connection cut, timeout, 5xx)."""


def candidate_urls(file: FileRef) -> list[str]:
    """The URLs to try, in order: Dropbox ``?dl=0`` made raw (``?dl=1``), PYCONTRAST_ZOO_ENDPOINT applied."""
    endpoint = os.environ.get(ENV_ENDPOINT, "").strip().rstrip("/")
    out: list[str] = []
    for url in file.urls:
        parsed = urlparse(url)
        if parsed.scheme in ("http", "https"):
            query = parsed.query
            if parsed.hostname and parsed.hostname.endswith("dropbox.com"):
                query = urlencode([(k, "1" if k == "dl" else v) for k, v in parse_qsl(query, keep_blank_values=True)])
            base = endpoint if endpoint else f"{parsed.scheme}://{parsed.netloc}"
            url = f"{base}{parsed.path}" + (f"?{query}" if query else "")
        if url not in out:
            out.append(url)
    return out


def _is_network(url: str) -> bool:
    return urlparse(url).scheme in ("http", "https")


def _local_source(url: str) -> Optional[Path]:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if "://" not in url:
        return Path(url)
    return None


def _copy_local(src: Path, partial: _Partial) -> None:
    try:
        fh = open(src, "rb")
    except FileNotFoundError:
        raise _Skip(f"no such file {src}") from None
    except OSError as exc:
        raise _Skip(f"cannot read {src}: {exc.strerror or exc}") from None
    with fh:
        while True:
            chunk = fh.read(CHUNK_BYTES)
            if not chunk:
                break
            partial.write(chunk)


def _hf_cache_dir() -> Optional[str]:
    """HF_HUB_CACHE / HF_HOME read now (huggingface_hub reads them once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _hf_download(url: str, offline: bool, quiet: bool) -> Path:
    """``hf://org/repo[@revision]/path/in/repo`` via huggingface_hub (its own cache, offline aware)."""
    from huggingface_hub import hf_hub_download

    parsed = urlparse(url)
    parts = [p for p in (parsed.netloc + parsed.path).split("/") if p]
    org, repo, filename = parts[0], parts[1], "/".join(parts[2:])
    repo, _, revision = repo.partition("@")
    try:
        path = hf_hub_download(f"{org}/{repo}", filename, revision=revision or None, local_files_only=offline,
                               endpoint=os.environ.get("HF_ENDPOINT") or None, cache_dir=_hf_cache_dir(),
                               tqdm_class=_quiet_tqdm() if quiet else None)
    except Exception as exc:  # huggingface_hub raises many kinds (HTTP, offline, validation): all mean "skip"
        raise _Skip(f"huggingface_hub: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    return Path(path)


def _progress(total: Optional[int], initial: int, desc: str, quiet: bool):
    from tqdm.auto import tqdm

    # disable=None: tqdm shows the bar only on a TTY
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=True if quiet else None, leave=False)


def _quiet_tqdm() -> type:
    """A tqdm class that never draws (huggingface_hub takes a class)."""
    from tqdm.auto import tqdm

    class QuietTqdm(tqdm):
        def __init__(self, *args, **kwargs) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return QuietTqdm


_HTML_MAGIC = (b"<!doctype html", b"<html", b"<head", b"<body")


def _looks_like_html(first: bytes) -> bool:
    return first[:512].lstrip().lower().startswith(_HTML_MAGIC)


def _http_download(session, url: str, partial: _Partial, expected_size: Optional[int], policy: RetryPolicy,
                   quiet: bool, desc: str) -> None:
    """Stream ``url`` into ``partial``, resuming from its current size; retries transient failures."""
    import requests
    import urllib3

    attempt = 0
    while True:
        try:
            _http_attempt(session, url, partial, expected_size, policy, quiet, desc)
            return
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                urllib3.exceptions.HTTPError, ConnectionError, _Transient) as exc:
            attempt += 1
            if attempt > policy.retries:
                raise _Transient(f"{type(exc).__name__}: {exc} (gave up after {attempt} attempts)") from None
            delay = policy.delay(attempt)
            log.info("%s: %s; retry %d/%d in %.1fs from byte %d", url, exc, attempt, policy.retries, delay,
                     partial.size)
            time.sleep(delay)
        except requests.RequestException as exc:  # bad URL, redirect loop, ...: not worth retrying
            raise _Skip(f"{type(exc).__name__}: {exc}") from None


def _http_attempt(session, url: str, partial: _Partial, expected_size: Optional[int], policy: RetryPolicy,
                  quiet: bool, desc: str) -> None:
    if expected_size is not None and partial.size > expected_size:
        partial.reset()
    if expected_size is not None and partial.size == expected_size:
        return  # a kept partial already holds every byte; the commit checks it
    headers = {"Accept-Encoding": "identity"}
    offset = partial.size
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with session.get(url, headers=headers, stream=True, timeout=(min(policy.timeout_s, 30.0), policy.timeout_s),
                     allow_redirects=True) as resp:
        code = resp.status_code
        if code in (401, 403, 404, 410):
            raise _Skip(f"HTTP {code}")
        if code == 416:  # our partial does not fit what the server has now
            partial.reset()
            raise _Transient("HTTP 416 (range not satisfiable); starting over")
        if code == 429 or code >= 500:
            raise _Transient(f"HTTP {code}")
        if code not in (200, 206):
            raise _Skip(f"HTTP {code}")
        if code == 206 and not resp.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            partial.reset()
            raise _Transient(f"unexpected Content-Range {resp.headers.get('Content-Range')!r}; starting over")
        if code == 200 and offset:
            log.info("%s ignored the Range request; starting over", url)
            partial.reset()
            offset = 0
        ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype in ("text/html", "application/xhtml+xml"):
            raise HTMLResponseError(f"the server sent an HTML page (Content-Type {ctype}), not the file: "
                                    f"a dead link, a quota or login page")
        length = resp.headers.get("Content-Length")
        encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
        body = int(length) if length is not None and not encoded else None
        total = offset + body if body is not None else expected_size
        received = 0
        with _progress(total, offset, desc, quiet) as bar:
            while True:
                # read1: whatever has arrived (up to CHUNK_BYTES), so a cut connection loses no received bytes
                chunk = resp.raw.read1(CHUNK_BYTES, decode_content=True)
                if not chunk:
                    break
                if received == 0:
                    _check_start(chunk, offset, total, expected_size)
                partial.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if body is not None and received < body:
            raise _Transient(f"connection closed after {received} of {body} bytes")


def _check_start(first: bytes, offset: int, total: Optional[int], expected_size: Optional[int]) -> None:
    """Refuse a response early: an HTML page instead of the file, or a size other than the expected one."""
    if offset == 0 and _looks_like_html(first):
        raise HTMLResponseError("the server sent an HTML page, not the file: a dead link, a quota or login page")
    if expected_size is not None and total is not None and total != expected_size:
        raise ChecksumError(f"size mismatch: the server announces {total} bytes, expected {expected_size}")


# ------------------------------------------------------------------------------------------ fetching


def fetch_file(file: FileRef, key: str, *, quiet: bool = False, offline: Optional[bool] = None) -> Path:
    """The verified local copy of ``file`` cached under ``key`` (``<entry>/<role>``), downloading if needed.

    Cache hits are checked for size (when known from the manifest or a pin); new downloads for size and
    sha256. URLs are tried in order (see ``candidate_urls``). Offline, only the cache, local files and the
    Hugging Face cache are used; a missing file raises OfflineError naming where to put it.
    """
    dest = cache_path(file, key)
    hit = _cache_hit(file, key, dest)
    if hit is not None:
        return hit
    dest.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock, Timeout

    lock = FileLock(str(dest.parent / f".{dest.name}.lock"))
    try:
        lock.acquire(timeout=LOCK_WAIT_S)
    except Timeout:  # correctness never depends on the lock (unique temp files, atomic replace)
        log.warning("%s: lock busy for %.0fs; downloading anyway", dest, LOCK_WAIT_S)
        return _fetch_unlocked(file, key, quiet=quiet, offline=offline)
    try:
        return _fetch_unlocked(file, key, quiet=quiet, offline=offline)
    finally:
        lock.release()


def _cache_hit(file: FileRef, key: str, dest: Path) -> Optional[Path]:
    if not dest.is_file():
        return None
    _, size, source = _expected(file, key)
    actual = dest.stat().st_size
    if size is not None and actual != size:
        log.warning("%s: cached file has %d bytes, expected %d (%s); removing it", dest, actual, size, source)
        dest.unlink(missing_ok=True)
        return None
    return dest


def _fetch_unlocked(file: FileRef, key: str, *, quiet: bool = False, offline: Optional[bool] = None) -> Path:
    """fetch_file without the inter-process lock: safe on its own, the lock only avoids duplicate work."""
    import requests

    dest = cache_path(file, key)
    hit = _cache_hit(file, key, dest)
    if hit is not None:
        return hit
    offline = is_offline(offline)
    sha, size, source = _expected(file, key)
    policy = retry_policy()
    failures: list[tuple[str, BaseException]] = []
    with requests.Session() as session:
        for url in candidate_urls(file):
            if offline and _is_network(url):
                failures.append((url, _Skip("skipped: offline")))
                continue
            try:
                _fetch_one(session, url, dest, sha, size, offline, quiet, policy)
            except (_Skip, _Transient, DownloadError) as exc:
                log.info("%s: %s", url, exc)
                failures.append((url, exc))
                continue
            if sha is None:
                log.warning("%s: unverified: no published checksum; run `pycontrast-zoo pin %s`", key,
                            key.split("/")[0])
            return dest
    if offline:
        tried = "".join(f"\n  - {url}: {exc}" for url, exc in failures)
        raise OfflineError(
            f"offline mode is on (PYCONTRAST_ZOO_OFFLINE / HF_HUB_OFFLINE) and {key} ({file.filename}) is not "
            f"cached. Put the file at {dest} (download it elsewhere from {file.urls[0]}), or import a folder with "
            f"`pycontrast-zoo download {key.split('/')[0]} --from-dir DIR`, or turn offline mode off.{tried}")
    raise _combined_error(key, file, dest, failures)


def _combined_error(key: str, file: FileRef, dest: Path, failures: list[tuple[str, BaseException]]) -> DownloadError:
    lines = "\n".join(f"  - {url}: {exc}" for url, exc in failures)
    message = (f"could not fetch {key} ({file.filename}) from any of its URLs:\n{lines}\n"
               f"If the links are dead: set PYCONTRAST_ZOO_ENDPOINT to a mirror, put the file at {dest}, "
               f"or use `pycontrast-zoo download {key.split('/')[0]} --from-dir DIR`.")
    for cls in (HTMLResponseError, ChecksumError):  # every URL failed the same telling way: say so by type
        if failures and all(isinstance(exc, cls) for _, exc in failures):
            return cls(message)
    return DownloadError(message)


def _fetch_one(session, url: str, dest: Path, sha: Optional[str], size: Optional[int], offline: bool,
               quiet: bool, policy: RetryPolicy) -> None:
    """One URL -> ``dest`` (checked), or an exception; leaves only an untrusted .part behind on failure."""
    partial = _Partial(dest)
    part = _partial_path(dest, url) if _is_network(url) else None
    try:
        local = _local_source(url)
        if local is not None:
            _copy_local(local, partial)
        elif url.startswith("hf://"):
            _copy_local(_hf_download(url, offline, quiet), partial)
        elif not _is_network(url):
            raise _Skip("unsupported URL scheme (use http, https, hf, file or a local path)")
        else:
            if partial.adopt(part):
                log.info("%s: resuming from %d bytes", url, partial.size)
            _http_download(session, url, partial, size, policy, quiet, dest.name)
    except (_Transient, KeyboardInterrupt, SystemExit):
        if part is not None:
            partial.keep(part)  # resumable later; never trusted as the file
        else:
            partial.discard()
        raise
    except BaseException:
        partial.discard()
        raise
    partial.commit(dest, sha, size)


def fetch_url(url: str, *, sha256: Optional[str] = None, format: str = "detectron2", quiet: bool = False,
              offline: Optional[bool] = None) -> Path:
    """A file known only by its URL (user weights), cached under ``url/<hash of the URL>/<basename>`` so that
    two URLs ending in the same name (``model_final.pth``) never share a cache slot."""
    file = FileRef(urls=(url,), sha256=sha256, size_bytes=None, format=format)
    return fetch_file(file, f"url/{hashlib.sha256(url.encode()).hexdigest()[:16]}", quiet=quiet, offline=offline)


def _unique_name(filename: str, zoo: Zoo) -> bool:
    """Whether no two files of the zoo share this file name (``InsDis.pth`` yes, ``model_final.pth`` no)."""
    files = [f for e in zoo.entries.values() for f in (e.model, e.log) if f is not None]
    files += [f for p in zoo.pretrains.values() for f in ((p.file,) if p.file else ()) + p.alternatives]
    return sum(f.filename == filename for f in files) <= 1


def import_from_dir(directory: Union[str, os.PathLike], file: FileRef, key: str, zoo: Optional[Zoo] = None) -> Path:
    """Copy ``file`` from a folder (e.g. carried from a machine with internet) into the cache, verified.

    Looked up as ``DIR/files/<key>/<name>`` (a copied cache root), ``DIR/<key>/<name>``, ``DIR/<entry>/<name>``,
    and ``DIR/<name>`` only when a sha256 is known or no other file of the zoo has that name (a bare
    ``model_final.pth`` could be any entry's).
    """
    root = Path(directory)
    parts = _check_key(key)
    sha, size, _ = _expected(file, key)
    candidates = [root / "files" / Path(*parts) / file.filename, root / Path(*parts) / file.filename,
                  root / parts[0] / file.filename]
    if sha is not None or _unique_name(file.filename, zoo or load_manifest()):
        candidates.append(root / file.filename)
    errors = []
    dest = cache_path(file, key)
    for candidate in candidates:
        if not candidate.is_file():
            continue
        partial = _Partial(dest)
        try:
            _copy_local(candidate, partial)
        except BaseException:
            partial.discard()
            raise
        try:
            path = partial.commit(dest, sha, size)
        except ChecksumError as exc:
            errors.append(f"{candidate}: {exc}")
            continue
        if sha is None:
            log.warning("%s: imported unverified: no published checksum; run `pycontrast-zoo pin %s`", key, parts[0])
        return path
    looked = ", ".join(str(c) for c in candidates)
    detail = ("; ".join(errors)) if errors else f"not found (looked at {looked})"
    raise (ChecksumError if errors else DownloadError)(f"--from-dir {root}: {key} ({file.filename}): {detail}")


# ------------------------------------------------------------------------------------ entries + roles


def pretrain_files(pretrain: PretrainEntry) -> list[tuple[str, FileRef]]:
    """(key, file) of a pretrain: ``<name>/pretrain`` then its alternatives ``<name>/alt<i>``."""
    files = [(f"{pretrain.name}/pretrain", pretrain.file)] if pretrain.file is not None else []
    return files + [(f"{pretrain.name}/alt{i}", alt) for i, alt in enumerate(pretrain.alternatives)]


def entry_files(name: str, what: Sequence[str] = ROLES, zoo: Optional[Zoo] = None) -> list[tuple[str, FileRef]]:
    """(key, file) pairs of a detector entry's roles in ``what`` (pretrain: its pretrain's files), or of a
    pretrain named ``name``. Roles with no published file are left out."""
    zoo = zoo or load_manifest()
    unknown = [w for w in what if w not in ROLES]
    if unknown:
        raise ZooError(f"unknown file role(s) {', '.join(unknown)} (known: {', '.join(ROLES)})")
    if name in zoo.pretrains and name not in zoo.entries:
        return pretrain_files(zoo.pretrains[name]) if "pretrain" in what else []
    entry = zoo.entry(name)
    out: list[tuple[str, FileRef]] = []
    for role in ("model", "log"):
        file = getattr(entry, role)
        if role in what and file is not None:
            out.append((f"{name}/{role}", file))
    if "pretrain" in what:
        out += pretrain_files(zoo.pretrain(entry.pretrain))
    return out


def fetch_pretrain(name: str, *, zoo: Optional[Zoo] = None, quiet: bool = False,
                   offline: Optional[bool] = None) -> tuple[Path, FileRef]:
    """A pretrain's weights: its main file, else the first alternative that can be fetched, with its FileRef
    (whose ``format`` tells the checkpoint reader how to read it)."""
    zoo = zoo or load_manifest()
    pretrain = zoo.pretrain(name)
    files = pretrain_files(pretrain)
    if not files:
        raise ZooError(f"pretrain {name!r} has no weights file ({pretrain.note or pretrain.method})")
    first_error: Optional[ZooError] = None
    for key, file in files:
        try:
            return fetch_file(file, key, quiet=quiet, offline=offline), file
        except (DownloadError, OfflineError) as exc:
            first_error = first_error or exc
            if len(files) > 1:
                log.warning("%s: %s; trying the next alternative", key, str(exc).splitlines()[0])
    assert first_error is not None
    raise first_error


def fetch_entry_file(name: str, role: str, *, zoo: Optional[Zoo] = None, quiet: bool = False,
                     offline: Optional[bool] = None) -> Path:
    """The local path of a detector entry's ``model`` or ``log``, or of its (or a pretrain's) ``pretrain``."""
    zoo = zoo or load_manifest()
    if role == "pretrain":
        pretrain = name if (name in zoo.pretrains and name not in zoo.entries) else zoo.entry(name).pretrain
        return fetch_pretrain(pretrain, zoo=zoo, quiet=quiet, offline=offline)[0]
    if role not in ("model", "log"):
        raise ZooError(f"unknown file role {role!r} (known: {', '.join(ROLES)})")
    entry = zoo.entry(name)
    file = getattr(entry, role)
    if file is None:
        raise ZooError(f"{name}: no {role} was published ({entry.note or 'nothing to download'})")
    return fetch_file(file, f"{name}/{role}", quiet=quiet, offline=offline)


# ----------------------------------------------------------------------------------- verify and pin


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
    """Re-hash the cached copy of ``file`` against the manifest sha256, else the pin lock file."""
    path = cache_path(file, key)
    sha, size, source = _expected(file, key)
    if not path.is_file():
        return Verification(key, path, "missing", sha, None, None, "not cached")
    actual, actual_size = hash_file(path)
    if sha is None:
        return Verification(key, path, "unverified", None, actual, actual_size,
                            f"unverified: no published checksum; sha256 here is {actual}; "
                            f"run `pycontrast-zoo pin {key.split('/')[0]}` to record it")
    if actual != sha or (size is not None and actual_size != size):
        return Verification(key, path, "mismatch", sha, actual, actual_size,
                            f"sha256 mismatch ({source}): expected {sha}, got {actual} ({actual_size} bytes); "
                            f"remove it with `pycontrast-zoo cache rm {key.split('/')[0]}` and download again")
    return Verification(key, path, "ok", sha, actual, actual_size, f"sha256 matches ({source})")


def pin_file(file: FileRef, key: str, *, quiet: bool = False, offline: Optional[bool] = None) -> Pin:
    """Fetch ``file`` (verified against the manifest if it has a sha256), hash it and record the pin."""
    path = fetch_file(file, key, quiet=quiet, offline=offline)
    sha, size = hash_file(path)
    if file.sha256 is not None and sha != file.sha256:
        raise ChecksumError(f"{path}: sha256 {sha} differs from the manifest's {file.sha256}; "
                            f"remove it with `pycontrast-zoo cache rm {key.split('/')[0]}` and download again")
    pin = Pin(key=key, filename=file.filename, sha256=sha, size_bytes=size, url=candidate_urls(file)[0],
              pinned_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    _record_pin(pin)
    return pin


# --------------------------------------------------------------------------------------- cache admin


@dataclass(frozen=True)
class CachedFile:
    """A file under ``<cache>/files``: kind ``file`` (trusted), ``partial`` (resumable) or ``temp``."""

    key: str
    path: Path
    size_bytes: int
    kind: str


def cached_files() -> list[CachedFile]:
    """Everything in the file cache, sorted by key then name (lock files left out)."""
    root = files_dir()
    out = []
    for path in sorted(root.rglob("*")) if root.is_dir() else ():
        if not path.is_file() or path.name.endswith(".lock"):
            continue
        name = path.name
        kind = "partial" if name.endswith(".part") else "temp" if name.startswith(".") else "file"
        out.append(CachedFile(key=path.parent.relative_to(root).as_posix(), path=path,
                              size_bytes=path.stat().st_size, kind=kind))
    return out


def remove_cached(names: Iterable[str] = ()) -> list[Path]:
    """Delete cached files (trusted, partial and temp) whose key is or starts with one of ``names``
    (an entry, a pretrain or ``entry/role``); everything when ``names`` is empty. Returns what was removed."""
    names = [n.strip("/") for n in names]
    removed = []
    for item in cached_files():
        if not names or any(item.key == n or item.key.startswith(n + "/") for n in names):
            item.path.unlink(missing_ok=True)
            removed.append(item.path)
    root = files_dir()
    folders = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) if root.is_dir() else []
    for folder in folders:  # drop folders left with nothing but lock files
        leftovers = list(folder.iterdir())
        if all(p.is_file() and p.name.endswith(".lock") for p in leftovers):
            for lock in leftovers:
                lock.unlink(missing_ok=True)
            folder.rmdir()
    return removed
