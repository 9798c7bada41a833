"""Network and filesystem failures: a dead, unknown or stalled host costs seconds and is named; a cache that
cannot be written is one named error naming the path; nothing half-written is ever trusted."""
from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pycontrast_det import atomic, store
from pycontrast_det.cli import main
from pycontrast_det.errors import DownloadError, FilesystemError, ZooError

from http_server import refused_url
from store_helpers import (assert_agrees, assert_nothing_trusted, fast_net, payload, ref, server,  # noqa: F401
                           write_manifest)

REPO = Path(__file__).resolve().parents[1]
KEY = "e/model"
DEAD_HOST = "weights.example.invalid"


@pytest.fixture
def no_dns(monkeypatch):
    """Name resolution of DEAD_HOST fails as it does offline; returns the list of lookups made."""
    lookups = []
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host == DEAD_HOST:
            lookups.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


@pytest.fixture
def sleeps(monkeypatch):
    """The backoff sleeps between attempts (recorded, not slept)."""
    slept: list[float] = []
    monkeypatch.setattr(store._http.time, "sleep", slept.append)
    return slept


def test_no_dns_and_refused_connection_get_one_quick_retry_and_say_what_to_do(no_dns, sleeps, monkeypatch):
    monkeypatch.setenv("PYCONTRAST_ZOO_RETRIES", "4")
    monkeypatch.setenv("PYCONTRAST_ZOO_BACKOFF", "1")
    refused = refused_url()
    file = ref(f"https://{DEAD_HOST}/s/x/model_final.pth", refused, data=payload())
    with pytest.raises(DownloadError) as err:
        store.fetch_file(file, KEY, quiet=True)
    assert no_dns == [DEAD_HOST, DEAD_HOST] and sleeps == [0.5, 0.5]  # one quick retry per URL, not 4 backoffs
    [line] = str(err.value).splitlines()
    assert (f": https://{DEAD_HOST}/s/x/model_final.pth: cannot resolve host '{DEAD_HOST}' "
            f"(no network, or no DNS for it) (gave up after 2 attempts); ") in line
    port = refused.split(":")[2].split("/")[0]
    assert f"; {refused}: connection refused by 127.0.0.1:{port} (gave up after 2 attempts). " in line
    hint = line
    assert "PYCONTRAST_ZOO_OFFLINE=1" in hint and "pycontrast-zoo download e --from-dir DIR" in hint
    assert "PYCONTRAST_ZOO_ENDPOINT" in hint
    assert_nothing_trusted(file, KEY)
    assert store.cached_files() == []


def test_a_stalled_server_costs_two_read_timeouts_then_the_mirror_is_used(server, monkeypatch):
    monkeypatch.setenv("PYCONTRAST_ZOO_TIMEOUT", "0.2")
    data = payload()
    stalled = server.add("/stall/model_final.pth", data, mode="stall", cut_at=0, delay=30)
    file = ref(stalled, server.add("/mirror/model_final.pth", data), data=data)
    assert store.fetch_file(file, KEY, quiet=True).read_bytes() == data
    assert server.ranges("/stall/model_final.pth") == [None, None]
    store.remove_cached()
    with pytest.raises(DownloadError, match=r"sent nothing for 0.2 s \(stalled\) \(gave up after 2 attempts\)"):
        store.fetch_file(ref(stalled, data=data), KEY, quiet=True)


def test_a_server_that_stalls_after_some_bytes_is_resumed(server, monkeypatch):
    monkeypatch.setenv("PYCONTRAST_ZOO_TIMEOUT", "0.2")
    data = payload(300_000)
    file = ref(server.add("/st.pth", data, mode="stall", cut_at=150_000, delay=30, times=1), data=data, known=False)
    assert store.fetch_file(file, KEY, quiet=True).read_bytes() == data
    assert server.ranges("/st.pth")[0] is None and server.ranges("/st.pth")[1].startswith("bytes=")
    assert_agrees(server, "/st.pth", file, KEY, data)


# ------------------------------------------------------------------------------------------ filesystem


def _read_only(monkeypatch, root: Path, code: int = errno.EROFS) -> None:
    """Every change under ``root`` fails with ``code``, as on a read-only mount (reads still work)."""
    root = str(root)

    def under(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.path.abspath(os.fspath(path)).startswith(root)

    def refuse(path):
        raise OSError(code, os.strerror(code), os.fspath(path))

    real_open, real_mkdir = os.open, os.mkdir
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC

    def fake_open(path, flags, *args, **kwargs):
        if under(path) and flags & writing:
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if under(path) and not os.path.isdir(path):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    for name in ("replace", "rename", "unlink", "chmod", "utime", "truncate"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda path, *a, _real=real, **k: refuse(path) if under(path)
                            else _real(path, *a, **k))


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES], ids=["read-only", "permission"])
def test_an_unwritable_cache_is_one_named_error_and_still_serves_what_it_holds(server, monkeypatch, code):
    data = payload()
    held = ref(server.add("/held.pth", data), data=data, known=False)
    store.fetch_file(held, "held/model", quiet=True)
    _read_only(monkeypatch, store.cache_dir(), code)
    assert store.fetch_file(held, "held/model", quiet=True).read_bytes() == data  # a hit needs no write
    assert store.verify_file(held, "held/model").status == "unverified"
    missing = ref(server.add("/new.pth", data), data=data)
    with pytest.raises(FilesystemError) as err:
        store.fetch_file(missing, KEY, quiet=True)
    message = str(err.value)
    assert "\n" not in message and str(store.files_dir()) in message
    assert ("read-only file system" if code == errno.EROFS else "permission denied") in message
    assert "PYCONTRAST_ZOO_HOME" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: the permission cannot fail")
def test_a_cache_folder_without_write_permission_is_a_named_error(server, tmp_path, monkeypatch):
    home = tmp_path / "locked"
    home.mkdir()
    home.chmod(stat.S_IRUSR | stat.S_IXUSR)
    monkeypatch.setenv("PYCONTRAST_ZOO_HOME", str(home))
    data = payload()
    try:
        with pytest.raises(FilesystemError, match=f"cannot write {home}.*permission denied.*PYCONTRAST_ZOO_HOME"):
            store.fetch_file(ref(server.add("/x.pth", data), data=data), KEY, quiet=True)
    finally:
        home.chmod(stat.S_IRWXU)


def test_a_full_disk_is_one_named_error_and_leaves_nothing(server, monkeypatch):
    data = payload(300_000)
    file = ref(server.add("/full.pth", data), data=data)
    real_write = store.partials.Partial.write

    def write(self, chunk):
        if self.size + len(chunk) > 100_000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(self, chunk)

    monkeypatch.setattr(store.partials.Partial, "write", write)
    with pytest.raises(FilesystemError,
                       match="no space left on the device; free space there, or set PYCONTRAST_ZOO_HOME"):
        store.fetch_file(file, KEY, quiet=True)
    assert store.cached_files() == []


_DOWNLOAD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))  # a full disk: writes past 100 kB fail (EFBIG)
from pycontrast_det.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_file_size_limit_stops_the_cli_with_exit_2_and_one_line(server, tmp_path):
    manifest = write_manifest(tmp_path, [server.add("/big/model_final.pth", payload(300_000))])
    proc = subprocess.run([sys.executable, "-c", _DOWNLOAD, "--manifest", str(manifest), "download", "my_det",
                           "--what", "model", "--quiet"], env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    dest = store.files_dir() / "my_det" / "model" / "model_final.pth"
    assert proc.stderr.strip().splitlines() == [
        f"pycontrast-zoo download: error: cannot write {dest}: file too large for this filesystem or the process's "
        f"file size limit; free space there, or set PYCONTRAST_ZOO_HOME to a writable folder with free space for "
        f"the download cache"]
    assert store.cached_files() == []


def test_a_read_only_cache_stops_the_cli_with_exit_2_and_one_line(server, tmp_path, monkeypatch, capsys):
    manifest = write_manifest(tmp_path, [server.add("/ro/model_final.pth", payload())])
    _read_only(monkeypatch, store.cache_dir())
    assert main(["--manifest", str(manifest), "download", "my_det", "--what", "model", "--jobs", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pycontrast-zoo download: error: cannot write {store.cache_dir()}")
    assert "read-only file system; set PYCONTRAST_ZOO_HOME" in err[0]


def test_no_dns_on_the_cli_is_exit_2_with_what_to_do(no_dns, tmp_path, capsys):
    manifest = write_manifest(tmp_path, [f"https://{DEAD_HOST}/s/x/model_final.pth"])
    assert main(["--manifest", str(manifest), "download", "my_det", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"cannot resolve host '{DEAD_HOST}'" in err and "PYCONTRAST_ZOO_OFFLINE=1" in err
    assert "pycontrast-zoo download my_det --from-dir DIR" in err and "PYCONTRAST_ZOO_ENDPOINT" in err
    assert len(no_dns) == 2


# ------------------------------------------------------------------------------------------ atomic writes


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out" / "results.json"
    atomic.write_text(target, "old\n")
    assert target.read_text() == "old\n" and stat.S_IMODE(target.stat().st_mode) == 0o666 & ~atomic._UMASK
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("the writer failed")
    assert target.read_text() == "old\n" and sorted(p.name for p in target.parent.iterdir()) == ["results.json"]
    with atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left"), (errno.EDQUOT, "quota"),
                                         (errno.EROFS, "read-only"), (errno.EACCES, "permission denied")])
def test_atomic_write_names_filesystem_failures(tmp_path, monkeypatch, code, words):
    target = tmp_path / "model.pth"

    def failing_write(fh_self, data):
        raise OSError(code, os.strerror(code))

    with pytest.raises(FilesystemError, match=f"cannot write {target}: .*{words}") as err:
        with atomic.atomic_path(target) as tmp:
            failing_write(None, tmp)
    assert isinstance(err.value, ZooError) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyError):  # other failures pass through untouched
        with atomic.atomic_path(target):
            raise KeyError("x")
