"""Every malformed URL in a manifest is caught when the manifest loads, naming the file, entry and field; no
command (not even ``list``) crashes on one; ``fetch_url`` refuses them too."""
from __future__ import annotations

import pytest

from pycontrast_det import store, zoo
from pycontrast_det.cli import main
from pycontrast_det.errors import ManifestError, ZooError

from store_helpers import payload, ref, write_manifest

BAD_URLS = [
    ("http://[::1/x", "Invalid IPv6 URL"),
    ("http//host/x", "looks like a URL missing ':' or a '/'"),
    ("https:/host/x", "looks like a URL missing ':' or a '/'"),
    ("http://host:abc/x", "Port could not be cast to integer value as 'abc'"),
    ("http://host:99999/x", "Port out of range 0-65535"),
    ("file://host/p", "names the host 'host'; a local file is file:///absolute/path"),
    ("https://:443/x", "has no host"),
    ("https://exa mple.org/x", "contains whitespace"),
    ("hf://org/repo", "must look like hf://org/repo/path/in/repo"),
    ("ftp://host/x", "URL scheme 'ftp' not supported"),
]


@pytest.mark.parametrize("url, words", BAD_URLS, ids=[u for u, _ in BAD_URLS])
def test_a_malformed_url_is_refused_at_load_time_naming_entry_and_field(tmp_path, capsys, url, words):
    manifest = write_manifest(tmp_path, ["https://example.org/m/model_final.pth", url])
    with pytest.raises(ManifestError) as err:
        zoo.load_manifest([manifest])
    assert str(err.value).startswith(f"{manifest}: entries.my_det.model.urls[1]: ") and words in str(err.value)
    assert main(["--manifest", str(manifest), "list"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "entries.my_det.model.urls[1]" in lines[0] and words in lines[0]


@pytest.mark.parametrize("url, words", BAD_URLS[:5], ids=[u for u, _ in BAD_URLS[:5]])
def test_fetch_url_refuses_a_malformed_url(url, words):
    with pytest.raises(ZooError, match=words.replace("(", r"\(")):
        store.fetch_url(url, quiet=True)
    assert store.cached_files() == []


def test_good_urls_and_local_paths_load_and_fetch(tmp_path):
    data = payload(1000)
    (tmp_path / "w.pth").write_bytes(data)
    urls = [f"file://localhost{tmp_path}/w.pth", "w.pth", "https://host:8443/x/model_final.pth",
            "http://[::1]:8080/model_final.pth", "hf://org/repo@main/dir/model_final.pth"]
    loaded = zoo.load_manifest([write_manifest(tmp_path, urls)]).entries["my_det"].model
    assert loaded.urls[1] == str(tmp_path / "w.pth")  # relative to the manifest's folder
    assert store.fetch_file(ref(loaded.urls[0], data=data), "a/model", quiet=True).read_bytes() == data
    assert store.fetch_file(ref(loaded.urls[1], data=data), "b/model", quiet=True).read_bytes() == data
