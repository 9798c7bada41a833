"""A real HTTP server on 127.0.0.1 for download tests, with misbehaviours switchable per path.

Each route serves bytes in one of these modes (``times``: how many requests misbehave before the route
serves normally; None = always):

- ``ok``: 200, or 206 for a ``Range: bytes=N-`` request;
- ``cut``: sends ``cut_at`` bytes of the requested range, then drops the connection;
- ``reset``: sends ``cut_at`` bytes of the requested range, then resets the connection (TCP RST);
- ``no_range``: ignores Range, always 200 with the whole body;
- ``truncate``: 200 announcing the full Content-Length but sending only ``cut_at`` bytes;
- ``long_length``: announces a Content-Length ``extra`` bytes longer than what it sends, then closes;
- ``range_from_zero``: answers a Range request with a 206 whose Content-Range is right but whose body starts
  at byte 0; its Content-Length is the rest (``length="range"``) or the whole file (``length="full"``);
- ``stall``: sends ``cut_at`` bytes of the requested range, then nothing for ``delay`` seconds;
- ``status``: answers HTTP ``status`` (e.g. 404 or 500) with a small text body;
- ``html``: a 200 ``text/html`` page; ``html_body``: an HTML page labelled application/octet-stream;
- ``slow``: sends ``chunk`` bytes every ``delay`` seconds;
- ``redirect``: 302 to ``location`` (as Dropbox does to its content host);
- ``trickle_headers``: the status line, then the headers one byte every ``delay`` seconds, forever (never
  silent for a read timeout, never done);
- ``endless``: 200 without Content-Length (close-delimited), the data repeated forever, ``chunk`` bytes every
  ``delay`` seconds (0: as fast as it goes);
- ``no_length``: 200 without Content-Length (close-delimited), the data then ``extra`` more bytes.

A route's ``data`` can itself be what a hostile server serves: an HTML page with a BOM, a comment or an XML
prolog, or nothing at all (``Content-Length: 0``).

``validators=True`` adds an ETag and a Last-Modified derived from the route's current bytes and honours
``If-Range`` (a stale validator gets the whole file, 200), as real servers do. Replacing ``route.data`` between
two runs is a file replaced on the server. ``headers`` adds response headers. Requests are recorded.
"""
from __future__ import annotations

import email.utils
import hashlib
import re
import socket
import struct
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>Dropbox - Error</title></head><body>quota exceeded</body></html>\n"


@dataclass
class Route:
    data: bytes
    mode: str = "ok"
    times: Optional[int] = None
    cut_at: int = 0
    status: int = 500
    chunk: int = 1024
    delay: float = 0.05
    extra: int = 1 << 20
    length: str = "range"
    validators: bool = False
    headers: dict = field(default_factory=dict)
    location: str = ""
    hits: int = 0

    def etag(self) -> str:
        return '"' + hashlib.sha256(self.data).hexdigest()[:16] + '"'

    def last_modified(self) -> str:
        seconds = 1_500_000_000 + int(hashlib.sha256(self.data).hexdigest()[:6], 16)
        return email.utils.formatdate(seconds, usegmt=True)


@dataclass
class Seen:
    method: str
    path: str
    range: Optional[str]
    if_range: Optional[str] = None


def refused_url(path: str = "/model_final.pth") -> str:
    """A URL on 127.0.0.1 where nothing listens (the connection is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """Quiet about clients that hang up (the tests cut connections on purpose)."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class FileServer:
    """``with FileServer() as srv: url = srv.add("/a.bin", data, mode="cut", cut_at=100, times=1)``."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    @property
    def base(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, path: str, data: bytes, mode: str = "ok", **options) -> str:
        """Serve ``data`` at ``path`` in ``mode``; returns the full URL."""
        self.routes[path] = Route(data=data, mode=mode, **options)
        return self.base + path

    def ranges(self, path: str) -> list[Optional[str]]:
        """The Range headers of the GET requests seen for ``path`` (None where there was none)."""
        return [s.range for s in self.requests if s.path.split("?")[0] == path and s.method == "GET"]

    def __enter__(self) -> "FileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()


def _make_handler(server: FileServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = self.path.split("?", 1)[0]
            with server._lock:
                server.requests.append(Seen(self.command, self.path, self.headers.get("Range"),
                                            self.headers.get("If-Range")))
                route = server.routes.get(path)
                if route is not None and body:
                    route.hits += 1
            if route is None:
                return self._simple(404, b"not found", body)
            misbehave = body and (route.times is None or route.hits <= route.times)
            mode = route.mode if misbehave or route.mode == "slow" else "ok"
            if mode == "redirect":
                self.send_response(302)
                self.send_header("Location", route.location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if mode == "status":
                return self._simple(route.status, f"error {route.status}".encode(), body)
            if mode == "trickle_headers":
                return self._trickle_headers(route)
            if mode in ("endless", "no_length"):
                return self._close_delimited(route, mode)
            if mode in ("html", "html_body"):
                ctype = "text/html; charset=utf-8" if mode == "html" else "application/octet-stream"
                return self._simple(200, HTML_PAGE, body, ctype)
            data, start = route.data, 0
            match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
            if_range = self.headers.get("If-Range")
            stale = route.validators and if_range is not None and if_range not in (route.etag(), route.last_modified())
            if match and mode not in ("no_range", "truncate") and not stale:
                start = int(match.group(1))
                if start >= len(data):
                    return self._simple(416, b"range not satisfiable", body)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            length = len(data) - start
            if mode == "long_length":
                length += route.extra
            elif mode == "range_from_zero" and route.length == "full":
                length = len(data)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            if route.validators:
                self.send_header("ETag", route.etag())
                self.send_header("Last-Modified", route.last_modified())
            for key, value in route.headers.items():
                self.send_header(key, value)
            self.end_headers()
            if not body:
                return
            payload = data[:length] if mode == "range_from_zero" else data[start:]
            try:
                self._send(mode, route, payload)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _send(self, mode: str, route: Route, payload: bytes) -> None:
            if mode in ("cut", "truncate", "reset", "stall"):
                self.wfile.write(payload[:route.cut_at])
                self.wfile.flush()
                self.close_connection = True
                if mode == "reset":  # linger 0: close() sends RST instead of FIN
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                elif mode == "stall":
                    server._stop.wait(route.delay)
            elif mode == "long_length":
                self.wfile.write(payload)
                self.close_connection = True
            elif mode == "slow":
                for i in range(0, len(payload), route.chunk):
                    self.wfile.write(payload[i:i + route.chunk])
                    self.wfile.flush()
                    if server._stop.wait(route.delay):
                        return
            else:
                self.wfile.write(payload)

        def _trickle_headers(self, route: Route) -> None:
            self.close_connection = True
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            header = b"X-Trickle: " + b"a" * 10_000
            try:
                for i in range(len(header)):
                    self.wfile.write(header[i:i + 1])
                    self.wfile.flush()
                    if server._stop.wait(route.delay):
                        return
            except (BrokenPipeError, ConnectionResetError):
                return

        def _close_delimited(self, route: Route, mode: str) -> None:
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                if mode == "no_length":
                    self.wfile.write(route.data + b"\0" * route.extra)
                    return
                while not server._stop.is_set():
                    for i in range(0, len(route.data), route.chunk):
                        self.wfile.write(route.data[i:i + route.chunk])
                        if route.delay and server._stop.wait(route.delay):
                            return
            except (BrokenPipeError, ConnectionResetError):
                return

        def _simple(self, code: int, payload: bytes, body: bool, ctype: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body:
                self.wfile.write(payload)

    return Handler
