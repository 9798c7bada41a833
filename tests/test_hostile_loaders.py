"""Issue 16, files that run code on load and secrets in URLs (items 11-15): a crafted TorchScript archive runs
nothing unless trusted, a malicious .pth is refused with the right one line, credentials are never written nor
printed, hf:// works whichever huggingface_hub is installed, and a text file given to ``convert`` is one line."""
from __future__ import annotations

import json

import pytest
import yaml

from pycontrast_det import store
from pycontrast_det.errors import UnsafeCheckpointError, UntrustedExportError

from hostile_helpers import assert_cache_holds_only, cli, download, snapshot  # noqa: F401
from store_helpers import fast_net, payload, ref, server  # noqa: F401

_EVIL_TORCHSCRIPT = '''
import sys
from typing import Tuple

import torch


class Evil(torch.nn.Module):
    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.buf = torch.zeros(1, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]) -> None:
        self.path = state[0]
        self.training = state[1]
        self.buf = torch.from_file(self.path, shared=True, size=4, dtype=torch.uint8)  # creates the file


torch.jit.save(torch.jit.script(Evil(sys.argv[2])), sys.argv[1])
'''


def test_11_a_crafted_torchscript_archive_runs_nothing_unless_trusted(tmp_path):
    import subprocess
    import sys

    import torch

    import pycontrast_det as pcd

    archive, marker, maker = tmp_path / "model.pt", tmp_path / "pwned", tmp_path / "make_evil.py"
    maker.write_text(_EVIL_TORCHSCRIPT)  # torch.jit.script reads the class's source from its file
    subprocess.run([sys.executable, str(maker), str(archive), str(marker)], check=True, timeout=300)
    assert not marker.exists()
    with pytest.raises(UntrustedExportError) as err:
        pcd.load_exported(archive)
    [line] = str(err.value).splitlines()
    assert "can run code when it is loaded" in line and "trusted=True" in line and "ONNX" in line
    assert not marker.exists()  # refused before torch.jit.load
    torch.jit.load(str(archive))  # the payload is real: a plain load runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(pcd.errors.ExportError, match="without pycontrast_det metadata"):
        pcd.load_exported(archive, trusted=True)  # the user vouched for it: loaded (and then found not ours)
    assert marker.exists()


def test_11_a_torchscript_file_recorded_at_export_is_trusted(tmp_path):
    import torch

    from pycontrast_det.export.trust import record_export, trust_record

    path = tmp_path / "mine.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    import pycontrast_det as pcd

    with pytest.raises(UntrustedExportError):
        pcd.load_exported(path)
    record_export(path)  # what export() does after writing a TorchScript file
    assert str(path.resolve()) in trust_record().read_text()
    with pytest.raises(pcd.errors.ExportError, match="without pycontrast_det metadata"):
        pcd.load_exported(path)  # trusted now: it gets as far as reading the metadata
    path.write_bytes(path.read_bytes() + b"\0")  # changed after export: no longer the recorded bytes
    with pytest.raises(UntrustedExportError):
        pcd.load_exported(path)


class _Exec:
    """Unpickled, it runs ``code`` (exec): what a malicious checkpoint does."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def test_12_a_malicious_pth_is_refused_as_code_without_torch_advice(tmp_path):
    import torch

    from pycontrast_det.checkpoints.readers import read_checkpoint

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(3)}, "x": _Exec(f"open({str(marker)!r}, 'w')")}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        read_checkpoint(path)
    [line] = str(err.value).splitlines()
    assert line.startswith(f"{path}: refused: would run code on load (it asks for ") and "exec" in line
    assert "weights_only=False" not in line and "truncated" not in line and "Re-running" not in line
    assert not marker.exists()


def test_15_a_text_file_given_to_convert_is_one_line(tmp_path, capsys):
    text = tmp_path / "notes.pth"
    text.write_text("these are my notes, not weights\n")
    before = snapshot(tmp_path)
    code, line = cli(["convert", str(text), str(tmp_path / "out.pth")], capsys)
    assert code == 2 and "not a checkpoint, it is a text file" in line and "KeyError" not in line
    assert snapshot(tmp_path) == before


SECRET_URL = "http://alice:s3cret-pass@{host}/private/model_final.pth?token=hf_abcdefghijklmnopqrstuvwxyz&dl=1"


def test_13_credentials_in_a_failing_url_are_never_printed(server, tmp_path, capsys, monkeypatch):
    from hostile_helpers import manifest

    host = server.base.split("//")[1]
    url = SECRET_URL.format(host=host)  # nothing served there: 404
    path = manifest(tmp_path, [url])
    monkeypatch.setenv("PYCONTRAST_ZOO_RETRIES", "0")
    code, line = download(path, capsys)
    assert code == 2 and "HTTP 404" in line
    assert "s3cret" not in line and "hf_abc" not in line and "alice" not in line
    assert "http://***@" in line and "token=***" in line and "dl=1" in line
    assert store.redact("https://h/x?X-Amz-Signature=abc&v=2") == "https://h/x?X-Amz-Signature=***&v=2"
    assert_cache_holds_only([])


def test_13_publish_never_writes_credentials(server, tmp_path, capsys):
    data = payload(50_000)
    host = server.base.split("//")[1]
    server.add("/private/model_final.pth", data)
    url = SECRET_URL.format(host=host)
    (tmp_path / "cfg.yaml").write_text("_BASE_: x\n")
    body = {"schema_version": 1, "merge": True,
            "pretrains": {"mine": {"method": "Mine", "epochs": 1, "imagenet_top1": None,
                                   "file": {"urls": [url], "sha256": None, "size_bytes": None,
                                            "format": "torchvision"}}},
            "entries": {}}
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    out = tmp_path / "tree"
    code, line = cli(["--manifest", str(path), "publish", "mine", "--to", str(out), "--what", "pretrain",
                      "--no-check", "--quiet"], capsys)
    assert code == 0, line
    written = "".join(p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file() and p.suffix != ".pth")
    assert "s3cret" not in written and "hf_abc" not in written and "alice" not in written
    assert (out / "mine" / "model_final.pth").read_bytes() == data


def test_14_hf_download_without_tqdm_class_still_works(monkeypatch, tmp_path):
    """huggingface_hub 0.2x has no ``tqdm_class``: the store detects it and turns the bars off instead."""
    import huggingface_hub

    from pycontrast_det.store import local

    calls = []

    def old_hf_hub_download(repo_id, filename, *, revision=None, local_files_only=False, endpoint=None,
                            cache_dir=None):
        calls.append((repo_id, filename, revision))
        target = tmp_path / filename
        target.write_bytes(b"weights")
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", old_hf_hub_download)
    assert local.hf_download("hf://org/repo@v1/model.bin", offline=False, quiet=True).read_bytes() == b"weights"
    assert calls == [("org/repo", "model.bin", "v1")]
    assert json.dumps(calls)  # plain values


@pytest.mark.parametrize("url", ["hf://org/repo/../x.pth", "hf://org/repo", "hf://org//x.pth", "hf://org/repo/./x"])
def test_14_hf_urls_that_name_no_file_are_skipped_with_a_reason(url):
    from pycontrast_det.store import local

    with pytest.raises(local.SourceMissing, match="not a file of a repository"):
        local.hf_parts(url)
