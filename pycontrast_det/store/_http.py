"""HTTP transfer of one URL into a Partial: resumed only when the server provably continues the same bytes,
retried only where retrying can help, bounded in time, every failure named in one line. No torch here.

A resume sends ``Range`` from a little before the partial's end (the overlap must come back identical) and
``If-Range`` with the validator recorded when the partial was started; the 206 is accepted only if its
Content-Range starts at the requested byte and announces the recorded total, and its Content-Length is the
rest. Anything else (a 200, a 416, a changed total, ETag or overlap) restarts from byte 0 in the same call; an
error page (HTML, 4xx) answered to a resume leaves the partial as it was. A partial kept by an earlier run
without an ETag or Last-Modified is resumed only when the file's sha256 is known (the commit checks it):
otherwise a file replaced on the server meanwhile by another of the same size could not be told from the
partial's, so the download restarts from byte 0 (within one call, a cut connection is still resumed).

A response is taken only if it is the whole file: no ``Content-Encoding`` (only ``identity`` is asked for), not
a web page (sniffed past a BOM, blanks, comments and an XML prolog), not empty unless the expected size is 0, and
never longer than the size announced (or expected): a longer body is cut and refused.

Each request has an overall time bound: the status and headers within connect + read timeout, the body within
that plus its size at ``PYCONTRAST_ZOO_MIN_SPEED`` (:func:`time_bound`); a body of unknown size must keep that
average. A server too slow for it (one byte every few seconds is never silent for the read timeout) fails with
SlowDownloadError, its partial kept. Settings: :mod:`pycontrast_det.settings`.
"""
from __future__ import annotations

import codecs
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Optional, cast
from urllib.parse import urlparse

from .. import settings
from ..errors import BadResponseError, ChecksumError, HTMLResponseError, SlowDownloadError
from .partials import Partial, Validators
from .redact import redact
from .verify import CHUNK_BYTES

if TYPE_CHECKING:
    import http.client

    import requests
    from tqdm import tqdm

log = logging.getLogger(__name__)

#: Bytes before the partial's end that a resumed response must repeat exactly.
OVERLAP_BYTES = 64 << 10
#: Bytes of a new body looked at before any is written (is it a web page?).
SNIFF_BYTES = 1024
_MAX_RESTARTS = 2
_HTML_MAGIC = (b"<!doctype html", b"<html", b"<head", b"<body", b"<title", b"<meta", b"<script", b"<!doctype")
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
_PROLOG_RE = re.compile(rb"^(?:\s+|<!--.*?-->|<\?xml.*?\?>)", re.S)


@dataclass(frozen=True)
class NetPolicy:
    """How hard to try one URL: retries of transient failures, first backoff (doubling, capped), timeouts, the
    minimum average throughput (bytes/s) and the most bytes taken when no size is known."""

    retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    min_speed: float = 16384.0
    max_bytes: int = 32 << 30

    def delay(self, attempt: int) -> float:
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)

    @property
    def grace_s(self) -> float:
        """Time allowed before the first byte of the body: a connection and a full read timeout."""
        return self.connect_timeout_s + self.read_timeout_s


def net_policy() -> NetPolicy:
    """The policy from the settings (:mod:`pycontrast_det.settings`); SettingsError names a bad value."""
    return NetPolicy(retries=settings.retries(), backoff_s=settings.backoff_s(),
                     connect_timeout_s=settings.connect_timeout_s(), read_timeout_s=settings.read_timeout_s(),
                     min_speed=settings.min_speed(), max_bytes=settings.max_bytes())


def time_bound(nbytes: int, policy: NetPolicy) -> float:
    """Seconds allowed for one response carrying ``nbytes``: the grace plus ``nbytes`` at the minimum speed."""
    return policy.grace_s + nbytes / policy.min_speed


def looks_like_html(head: bytes) -> bool:
    """Whether the first bytes of a body are a web page: past a BOM (UTF-8 or UTF-16), blanks, ``<!-- -->``
    comments and an ``<?xml ?>`` prolog, it starts with an HTML tag."""
    for bom, codec in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
                       (codecs.BOM_UTF16_BE, "utf-16-be")):
        if head.startswith(bom):
            head = head[len(bom):].decode(codec, "ignore").encode("latin-1", "ignore")
            break
    while True:
        match = _PROLOG_RE.match(head)
        if match is None or not match.group(0):
            break
        head = head[match.end():]
    head = head.lower()
    return head.startswith(_HTML_MAGIC) or (head.startswith(b"<!--") and b"-->" not in head)


class SkipURL(Exception):
    """This URL cannot serve the file (404, offline, a TLS error, ...): try the next one."""


class Transient(Exception):
    """The URL failed in a way a later run may get past (the partial is kept for it)."""


class _Retry(Exception):
    """Worth another request to the same URL (5xx, 429, a body shorter than announced)."""


class _Restart(Exception):
    """The server's answer does not continue the partial: start over from byte 0."""


def download(session: "requests.Session", url: str, partial: Partial, expected_size: Optional[int],
             policy: NetPolicy, quiet: bool, desc: str, resume: bool = True, checksum_known: bool = False) -> None:
    """Stream ``url`` into ``partial``, resuming its bytes when that is provably safe, retrying what can help.

    Args:
        session: the requests session (connection reuse, proxies from the environment).
        url: an http(s) URL.
        partial: where the bytes go; may hold bytes (with validators) of an earlier attempt.
        expected_size: the size the file must have, when known (manifest or pin).
        policy: retries, timeouts and the minimum throughput.
        quiet: no progress bar.
        desc: the progress bar's label.
        resume: False to take the file in one piece from byte 0 (a cut connection starts over).
        checksum_known: the sha256 the file must have is known (a partial without validators may be resumed).
    """
    counts = {"unreachable": 0, "stalled": 0, "transient": 0}
    restarts = 0
    shown = redact(url)
    while True:
        before = partial.size
        try:
            _attempt(session, url, partial, expected_size, policy, quiet, desc, resume, checksum_known)
            return
        except _Restart as exc:
            restarts += 1
            if restarts > _MAX_RESTARTS:
                raise SkipURL(f"{exc} (still after starting over {_MAX_RESTARTS} times)") from None
            log.info("%s: %s; starting over from byte 0", shown, exc)
            partial.reset()
            continue
        except (SkipURL, Transient, ChecksumError, BadResponseError, HTMLResponseError, SlowDownloadError):
            raise
        except _Retry as exc:
            kind, text = "transient", str(exc)
        except Exception as exc:
            named = _name_failure(exc, url, policy)
            if named is None:
                raise
            kind, text = named
        if kind == "fatal":
            raise SkipURL(text)
        if kind == "stalled" and partial.size > before:
            kind = "transient"  # bytes arrived before the silence: a slow link, not a dead server
        counts[kind] += 1
        allowed = policy.retries if kind == "transient" else min(1, policy.retries)
        if counts[kind] > allowed:
            raise Transient(f"{text} (gave up after {sum(counts.values())} attempts)")
        delay = policy.delay(counts[kind]) if kind == "transient" else min(policy.delay(1), 0.5)
        log.info("%s: %s; retry in %.1fs from byte %d", shown, text, delay, partial.size if resume else 0)
        if not resume:
            partial.reset()
        time.sleep(delay)


def _open(session: "requests.Session", url: str, headers: dict[str, str], policy: NetPolicy,
          partial: Partial) -> "requests.Response":
    """``session.get`` whose status line and headers must all arrive within the policy's grace (a server
    trickling header bytes is never silent for the read timeout); run on a helper thread so that Ctrl-C,
    :func:`~.partials.interrupt_downloads` and the bound act at once. An abandoned request's response is closed
    when it comes."""
    box: dict[str, object] = {}
    done = threading.Event()
    lock = threading.Lock()

    def run() -> None:
        try:
            resp = session.get(url, headers=headers, stream=True, allow_redirects=True,
                               timeout=(policy.connect_timeout_s, policy.read_timeout_s))
        except BaseException as exc:  # handed to the caller
            box["exc"] = exc
            resp = None
        with lock:
            box["resp"] = resp
            abandoned = "abandoned" in box
            done.set()
        if abandoned and resp is not None:
            resp.close()

    threading.Thread(target=run, name="http-open", daemon=True).start()
    deadline = time.monotonic() + policy.grace_s
    try:
        while not (finished := done.wait(min(0.1, max(0.0, deadline - time.monotonic())))):
            partial.check_interrupted()
            if time.monotonic() >= deadline:
                break
    finally:
        with lock:
            if not done.is_set():
                box["abandoned"] = True
    if not finished:
        raise SlowDownloadError(f"no complete answer (status and headers) within {policy.grace_s:g} s; the server "
                                f"is too slow")
    if "exc" in box:
        raise box["exc"]  # type: ignore[misc]
    return box["resp"]  # type: ignore[return-value]


def _attempt(session: "requests.Session", url: str, partial: Partial, expected_size: Optional[int],
             policy: NetPolicy, quiet: bool, desc: str, resume: bool, checksum_known: bool) -> None:
    """One request: continue the partial (or start it), checking every promise the server makes."""
    kept = partial.validators
    # kept by an earlier run, with nothing to tell the file from a same-size replacement: not resumed
    unprovable = partial.adopted and not (kept.etag or kept.last_modified or checksum_known)
    if partial.size and (not resume or kept.total is None or partial.size > kept.total or unprovable
                         or (expected_size is not None and kept.total != expected_size)):
        if unprovable and resume:
            log.info("%s: the partial has no ETag / Last-Modified and no checksum is known; starting over",
                     redact(url))
        partial.reset()
        kept = partial.validators
    if partial.size and partial.size == kept.total:
        return  # a kept partial already holds every byte; the commit checks them
    headers = {"Accept-Encoding": "identity"}
    start = max(0, partial.size - OVERLAP_BYTES)
    wrong_size: Optional[str] = None
    if partial.size:
        headers["Range"] = f"bytes={start}-"
        if_range = kept.etag if kept.etag and not kept.etag.startswith("W/") else kept.last_modified
        if if_range:
            headers["If-Range"] = if_range
    with _open(session, url, headers, policy, partial) as resp:
        _check_status(resp.status_code, bool(partial.size))
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise BadResponseError(f"the server sent the file with Content-Encoding {encoding!r}, which was not "
                                   f"asked for (only identity): its bytes are not the file's")
        length = resp.headers.get("Content-Length", "")
        body = int(length) if length.strip().isdigit() else None
        etag, modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
        fresh: Optional[Validators] = None
        if resp.status_code == 206:
            _check_continues(resp.headers.get("Content-Range", ""), start, kept, body, etag, modified)
            kept.pieces += 1
        else:
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype in ("text/html", "application/xhtml+xml"):
                raise HTMLResponseError(f"the server sent an HTML page (Content-Type {ctype}), not the file: "
                                        f"a dead link, a quota or login page")
            if expected_size is not None and body is not None and body != expected_size:
                wrong_size = f"size mismatch: the server announces {body} bytes, expected {expected_size}"
            fresh = Validators(url, total=body if body is not None else expected_size, etag=etag,
                               last_modified=modified, pieces=1)
            start = 0
        _receive(resp, partial, start, fresh, expected_size, policy, quiet, desc, wrong_size)


def _check_status(code: int, resuming: bool) -> None:
    if code in (200, 206):
        return
    if code == 416 and resuming:  # our partial does not fit what the server has now
        raise _Restart("HTTP 416 (range not satisfiable)")
    if code in (408, 429) or code >= 500:
        raise _Retry(f"HTTP {code}")
    raise SkipURL(f"HTTP {code}")


def _check_continues(content_range: str, start: int, kept: Validators, body: Optional[int],
                     etag: Optional[str], modified: Optional[str]) -> None:
    """_Restart unless this 206 provably continues the partial's bytes."""
    match = _CONTENT_RANGE_RE.match(content_range.strip())
    if kept.pieces == 0 or not match:
        raise _Restart(f"unusable partial response (Content-Range {content_range!r})")
    first, last, total = (int(g) for g in match.groups())
    if first != start:
        raise _Restart(f"Content-Range {content_range!r} does not start at the requested byte {start}")
    if total != kept.total:
        raise _Restart(f"the file is now {total} bytes; it was {kept.total} when the partial was started")
    if last != total - 1 or body != total - start:
        raise _Restart(f"Content-Range {content_range!r} with Content-Length {body} is not the rest of the file")
    for name, now, then in (("ETag", etag, kept.etag), ("Last-Modified", modified, kept.last_modified)):
        if now and then and now != then:
            raise _Restart(f"the {name} changed from {then} to {now}: the file changed on the server")


def _reader(resp: "requests.Response") -> Callable[[int], bytes]:
    """Read whatever has arrived (up to n bytes) without decoding, so a cut connection loses no received bytes
    (urllib3 2 has ``read1``; under urllib3 1.26 http.client's own ``read1``)."""
    raw = resp.raw
    if hasattr(type(raw), "read1"):
        return lambda n: raw.read1(n, decode_content=False)
    fp = cast("http.client.HTTPResponse", raw._fp)
    return fp.read1


class _Clock:
    """The time bound of one response: ``limit`` bytes (None: unknown) at the policy's minimum speed."""

    def __init__(self, policy: NetPolicy, limit: Optional[int]) -> None:
        self.policy = policy
        self.limit = limit
        self.started = time.monotonic()

    def check(self, received: int) -> None:
        elapsed = time.monotonic() - self.started
        allowed = time_bound(self.limit if self.limit is not None else received, self.policy)
        if elapsed > allowed:
            raise SlowDownloadError(
                f"too slow: {received} bytes in {elapsed:.0f} s, below the minimum of {self.policy.min_speed:g} "
                f"bytes/s (PYCONTRAST_ZOO_MIN_SPEED); the partial is kept, run again to resume")


def _receive(resp: "requests.Response", partial: Partial, start: int, fresh: Optional[Validators],
             expected_size: Optional[int], policy: NetPolicy, quiet: bool, desc: str,
             wrong_size: Optional[str]) -> None:
    """Stream the body into the partial; the bytes before its end must repeat what it holds. ``fresh``: a new
    whole-file body (the partial is replaced by it only once its first bytes are known not to be a web page);
    ``wrong_size``: the announced size is not the expected one (raised after a look at the first bytes: a web
    page says more)."""
    overlap = 0 if fresh is not None else partial.size - start
    tail = partial.tail(overlap) if overlap else b""
    total = fresh.total if fresh is not None else partial.validators.total
    limit = total if total is not None else expected_size
    clock = _Clock(policy, (limit - start) if limit is not None else None)
    read = _reader(resp)
    received = 0
    head = b""
    with _progress(total, 0 if fresh is not None else partial.size, desc, quiet) as bar:
        while True:
            try:
                chunk = read(CHUNK_BYTES)
            except Exception as exc:
                body = resp.headers.get("Content-Length")
                if body and any(type(e).__name__ == "IncompleteRead" for e in _chain(exc)):
                    raise _Retry(f"connection closed after {received} of {body} bytes") from None
                raise
            clock.check(received + len(head))
            if fresh is not None:  # look at the first bytes before anything replaces the partial
                head += chunk
                if chunk and len(head) < SNIFF_BYTES and not _plainly_no_markup(head):
                    continue
                _check_head(head, wrong_size, expected_size)
                partial.reset()
                partial.validators = fresh
                fresh, chunk = None, head
            if not chunk:
                break
            if received < overlap:
                same = chunk[:overlap - received]
                if same != tail[received:received + len(same)]:
                    raise _Restart(f"the bytes from {start + received} differ from the partial's: "
                                   f"the file changed on the server")
                received += len(same)
                chunk = chunk[len(same):]
                if not chunk:
                    continue
            room = (limit - partial.size) if limit is not None else policy.max_bytes - partial.size
            if len(chunk) > room:
                partial.reset()
                what = f"the {limit} bytes announced" if limit is not None else \
                    f"PYCONTRAST_ZOO_MAX_BYTES ({policy.max_bytes})"
                raise BadResponseError(f"the server sent more than {what}; cut and refused")
            partial.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    body = resp.headers.get("Content-Length", "").strip()
    if body.isdigit() and received < int(body):
        raise _Retry(f"connection closed after {received} of {body} bytes")


def _plainly_no_markup(head: bytes) -> bool:
    """Whether the first bytes already show that the body is no web page (its first visible byte is not '<')."""
    for bom in (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        head = head[len(bom):] if head.startswith(bom) else head
    visible = head.lstrip(b" \t\r\n\x00")
    return bool(visible) and not visible.startswith(b"<")


def _check_head(head: bytes, wrong_size: Optional[str], expected_size: Optional[int]) -> None:
    """Refuse a new body by its first bytes: a web page, an empty body, or a size already known wrong."""
    if looks_like_html(head[:SNIFF_BYTES]):
        raise HTMLResponseError("the server sent an HTML page, not the file: a dead link, a quota or login page")
    if wrong_size:
        raise ChecksumError(wrong_size)
    if not head and expected_size != 0:
        raise BadResponseError("the server sent an empty body (0 bytes), not the file")


def _progress(total: Optional[int], initial: int, desc: str, quiet: bool) -> "tqdm":
    from tqdm.auto import tqdm

    # disable=None: tqdm shows the bar only on a TTY
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=True if quiet else None, leave=False)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps (urllib3's ``reason``, ``args``, causes and contexts)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        linked = [getattr(item, "reason", None), item.__cause__, item.__context__, *getattr(item, "args", ())]
        todo += [e for e in linked if isinstance(e, BaseException)]


def _name_failure(exc: Exception, url: str, policy: NetPolicy) -> Optional[tuple[str, str]]:
    """(kind, one line) for a network failure: kind ``unreachable`` (no DNS, refused, connect timeout),
    ``stalled`` (read timeout), ``transient`` (connection cut or reset) or ``fatal`` (not worth a retry);
    None when ``exc`` is not a network failure."""
    import requests
    import urllib3

    parsed = urlparse(url)
    host = parsed.hostname or "?"
    chain = list(_chain(exc))
    if any(isinstance(e, (socket.gaierror, getattr(urllib3.exceptions, "NameResolutionError", socket.gaierror)))
           for e in chain):
        return "unreachable", f"cannot resolve host {host!r} (no network, or no DNS for it)"
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "unreachable", f"connection refused by {host}:{parsed.port or _default_port(parsed.scheme)}"
    if any(isinstance(e, (requests.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError)) for e in chain):
        return "unreachable", f"no connection to {host} within {policy.connect_timeout_s:g} s"
    if any(isinstance(e, (requests.ReadTimeout, urllib3.exceptions.ReadTimeoutError, socket.timeout))
           for e in chain):
        return "stalled", f"the server sent nothing for {policy.read_timeout_s:g} s (stalled)"
    if isinstance(exc, requests.exceptions.SSLError):
        return "fatal", f"TLS error: {str(exc).splitlines()[0]}"
    if any(isinstance(e, ConnectionResetError) for e in chain):
        return "transient", "connection reset by the server"
    if isinstance(exc, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                        urllib3.exceptions.HTTPError, ConnectionError)):
        return "transient", f"connection broken ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if isinstance(exc, requests.RequestException):  # bad URL, redirect loop, ...: not worth retrying
        return "fatal", f"{type(exc).__name__}: {exc}"
    return None


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80
