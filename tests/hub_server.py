"""A small Hugging Face Hub on 127.0.0.1 for tests: serves ``<root>/<org>/<repo>/<path>`` in the Hub's
``/<org>/<repo>/resolve/<revision>/<path>`` layout (what ``hf_hub_download`` reads), and takes uploads through the
Hub's plain-HTTP protocol as huggingface_hub speaks it without Xet: ``/api/repos/create``,
``/api/validate-yaml``, ``/api/models/<repo>/preupload/<rev>``, the git-LFS batch API with ``basic`` PUT
transfers (each body checked against its sha256 oid), ``/api/models/<repo>/commit/<rev>`` (NDJSON; a commit to
another branch or with ``create_pr`` lands under ``<root>/.refs/<org>/<repo>/<ref>``, not in the served main),
``/api/models/<repo>/branch/<name>``, and collections (``/api/collections``, ``.../items``).

Every request is recorded with its Authorization header. Only what these tests use is implemented.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

import yaml

_LFS_SUFFIXES = (".safetensors", ".pth", ".pkl", ".tar", ".bin")


@dataclass
class Request:
    method: str
    path: str
    authorization: Optional[str]


class FakeHub:
    """``with FakeHub(root) as hub:`` (HF_ENDPOINT = ``hub.base``); repos are folders ``root/<org>/<repo>``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[Request] = []
        self.commits: dict[str, int] = {}
        self.created: dict[str, dict] = {}  # repository -> the create request's JSON (``private``, ...)
        self.commit_log: list[tuple[str, str, bool]] = []  # (repository, revision, create_pr) of each commit
        self.branches: dict[str, set[str]] = {}
        self.collections: dict[str, dict] = {}  # slug -> the collection (``items``: repository ids)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def commit_id(self, repo: str) -> str:
        return hashlib.sha1(f"{repo}:{self.commits.get(repo, 0)}".encode()).hexdigest()

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _record(self) -> str:
            with hub._lock:
                hub.requests.append(Request(self.command, self.path, self.headers.get("Authorization")))
            return self.path.split("?", 1)[0]

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if not size:
                        self.rfile.readline()
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, code: int, payload: bytes = b"", headers: Optional[dict] = None, body: bool = True) -> None:
            self.send_response(code)
            for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body:
                self.wfile.write(payload)

        def _json(self, code: int, data: object) -> None:
            self._send(code, json.dumps(data).encode())

        def do_HEAD(self) -> None:
            self._resolve(self._record(), body=False)

        def do_GET(self) -> None:
            self._resolve(self._record(), body=True)

        def _resolve(self, path: str, body: bool) -> None:
            match = re.match(r"^/([^/]+)/([^/]+)/resolve/([^/]+)/(.+)$", path)
            repo = hub.root / match.group(1) / match.group(2) if match else None
            if repo is None or not repo.is_dir():
                return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"}, body)
            file = repo / match.group(4)
            if not file.is_file():
                return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"}, body)
            data = file.read_bytes()
            self._send(200, data, {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes",
                                   "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                                   "X-Repo-Commit": hub.commit_id(f"{match.group(1)}/{match.group(2)}")}, body)

        def do_PUT(self) -> None:
            path = self._record()
            data = self._body()
            oid = path.rsplit("/", 1)[-1]
            if not path.startswith("/_lfs/") or hashlib.sha256(data).hexdigest() != oid:
                return self._json(400, {"error": "body does not match its sha256 oid"})
            (hub.root / ".lfs").mkdir(exist_ok=True)
            (hub.root / ".lfs" / oid).write_bytes(data)
            self._send(200)

        def do_POST(self) -> None:
            path = self._record()
            data = self._body()
            if path == "/api/repos/create":
                request = json.loads(data)
                repo = hub.root / request["organization"] / request["name"]
                if repo.is_dir():  # as the Hub answers: the error, and the existing repository's URL
                    return self._json(409, {"error": "You already created this model repo",
                                            "url": f"{hub.base}/{request['organization']}/{request['name']}"})
                repo.mkdir(parents=True)
                hub.created[f"{request['organization']}/{request['name']}"] = request
                return self._json(200, {"url": f"{hub.base}/{request['organization']}/{request['name']}"})
            if path == "/api/validate-yaml":
                content = json.loads(data)["content"]
                front = content.split("---\n")[1] if content.startswith("---\n") else ""
                try:
                    yaml.safe_load(front)
                except yaml.YAMLError as exc:
                    return self._json(400, {"errors": [{"message": str(exc)}]})
                return self._json(200, {"errors": [], "warnings": []})
            if path == "/api/collections":
                return self._new_collection(json.loads(data))
            match = re.match(r"^/api/collections/(.+)/items?$", path)
            if match:
                return self._collection_item(match.group(1), json.loads(data))
            match = re.match(r"^/api/models/([^/]+/[^/]+)/branch/(.+)$", path)
            if match:
                hub.branches.setdefault(match.group(1), set()).add(match.group(2))
                return self._json(200, {})
            match = re.match(r"^/api/models/([^/]+/[^/]+)/(preupload|commit)/[^/]+$", path)
            if match and match.group(2) == "preupload":
                files = json.loads(data)["files"]
                return self._json(200, {"files": [
                    {"path": f["path"], "shouldIgnore": False, "oid": None,
                     "uploadMode": "lfs" if f["path"].endswith(_LFS_SUFFIXES) or f["size"] > 10 << 20 else "regular"}
                    for f in files]})
            if match:
                revision = self.path.split("?", 1)[0].rsplit("/", 1)[1]
                return self._commit(match.group(1), revision, "create_pr=1" in self.path, data)
            match = re.match(r"^/([^/]+/[^/]+)\.git/info/lfs/objects/batch$", path)
            if match:
                objects = json.loads(data)["objects"]
                return self._json(200, {"transfer": "basic", "objects": [
                    {"oid": o["oid"], "size": o["size"], "authenticated": True,
                     "actions": {"upload": {"href": f"{hub.base}/_lfs/{o['oid']}"}}} for o in objects]})
            self._json(404, {"error": f"not served: {path}"})

        def _new_collection(self, request: dict) -> None:
            slug = f"{request['namespace']}/{re.sub(r'[^a-z0-9]+', '-', request['title'].lower())}-1234"
            if slug in hub.collections:
                return self._json(409, {"error": "collection exists", "slug": slug})
            hub.collections[slug] = {"title": request["title"], "private": request.get("private", False),
                                     "description": request.get("description"), "items": []}
            self._json(200, self._collection(slug))

        def _collection_item(self, slug: str, request: dict) -> None:
            if slug not in hub.collections:
                return self._json(404, {"error": "no such collection"})
            items = hub.collections[slug]["items"]
            if request["item"]["id"] in items:
                return self._json(409, {"error": "already in the collection"})
            items.append(request["item"]["id"])
            self._json(200, self._collection(slug))

        def _collection(self, slug: str) -> dict:
            found = hub.collections[slug]
            return {"slug": slug, "title": found["title"], "owner": {"name": slug.split("/")[0]},
                    "lastUpdated": "2026-01-01T00:00:00.000Z", "position": 0, "private": found["private"],
                    "theme": "blue", "upvotes": 0, "description": found["description"],
                    "items": [{"_id": f"{i:024x}", "id": repo, "type": "model", "position": i}
                              for i, repo in enumerate(found["items"])]}

        def _commit(self, repo: str, revision: str, create_pr: bool, data: bytes) -> None:
            target = hub.root / repo
            if not target.is_dir():
                return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"})
            hub.commit_log.append((repo, revision, create_pr))
            ref = "refs/pr/1" if create_pr else revision
            if ref != "main":
                target = hub.root / ".refs" / repo / ref
            for line in data.decode().splitlines():
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "file":
                    dest = target / value["path"]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(base64.b64decode(value["content"]))
                elif item["key"] == "lfsFile":
                    blob = hub.root / ".lfs" / value["oid"]
                    if not blob.is_file():
                        return self._json(400, {"error": f"LFS object {value['oid']} was never uploaded"})
                    dest = target / value["path"]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(blob.read_bytes())
            hub.commits[repo] = hub.commits.get(repo, 0) + 1
            commit = hub.commit_id(repo)
            answer = {"commitUrl": f"{hub.base}/{repo}/commit/{commit}", "commitOid": commit}
            if create_pr:
                answer["pullRequestUrl"] = f"{hub.base}/{repo}/discussions/1"
            self._json(200, answer)

    return Handler
