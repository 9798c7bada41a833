"""``download --from-dir DIR`` with a flat folder: files named for their entry (``<entry>_<name>``, ``<entry>.pth``)
are found, verified and imported; through the command line too."""
from __future__ import annotations

import hashlib
import json

import pytest

import pycontrast_det as pcd
from pycontrast_det import store
from pycontrast_det.cli import main
from pycontrast_det.errors import DownloadError
from pycontrast_det.zoo import entry_record

from store_helpers import payload, ref

ENTRY = "mask_rcnn_fpn_1x_infomin"


@pytest.mark.parametrize("name", [f"{ENTRY}_model_final.pth", f"{ENTRY}.pth"])
def test_a_flat_folder_file_named_for_its_entry_is_imported(tmp_path, name):
    data = payload()
    unknown = ref("https://example.invalid/m/model_final.pth", data=data, known=False)  # no checksum to match
    with pytest.raises(DownloadError, match="not found"):
        store.import_from_dir(tmp_path, unknown, f"{ENTRY}/model")
    (tmp_path / name).write_bytes(data)
    assert store.import_from_dir(tmp_path, unknown, f"{ENTRY}/model").read_bytes() == data
    with pytest.raises(DownloadError, match="not found"):  # another entry's file is not taken for this one
        store.import_from_dir(tmp_path, unknown, "mask_rcnn_fpn_2x_infomin/model")


def test_download_from_a_flat_folder(tmp_path, monkeypatch, capsys):
    data = payload()
    record = {**entry_record(pcd.get_entry(ENTRY)), "model": {
        "urls": ["https://example.invalid/m/model_final.pth"], "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data), "format": "detectron2"}}
    manifest = tmp_path / "mine.yaml"
    manifest.write_text(json.dumps({"schema_version": 1, "merge": True, "entries": {ENTRY: record}}))
    carry = tmp_path / "carry"
    carry.mkdir()
    (carry / f"{ENTRY}_model_final.pth").write_bytes(data)
    assert main(["--manifest", str(manifest), "download", ENTRY, "--what", "model", "--from-dir", str(carry)]) == 0
    (cached,) = [c for c in store.cached_files() if c.kind == "file"]
    assert cached.path.read_bytes() == data
