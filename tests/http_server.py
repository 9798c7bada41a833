"""A real HTTP server on 127.0.0.1 for download tests, with misbehaviours switchable per path.

Each route serves bytes in one of these modes (``times``: how many requests misbehave before the route
serves normally; None = always):

- ``ok``: 200, or 206 for a ``Range: bytes=N-`` request;
- ``cut``: sends ``cut_at`` bytes of the requested range, then drops the connection;
- ``no_range``: ignores Range, always 200 with the whole body;
- ``truncate``: 200 announcing the full Content-Length but sending only ``cut_at`` bytes;
- ``status``: answers HTTP ``status`` (e.g. 404 or 500) with a small text body;
- ``html``: a 200 ``text/html`` page; ``html_body``: an HTML page labelled application/octet-stream;
- ``slow``: sends ``chunk`` bytes every ``delay`` seconds;
- ``redirect``: 302 to ``location`` (as Dropbox does to its content host).

``headers`` adds response headers (e.g. the ones huggingface_hub expects). Requests are recorded.
"""
from __future__ import annotations

import re
import threading
import time
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
    headers: dict = field(default_factory=dict)
    location: str = ""
    hits: int = 0


@dataclass
class Seen:
    method: str
    path: str
    range: Optional[str]


class FileServer:
    """``with FileServer() as srv: url = srv.add("/a.bin", data, mode="cut", cut_at=100, times=1)``."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

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
        return [s.range for s in self.requests if s.path == path and s.method == "GET"]

    def __enter__(self) -> "FileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
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
                server.requests.append(Seen(self.command, self.path, self.headers.get("Range")))
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
            if mode in ("html", "html_body"):
                ctype = "text/html; charset=utf-8" if mode == "html" else "application/octet-stream"
                return self._simple(200, HTML_PAGE, body, ctype)
            data, start = route.data, 0
            match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
            if match and mode != "no_range" and mode != "truncate":
                start = int(match.group(1))
                if start >= len(data):
                    return self._simple(416, b"range not satisfiable", body)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("Accept-Ranges", "bytes")
            for key, value in route.headers.items():
                self.send_header(key, value)
            self.end_headers()
            if not body:
                return
            payload = data[start:]
            try:
                if mode in ("cut", "truncate"):
                    self.wfile.write(payload[:route.cut_at])
                    self.wfile.flush()
                    self.close_connection = True
                elif mode == "slow":
                    for i in range(0, len(payload), route.chunk):
                        self.wfile.write(payload[i:i + route.chunk])
                        self.wfile.flush()
                        time.sleep(route.delay)
                else:
                    self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _simple(self, code: int, payload: bytes, body: bool, ctype: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body:
                self.wfile.write(payload)

    return Handler
