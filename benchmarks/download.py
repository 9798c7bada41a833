"""Download throughput of ``store.fetch_file`` vs torch.hub and huggingface_hub, against the hashing limit.

One file (``--size-mb``, default 512, random bytes) is served from 127.0.0.1 by a separate process using
``sendfile`` (so the server is not the bottleneck). Side by side, in one run, each fetching the same URL into
a fresh file: ``pycontrast_det.store.fetch_file`` (sha256 + size verified, fsync'ed, its verified record written,
atomic publish),
``torch.hub.download_url_to_file`` (with ``hash_prefix``: it hashes too), ``huggingface_hub``'s
``file_download.http_get`` (no hashing), and two hashing limits over the file on disk (page cache): ``sha256sum``
and Python's ``hashlib.sha256`` (OpenSSL; much faster than coreutils where the CPU has SHA extensions).

    python benchmarks/download.py [--size-mb 512] [--repeats 3]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def serve(path: str, port_file: str) -> None:
    """Serve ``path`` at /<name> with sendfile (zero copy); writes the port to ``port_file``."""
    size = os.path.getsize(path)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self.wfile.flush()
            with open(path, "rb") as fh:
                self.connection.sendfile(fh)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Path(port_file).write_text(str(httpd.server_address[1]))
    httpd.serve_forever()


def make_file(path: Path, size_mb: int) -> str:
    """Random bytes (real data, no holes), returns the sha256."""
    sha = hashlib.sha256()
    block = 16 << 20
    with open(path, "wb") as fh:
        left = size_mb << 20
        while left:
            chunk = os.urandom(min(block, left))
            fh.write(chunk)
            sha.update(chunk)
            left -= len(chunk)
    return sha.hexdigest()


def timed_rounds(repeats: int, runs: dict[str, Callable[[], None]], cleanup: Callable[[], None]) -> dict:
    """Best time of each run over ``repeats`` rounds; every round runs each once (interleaved, so load
    changes on a shared machine hit all alike)."""
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            cleanup()
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    cleanup()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pcd-bench-download-"))
    server = None
    try:
        src = work / "model_final.pth"
        sha = make_file(src, args.size_mb)
        size = src.stat().st_size
        port_file = work / "port"
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(src), str(port_file)])
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port_file.read_text()}/model_final.pth"
        os.environ["PYCONTRAST_ZOO_HOME"] = str(work / "cache")
        out = work / "out.bin"

        from pycontrast_det import store
        from pycontrast_det.zoo import FileRef

        file = FileRef(urls=(url,), sha256=sha, size_bytes=size, format="detectron2")

        def ours() -> None:
            path = store.fetch_file(file, "bench/model", quiet=True)
            assert path.stat().st_size == size

        def torch_hub() -> None:
            import torch.hub
            torch.hub.download_url_to_file(url, str(out), hash_prefix=sha[:10], progress=False)

        def hf() -> None:
            from huggingface_hub.file_download import http_get
            with open(out, "wb") as fh:
                http_get(url, fh, expected_size=size)
            assert out.stat().st_size == size

        def sha256sum() -> None:
            digest = subprocess.run(["sha256sum", str(src)], check=True, capture_output=True, text=True).stdout
            assert digest.split()[0] == sha

        def hashlib_file() -> None:
            assert store.hash_file(src)[0] == sha

        def clean() -> None:
            shutil.rmtree(work / "cache", ignore_errors=True)
            out.unlink(missing_ok=True)

        import huggingface_hub
        import torch
        results = timed_rounds(args.repeats, {
            "sha256sum (hashing limit)": sha256sum,
            "hashlib.sha256 of the file (strict hashing limit)": hashlib_file,
            "pycontrast_det.store.fetch_file": ours,
            f"torch.hub.download_url_to_file (torch {torch.__version__})": torch_hub,
            f"huggingface_hub http_get ({huggingface_hub.__version__}, no hash)": hf,
        }, clean)
        mb = size / 2**20
        print(f"file: {mb:.0f} MiB from {url}, best of {args.repeats}, {os.cpu_count()} CPUs "
              f"({socket.gethostname()})")
        for name, seconds in results.items():
            print(f"  {name:<62} {seconds:7.3f} s  {mb / seconds:8.1f} MiB/s")
        names = list(results)
        t_hash, t_hashlib, t_ours, t_torch, t_hf = (results[n] for n in names)
        print(f"ours vs torch.hub:        {t_torch / t_ours:.2f}x faster")
        print(f"ours vs huggingface_hub:  {t_hf / t_ours:.2f}x faster")
        print(f"ours / hashing limit:     {t_ours / t_hash:.2f}x the time of sha256sum (target <= 1.5x)")
        print(f"ours / strict limit:      {t_ours / t_hashlib:.2f}x the time of hashlib.sha256 over the file")
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3])
    else:
        main()
