"""HTTP transfer of one URL into a Partial: resumed only when the server provably continues the same bytes,
retried only where retrying can help, every failure named in one line. No torch here.

A resume sends ``Range`` from a little before the partial's end (the overlap must come back identical) and
``If-Range`` with the validator recorded when the partial was started; the 206 is accepted only if its
Content-Range starts at the requested byte and announces the recorded total, and its Content-Length is the
rest. Anything else (a 200, a 416, a changed total, ETag or overlap) restarts from byte 0 in the same call.

Settings (environment): ``PYCONTRAST_ZOO_RETRIES`` (retries of transient failures: 5xx, 429, a cut
connection), ``PYCONTRAST_ZOO_BACKOFF`` (first backoff, doubling), ``PYCONTRAST_ZOO_CONNECT_TIMEOUT`` and
``PYCONTRAST_ZOO_TIMEOUT`` (seconds to connect, and of silence while reading). A host that does not resolve,
refuses the connection or does not answer in time gets one quick retry; a stalled server one retry.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Optional
from urllib.parse import urlparse

from ..errors import ChecksumError, HTMLResponseError, ZooError
from .partials import Partial, Validators
from .verify import CHUNK_BYTES

if TYPE_CHECKING:
    import requests
    from tqdm import tqdm

log = logging.getLogger(__name__)

#: Bytes before the partial's end that a resumed response must repeat exactly.
OVERLAP_BYTES = 64 << 10
_MAX_RESTARTS = 2
_HTML_MAGIC = (b"<!doctype html", b"<html", b"<head", b"<body")
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


@dataclass(frozen=True)
class NetPolicy:
    """How hard to try one URL: retries of transient failures, first backoff (doubling, capped), timeouts."""

    retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0

    def delay(self, attempt: int) -> float:
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)


def net_policy() -> NetPolicy:
    """The policy from PYCONTRAST_ZOO_RETRIES / _BACKOFF / _CONNECT_TIMEOUT / _TIMEOUT (defaults 4, 1, 5, 10)."""
    default = NetPolicy()
    env = os.environ.get
    try:
        return NetPolicy(retries=max(0, int(env("PYCONTRAST_ZOO_RETRIES", default.retries))),
                         backoff_s=float(env("PYCONTRAST_ZOO_BACKOFF", default.backoff_s)),
                         connect_timeout_s=float(env("PYCONTRAST_ZOO_CONNECT_TIMEOUT", default.connect_timeout_s)),
                         read_timeout_s=float(env("PYCONTRAST_ZOO_TIMEOUT", default.read_timeout_s)))
    except ValueError as exc:
        raise ZooError(f"bad PYCONTRAST_ZOO_RETRIES/BACKOFF/CONNECT_TIMEOUT/TIMEOUT value: {exc}") from None


class SkipURL(Exception):
    """This URL cannot serve the file (404, offline, a TLS error, ...): try the next one."""


class Transient(Exception):
    """The URL failed in a way a later run may get past (the partial is kept for it)."""


class _Retry(Exception):
    """Worth another request to the same URL (5xx, 429, a body shorter than announced)."""


class _Restart(Exception):
    """The server's answer does not continue the partial: start over from byte 0."""


def download(session: "requests.Session", url: str, partial: Partial, expected_size: Optional[int],
             policy: NetPolicy, quiet: bool, desc: str, resume: bool = True) -> None:
    """Stream ``url`` into ``partial``, resuming its bytes when that is provably safe, retrying what can help.

    Args:
        session: the requests session (connection reuse, proxies from the environment).
        url: an http(s) URL.
        partial: where the bytes go; may hold bytes (with validators) of an earlier attempt.
        expected_size: the size the file must have, when known (manifest or pin).
        policy: retries and timeouts.
        quiet: no progress bar.
        desc: the progress bar's label.
        resume: False to take the file in one piece from byte 0 (a cut connection starts over).
    """
    counts = {"unreachable": 0, "stalled": 0, "transient": 0}
    restarts = 0
    while True:
        before = partial.size
        try:
            _attempt(session, url, partial, expected_size, policy, quiet, desc, resume)
            return
        except _Restart as exc:
            restarts += 1
            if restarts > _MAX_RESTARTS:
                raise SkipURL(f"{exc} (still after starting over {_MAX_RESTARTS} times)") from None
            log.info("%s: %s; starting over from byte 0", url, exc)
            partial.reset()
            continue
        except (SkipURL, Transient, HTMLResponseError, ChecksumError):
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
        log.info("%s: %s; retry in %.1fs from byte %d", url, text, delay, partial.size if resume else 0)
        if not resume:
            partial.reset()
        time.sleep(delay)


def _attempt(session: "requests.Session", url: str, partial: Partial, expected_size: Optional[int],
             policy: NetPolicy, quiet: bool, desc: str, resume: bool) -> None:
    """One request: continue the partial (or start it), checking every promise the server makes."""
    kept = partial.validators
    if partial.size and (not resume or kept.total is None or partial.size > kept.total
                         or (expected_size is not None and kept.total != expected_size)):
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
    with session.get(url, headers=headers, stream=True, allow_redirects=True,
                     timeout=(policy.connect_timeout_s, policy.read_timeout_s)) as resp:
        _check_status(resp.status_code, bool(partial.size))
        encoded = resp.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")
        length = resp.headers.get("Content-Length", "")
        body = int(length) if length.strip().isdigit() and not encoded else None
        etag, modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
        if resp.status_code == 206:
            _check_continues(resp.headers.get("Content-Range", ""), start, kept, body, encoded, etag, modified)
            kept.pieces += 1
        else:
            if partial.size:
                log.info("%s: answered the whole file (HTTP 200) to a resume request; starting over", url)
                partial.reset()
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype in ("text/html", "application/xhtml+xml"):
                raise HTMLResponseError(f"the server sent an HTML page (Content-Type {ctype}), not the file: "
                                        f"a dead link, a quota or login page")
            if expected_size is not None and body is not None and body != expected_size:
                wrong_size = f"size mismatch: the server announces {body} bytes, expected {expected_size}"
            partial.validators = Validators(url, total=body, etag=etag, last_modified=modified, pieces=1)
            start = 0
        _receive(resp, partial, start, body, quiet, desc, wrong_size)


def _check_status(code: int, resuming: bool) -> None:
    if code in (200, 206):
        return
    if code == 416 and resuming:  # our partial does not fit what the server has now
        raise _Restart("HTTP 416 (range not satisfiable)")
    if code in (408, 429) or code >= 500:
        raise _Retry(f"HTTP {code}")
    raise SkipURL(f"HTTP {code}")


def _check_continues(content_range: str, start: int, kept: Validators, body: Optional[int], encoded: bool,
                     etag: Optional[str], modified: Optional[str]) -> None:
    """_Restart unless this 206 provably continues the partial's bytes."""
    match = _CONTENT_RANGE_RE.match(content_range.strip())
    if kept.pieces == 0 or encoded or not match:
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


def _receive(resp: "requests.Response", partial: Partial, start: int, body: Optional[int], quiet: bool,
             desc: str, wrong_size: Optional[str]) -> None:
    """Stream the body into the partial; the bytes before its end must repeat what it holds. ``wrong_size``:
    the announced size is not the expected one (raised after a look at the first bytes: an HTML page says
    more)."""
    overlap = partial.size - start
    tail = partial.tail(overlap) if overlap else b""
    received = 0
    total = partial.validators.total
    with _progress(total, partial.size, desc, quiet) as bar:
        while True:
            # read1: whatever has arrived (up to CHUNK_BYTES), so a cut connection loses no received bytes
            try:
                chunk = resp.raw.read1(CHUNK_BYTES, decode_content=True)
            except Exception as exc:
                if body is not None and any(type(e).__name__ == "IncompleteRead" for e in _chain(exc)):
                    raise _Retry(f"connection closed after {received} of {body} bytes") from None
                raise
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
            if partial.size == 0 and chunk[:512].lstrip().lower().startswith(_HTML_MAGIC):
                raise HTMLResponseError("the server sent an HTML page, not the file: a dead link, a quota or "
                                        "login page")
            if wrong_size:
                raise ChecksumError(wrong_size)
            partial.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    if wrong_size:
        raise ChecksumError(wrong_size)
    if body is not None and received < body:
        raise _Retry(f"connection closed after {received} of {body} bytes")


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
    if any(isinstance(e, (socket.gaierror, urllib3.exceptions.NameResolutionError)) for e in chain):
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
