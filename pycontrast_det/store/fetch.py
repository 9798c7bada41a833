"""The store's entry points: a FileRef (or a URL, or a folder carried from elsewhere) -> a verified local file.

Environment: ``PYCONTRAST_ZOO_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` (never touch the network),
``PYCONTRAST_ZOO_ENDPOINT`` (a mirror: a folder, ``file://``, ``http(s)://`` or ``hf://org/repo`` URL of a tree
laid out as ``pycontrast-zoo publish`` writes it; the file of cache key ``<name>/<role>`` is tried first at
``$ENDPOINT/<name>/<filename>``, then the manifest's URLs; its bytes are checked like any other URL's); the
network settings are in :mod:`._http`; ``HTTP(S)_PROXY`` is honoured (requests), ``HF_ENDPOINT`` /
``HF_HUB_CACHE`` for ``hf://`` URLs.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Union
from urllib.parse import parse_qsl, urlencode, urlparse

from .. import atomic, settings
from ..errors import BadResponseError, ChecksumError, DownloadError, HTMLResponseError, OfflineError, \
    SlowDownloadError, ZooError
from ..refs import FileRef, url_problem
from ._http import NetPolicy, SkipURL, Transient, download, net_policy
from .layout import CACHE_ELSEWHERE, URL_KEY, cache_path, check_key, lock_path, mirror_path, partial_path, \
    planted, remove_orphan_temps
from .local import SourceMissing, copy_local, hf_download, local_source
from .partials import Partial, terminate_as_interrupt
from .redact import redact
from .pins import Expected, Pin, expected, record_pin
from .verify import check_hit, read_record

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

ENV_OFFLINE = settings.OFFLINE
ENV_ENDPOINT = settings.ENDPOINT
LOCK_WAIT_S = 3600.0  # another process downloading the same file: wait for it, then reuse


def is_offline(offline: Optional[bool] = None) -> bool:
    """``offline`` if given, else whether PYCONTRAST_ZOO_OFFLINE or HF_HUB_OFFLINE is set to a true value."""
    if offline is not None:
        return offline
    return settings.offline()


def candidate_urls(file: FileRef, key: Optional[str] = None) -> list[str]:
    """The URLs to try, in order: with ``key`` given and PYCONTRAST_ZOO_ENDPOINT set, the file's place in that
    mirror (:func:`mirror_url`) first; then the manifest's URLs, Dropbox ``?dl=0`` made raw (``?dl=1``)."""
    mirror = mirror_url(file, key) if key is not None else None
    out: list[str] = [mirror] if mirror else []
    for url in file.urls:
        parsed = urlparse(url)
        if parsed.scheme in ("http", "https") and parsed.hostname and parsed.hostname.endswith("dropbox.com"):
            raw = [(k, "1" if k == "dl" else v) for k, v in parse_qsl(parsed.query, keep_blank_values=True)]
            url = parsed._replace(query=urlencode(raw)).geturl()
        if url not in out:
            out.append(url)
    return out


def mirror_url(file: FileRef, key: str) -> Optional[str]:
    """``$PYCONTRAST_ZOO_ENDPOINT/<name>/<filename>`` for cache key ``<name>/<role>`` (the layout of
    ``pycontrast-zoo publish``); None when no endpoint is set or the file is known only by its URL."""
    endpoint = settings.endpoint()
    where = mirror_path(file, key)
    if not endpoint or where is None:
        return None
    url = f"{endpoint.rstrip('/')}/{where}"
    problem = url_problem(url)
    if problem:
        raise ZooError(f"{ENV_ENDPOINT}={endpoint!r}: {problem}; give a folder or a file://, http(s):// or "
                       f"hf://org/repo URL of a published tree")
    return url


def _is_network(url: str) -> bool:
    return urlparse(url).scheme in ("http", "https")


@contextmanager
def _locked(dest: Path) -> Iterator[None]:
    """Hold the file's inter-process lock (waiting for another process's download), when it can be had; then
    remove the temp files of downloads whose process is gone."""
    from filelock import FileLock, Timeout

    atomic.make_dirs(dest.parent, CACHE_ELSEWHERE)
    path = lock_path(dest)
    lock = None if planted(path) else FileLock(str(path))
    try:
        if lock is not None:
            lock.acquire(timeout=LOCK_WAIT_S)
    except (Timeout, OSError) as exc:  # correctness never depends on the lock (unique temp files, atomic replace)
        why = f"busy for {LOCK_WAIT_S:.0f}s" if isinstance(exc, Timeout) else f"unusable ({exc.strerror or exc})"
        log.warning("%s: lock %s; downloading anyway", dest, why)
        lock = None
    try:
        remove_orphan_temps(dest)
        yield
    finally:
        if lock is not None:
            lock.release()


def fetch_file(file: FileRef, key: str, *, quiet: bool = False, offline: Optional[bool] = None) -> Path:
    """The verified local copy of ``file`` cached under ``key`` (``<entry>/<role>``), downloading if needed.

    A cache hit is returned only if its bytes are the expected ones (manifest or pin sha256, else the sha256
    recorded when it was downloaded; re-hashed only when the file or the expectation changed); a wrong file is
    removed and fetched again. New downloads are checked for the size the server announced, the expected size
    and sha256. URLs are tried in order (see ``candidate_urls``). Offline, only the cache, local files and the
    Hugging Face cache are used; a missing file raises OfflineError naming where to put it.
    """
    dest = cache_path(file, key)
    with atomic.guard(dest, CACHE_ELSEWHERE):
        hit = check_hit(dest, expected(file, key))
        if hit.path is not None:
            return hit.path
        if hit.problem:
            log.warning("%s: %s", key, hit.problem)
        with _locked(dest):
            return _fetch_unlocked(file, key, quiet=quiet, offline=offline, problem=hit.problem)


def _fetch_unlocked(file: FileRef, key: str, *, quiet: bool = False, offline: Optional[bool] = None,
                    whole: bool = False, problem: Optional[str] = None) -> Path:
    """fetch_file without the inter-process lock (safe on its own: the lock only avoids duplicate work);
    ``whole``: ignore the cached file and any partial, and take the file in one piece."""
    import requests

    dest = cache_path(file, key)
    want = expected(file, key)
    if not whole:
        hit = check_hit(dest, want)
        if hit.path is not None:
            return hit.path
        problem = hit.problem or problem
    offline = is_offline(offline)
    policy = net_policy()
    failures: list[tuple[str, BaseException]] = []
    with requests.Session() as session, terminate_as_interrupt():
        for url in candidate_urls(file, key):
            if offline and _is_network(url):
                failures.append((url, SkipURL("skipped: offline")))
                continue
            try:
                _fetch_one(session, url, dest, want, offline, quiet, policy, resume=not whole)
            except (SkipURL, Transient, SourceMissing, DownloadError) as exc:
                log.info("%s: %s", redact(url), exc)
                failures.append((url, exc))
                continue
            if want.sha256 is None:
                log.warning("%s: unverified: no published checksum; run `pycontrast-zoo pin %s`", key,
                            key.split("/")[0])
            return dest
    if offline:
        tried = "".join(f" {redact(url)}: {exc}." for url, exc in failures)
        state = f"its cached copy was wrong ({problem})" if problem else "it is not cached"
        raise OfflineError(redact(
            f"offline mode is on (PYCONTRAST_ZOO_OFFLINE / HF_HUB_OFFLINE) and {key} ({file.filename}): {state}. "
            f"{_how_to_bring(key, dest)}, or turn offline mode off.{tried}"))
    raise _combined_error(key, file, dest, failures)


def _how_to_bring(key: str, dest: Path) -> str:
    entry = key.split("/")[0]
    if entry == URL_KEY:
        return f"Put the file at {dest} or pass a local path instead of the URL"
    return (f"Import it from a folder with `pycontrast-zoo download {entry} --from-dir DIR` (a copy of a cache "
            f"from a machine with internet, or the downloaded files), or put it at {dest}")


def _combined_error(key: str, file: FileRef, dest: Path, failures: list[tuple[str, BaseException]]) -> DownloadError:
    lines = "; ".join(f"{redact(url)}: {exc}" for url, exc in failures)
    message = (f"could not fetch {key} ({file.filename}) from any of its URLs: {lines}. "
               f"No network here? Set PYCONTRAST_ZOO_OFFLINE=1 to use only the cache. {_how_to_bring(key, dest)}. "
               "Links dead or slow? Set PYCONTRAST_ZOO_ENDPOINT to a mirror (a tree made by "
               "`pycontrast-zoo publish`).")
    message = redact(message)
    for cls in (HTMLResponseError, ChecksumError, BadResponseError, SlowDownloadError):  # all failed alike: say so
        if failures and all(isinstance(exc, cls) for _, exc in failures):
            return cls(message)
    return DownloadError(message)


def _fetch_one(session: "requests.Session", url: str, dest: Path, want: Expected, offline: bool, quiet: bool,
               policy: NetPolicy, resume: bool) -> None:
    """One URL -> ``dest`` (checked), or an exception; a resumed download with the wrong sha256 is fetched
    again from byte 0 (the old partial may be what was wrong)."""
    try:
        _fetch_into(session, url, dest, want, offline, quiet, policy, resume)
    except _ResumedBadBytes as exc:
        log.warning("%s: %s after a resume; downloading it again from byte 0", url, exc)
        _fetch_into(session, url, dest, want, offline, quiet, policy, resume=False)


class _ResumedBadBytes(Exception):
    """A download completed from a partial failed the sha256 check."""


def _fetch_into(session: "requests.Session", url: str, dest: Path, want: Expected, offline: bool, quiet: bool,
                policy: NetPolicy, resume: bool) -> None:
    """One fetch of one URL -> ``dest`` (checked); leaves only an untrusted partial behind on failure."""
    partial = Partial(dest, url)
    part = partial_path(dest, url) if _is_network(url) else None
    try:
        local = local_source(url)
        if local is not None:
            copy_local(local, partial)
        elif url.startswith("hf://"):
            copy_local(hf_download(url, offline, quiet), partial)
        elif part is None:
            raise SkipURL("unsupported URL scheme (use http, https, hf, file or a local path)")
        else:
            if resume and partial.adopt(part):
                log.info("%s: resuming from %d bytes", redact(url), partial.size)
            download(session, url, partial, want.size_bytes, policy, quiet, dest.name, resume=resume,
                     checksum_known=want.sha256 is not None)
    except BaseException as exc:
        no_room = isinstance(exc, OSError) and atomic.filesystem_error(exc, dest) is not None
        if part is not None and not no_room:  # resumable later, never trusted as the file: a wrong body never
            partial.keep(part)  # reaches a partial (refused by its first bytes, or the partial reset first)
        else:
            partial.discard()
        raise
    resumed = partial.validators.pieces > 1
    try:
        partial.commit(dest, want.sha256, want.size_bytes)
    except ChecksumError as exc:
        if resumed and want.sha256 is not None:
            raise _ResumedBadBytes(str(exc)) from None
        raise


def fetch_url(url: str, *, sha256: Optional[str] = None, format: str = "detectron2", quiet: bool = False,
              offline: Optional[bool] = None) -> Path:
    """A file known only by its URL (user weights), cached under ``url/<hash of the URL>/<basename>`` so that
    two URLs ending in the same name (``model_final.pth``) never share a cache slot."""
    problem = url_problem(url)
    if problem:
        raise ZooError(f"{redact(url)!r}: {problem}")
    file = FileRef(urls=(url,), sha256=sha256, size_bytes=None, format=format)
    return fetch_file(file, f"{URL_KEY}/{hashlib.sha256(url.encode()).hexdigest()[:16]}", quiet=quiet, offline=offline)


def import_from_dir(directory: Union[str, os.PathLike], file: FileRef, key: str, *, bare_name_ok: bool = False) -> Path:
    """Copy ``file`` from a folder (e.g. carried from a machine with internet) into the cache, verified.

    Looked up as ``DIR/files/<key>/<name>`` (a copied cache root), ``DIR/<key>/<name>``, ``DIR/<entry>/<name>``,
    in a flat folder as ``DIR/<entry>_<name>`` and ``DIR/<entry><suffix>`` (``mask_rcnn_fpn_1x_infomin.pth``),
    and ``DIR/<name>`` only when a sha256 is known or ``bare_name_ok`` (the caller knows no other file has that
    name: a bare ``model_final.pth`` could be any entry's).
    """
    root = Path(directory)
    parts = check_key(key)
    want = expected(file, key)
    candidates = [root / "files" / Path(*parts) / file.filename, root / Path(*parts) / file.filename,
                  root / parts[0] / file.filename, root / f"{parts[0]}_{file.filename}",
                  root / f"{parts[0]}{Path(file.filename).suffix}"]
    if want.sha256 is not None or bare_name_ok:
        candidates.append(root / file.filename)
    errors = []
    dest = cache_path(file, key)
    with atomic.guard(dest, CACHE_ELSEWHERE):
        for candidate in candidates:
            if not candidate.is_file():
                continue
            partial = Partial(dest, candidate.resolve().as_uri())
            try:
                copy_local(candidate, partial)
                path = partial.commit(dest, want.sha256, want.size_bytes)
            except (ChecksumError, SourceMissing) as exc:
                partial.discard()
                errors.append(f"{candidate}: {exc}")
                continue
            except BaseException:
                partial.discard()
                raise
            if want.sha256 is None:
                log.warning("%s: imported unverified: no published checksum; run `pycontrast-zoo pin %s`", key,
                            parts[0])
            return path
    looked = ", ".join(str(c) for c in candidates)
    detail = ("; ".join(errors)) if errors else f"not found (looked at {looked})"
    raise (ChecksumError if errors else DownloadError)(f"--from-dir {root}: {key} ({file.filename}): {detail}")


def fetch_whole(file: FileRef, key: str, *, quiet: bool = False,
                offline: Optional[bool] = None) -> tuple[Path, str, int]:
    """(path, sha256, size) of ``file``, its bytes proven to be one fetch in one verified piece: a cached copy
    that was resumed or put in place by hand is downloaded again whole first. Refuses a sha256 that conflicts
    with the manifest's."""
    dest = cache_path(file, key)
    with atomic.guard(dest, CACHE_ELSEWHERE):
        path = fetch_file(file, key, quiet=quiet, offline=offline)
        record = read_record(path)
        if record is None or not record.describes(path.stat()) or record.pieces != 1:
            why = "put in place by hand" if record is None or record.pieces is None else \
                f"downloaded in {record.pieces} pieces (resumed)"
            if is_offline(offline):
                raise OfflineError(f"{key}: the cached {path} was {why}; a checksum is recorded only from one "
                                   f"download in one piece: run this again online")
            log.warning("%s: the cached copy was %s; downloading it again in one piece", key, why)
            with _locked(dest):
                _fetch_unlocked(file, key, quiet=quiet, offline=False, whole=True)
            record = read_record(path)
            if record is None:  # cannot happen after a commit, unless another process removed it meanwhile
                raise DownloadError(f"{key}: {path} changed while it was being checked; run this again")
        if file.sha256 is not None and record.sha256 != file.sha256:
            raise ChecksumError(f"{path}: sha256 {record.sha256} differs from the manifest's {file.sha256}; "
                                f"remove it with `pycontrast-zoo cache rm {key.split('/')[0]}` and download again")
        return path, record.sha256, record.size_bytes


def pin_file(file: FileRef, key: str, *, quiet: bool = False, offline: Optional[bool] = None) -> Pin:
    """Record the sha256 and size of ``file`` (see :func:`fetch_whole`) in the pin lock file."""
    _, sha, size = fetch_whole(file, key, quiet=quiet, offline=offline)
    pin = Pin(key=key, filename=file.filename, sha256=sha, size_bytes=size, url=candidate_urls(file)[0],
              pinned_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    record_pin(pin)
    return pin


def proven_checksum(file: FileRef, key: str) -> Optional[tuple[str, int]]:
    """(sha256, size) of the cached copy of ``file`` when this machine can vouch that ``file``'s own URLs serve
    those bytes: they matched the manifest's or a pin's sha256, or came whole (one piece) from one of its URLs
    (not from a mirror, a folder or a resumed download). None otherwise: nothing is claimed for the URLs."""
    dest = cache_path(file, key)
    record = read_record(dest)
    try:
        st = dest.stat()
    except FileNotFoundError:
        return None
    if record is None or not record.describes(st):
        return None
    want = expected(file, key)
    if want.sha256 is not None:
        return (record.sha256, record.size_bytes) if record.sha256 == want.sha256 else None
    if record.pieces == 1 and record.url in candidate_urls(file):
        return record.sha256, record.size_bytes
    return None


def hf_file(url: str, *, quiet: bool = False, offline: Optional[bool] = None) -> Path:
    """An ``hf://org/repo[@rev]/path`` file straight from huggingface_hub's cache (it checks the revision for a
    newer commit when online): for small files that say which bytes the others must have (checksum lists)."""
    offline = is_offline(offline)
    try:
        return hf_download(url, offline, quiet)
    except SourceMissing as exc:
        if offline:
            raise OfflineError(f"offline mode is on and {url} is not in the Hugging Face cache ({exc}); "
                               f"turn offline mode off, or set HF_HUB_CACHE to a cache that holds it") from None
        raise DownloadError(f"could not fetch {url}: {exc}") from None
