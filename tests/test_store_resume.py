"""A resumed download is published only if the server provably continued the same bytes; a cache hit, a pin
and ``verify`` never vouch for other bytes. No checksum is published in these tests unless said (as for every
file of the shipped zoo), one stable URL whose server changes its behaviour between two runs; each ends with
the cache holding nothing wrong and every later run agreeing (``assert_agrees``)."""
from __future__ import annotations

import os

import pytest

from pycontrast_det import store
from pycontrast_det.errors import ChecksumError, DownloadError, OfflineError
from pycontrast_det.store.verify import read_record

from store_helpers import assert_agrees, fast_net, partials, payload, ref, resume_range, server, sha  # noqa: F401

KEY = "mask_rcnn_x/model"
PATH = "/s/abc/model_final.pth"
SIZE = 1_000_000
RUN1_CUTS = {
    "truncated-200": dict(mode="truncate", cut_at=SIZE // 2),  # full Content-Length, body cut at half
    "reset": dict(mode="reset", cut_at=SIZE // 3),  # connection reset after a third
    "long-content-length": dict(mode="long_length", extra=1 << 20),  # Content-Length 1 MiB too long
}


def _failed_run(server, monkeypatch, file) -> int:
    """Run 1: fails, keeping a partial; returns its size."""
    monkeypatch.setenv("PYCONTRAST_ZOO_RETRIES", "0")
    with pytest.raises(DownloadError):
        store.fetch_file(file, KEY, quiet=True)
    monkeypatch.setenv("PYCONTRAST_ZOO_RETRIES", "2")
    [part] = partials()
    assert 0 < part.size_bytes and not store.cache_path(file, KEY).exists()
    return part.size_bytes


@pytest.mark.parametrize("length", ["range", "full"])
@pytest.mark.parametrize("cut", list(RUN1_CUTS))
def test_a_206_sending_the_file_from_byte_0_is_never_appended(server, monkeypatch, cut, length):
    data = payload(SIZE)
    file = ref(server.add(PATH, data, validators=True, **RUN1_CUTS[cut]), data=data, known=False)
    kept = _failed_run(server, monkeypatch, file)
    route = server.routes[PATH]
    route.mode, route.length = "range_from_zero", length  # run 2: Content-Range right, bytes from 0
    assert store.fetch_file(file, KEY, quiet=True).read_bytes() == data
    assert server.ranges(PATH)[-2:] == [resume_range(kept), None]  # the 206 refused, restarted from 0
    assert read_record(store.cache_path(file, KEY)).pieces == 1
    assert_agrees(server, PATH, file, KEY, data)


@pytest.mark.parametrize("validators", [True, False], ids=["etag-last-modified", "no-validators"])
@pytest.mark.parametrize("new_size", [2_000_000, 500_000], ids=["bigger", "same-size"])
def test_a_file_replaced_between_runs_is_never_spliced(server, monkeypatch, validators, new_size):
    old, new = payload(500_000, seed=1), payload(new_size, seed=2)
    file = ref(server.add(PATH, old, mode="cut", cut_at=300_000, validators=validators), data=old, known=False)
    kept = _failed_run(server, monkeypatch, file)
    old_etag = server.routes[PATH].etag()
    server.routes[PATH].data, server.routes[PATH].mode = new, "ok"  # replaced on the server
    assert store.fetch_file(file, KEY, quiet=True).read_bytes() == new
    if validators:  # If-Range with the old ETag: the server itself answers with the whole new file
        resume = [s for s in server.requests if s.range == resume_range(kept)][-1]
        assert resume.if_range == old_etag and server.ranges(PATH)[-1] == resume_range(kept)
    else:  # no validator, no checksum: a same-size replacement could not be told apart, so no resume at all
        assert server.ranges(PATH)[-1] is None and resume_range(kept) not in server.ranges(PATH)
    assert_agrees(server, PATH, file, KEY, new)


def test_an_unchanged_file_resumes_with_if_range(server, monkeypatch):
    data = payload(SIZE)
    file = ref(server.add(PATH, data, mode="cut", cut_at=400_000, validators=True), data=data, known=False)
    kept = _failed_run(server, monkeypatch, file)
    server.routes[PATH].mode = "ok"
    assert store.fetch_file(file, KEY, quiet=True).read_bytes() == data
    last = server.requests[-1]
    assert (last.range, last.if_range) == (resume_range(kept), server.routes[PATH].etag())
    assert read_record(store.cache_path(file, KEY)).pieces == 2
    assert_agrees(server, PATH, file, KEY, data)


def test_a_body_longer_than_announced_total_is_never_published(server, monkeypatch):
    data = payload(SIZE)
    file = ref(server.add(PATH, data, mode="long_length", extra=1 << 20), data=data, known=False)
    with pytest.raises(DownloadError, match="connection closed after"):
        store.fetch_file(file, KEY, quiet=True)
    assert not store.cache_path(file, KEY).exists()
    [part] = partials()
    assert (part.size_bytes, part.total_bytes) == (SIZE, SIZE + (1 << 20))
    assert_agrees(server, PATH, file, KEY, data)


def test_pin_records_only_a_hash_of_one_whole_download(server, monkeypatch):
    data = payload(600_000)
    file = ref(server.add(PATH, data, mode="cut", cut_at=250_000, times=1), data=data, known=False)
    path = store.fetch_file(file, KEY, quiet=True)  # resumed inside the call: two pieces
    assert path.read_bytes() == data and read_record(path).pieces == 2
    with pytest.raises(OfflineError, match="one download in one piece"):
        store.pin_file(file, KEY, quiet=True, offline=True)
    assert store.load_pins() == {}
    before = len(server.ranges(PATH))
    pin = store.pin_file(file, KEY, quiet=True)
    assert pin.sha256 == sha(data) and server.ranges(PATH)[before:] == [None]  # downloaded again, whole
    assert read_record(path).pieces == 1
    store.pin_file(file, KEY, quiet=True)
    assert len(server.ranges(PATH)) == before + 1  # already one piece: pinned from the record
    assert_agrees(server, PATH, file, KEY, data)


def test_pin_refuses_a_file_that_conflicts_with_the_manifest(server):
    good, other = payload(seed=1), payload(seed=2)
    file = ref(server.add(PATH, other), data=good)
    with pytest.raises(ChecksumError, match=sha(good)):
        store.pin_file(file, KEY, quiet=True)
    assert store.load_pins() == {} and not store.cache_path(file, KEY).exists()


def test_a_checksum_published_after_a_bad_download_removes_the_bad_file(server):
    good, bad = payload(seed=1), payload(seed=2)
    store.fetch_file(ref(server.add(PATH, bad), data=good, known=False), KEY, quiet=True)  # nothing could tell
    server.routes[PATH].data = good
    published = ref(server.base + PATH, data=good)  # the manifest now has the sha256
    assert store.verify_file(published, KEY).status == "mismatch"
    with pytest.raises(OfflineError, match=f"cached copy was wrong.*expected {sha(good)}"):
        store.fetch_file(published, KEY, quiet=True, offline=True)
    assert not store.cache_path(published, KEY).exists()  # discarded, not served
    assert store.fetch_file(published, KEY, quiet=True).read_bytes() == good
    assert_agrees(server, PATH, published, KEY, good)


def test_a_pin_published_after_a_bad_download_removes_the_bad_file(server):
    good, bad = payload(seed=1), payload(seed=2)
    file = ref(server.add(PATH, good), data=good, known=False)
    store.pin_file(file, KEY, quiet=True)
    store.cache_path(file, KEY).write_bytes(bad)  # same size, other bytes
    assert store.fetch_file(file, KEY, quiet=True).read_bytes() == good  # online: downloaded again
    assert server.ranges(PATH)[-1] is None
    assert_agrees(server, PATH, file, KEY, good)


def test_a_cached_file_changed_in_place_is_not_trusted_even_without_a_checksum(server):
    data, other = payload(seed=1), payload(seed=2)
    file = ref(server.add(PATH, data), data=data, known=False)
    path = store.fetch_file(file, KEY, quiet=True)
    path.write_bytes(other)  # same size: only the bytes tell
    assert store.verify_file(file, KEY).status == "mismatch"
    with pytest.raises(OfflineError, match="recorded when it was downloaded"):
        store.fetch_file(file, KEY, quiet=True, offline=True)
    assert store.fetch_file(file, KEY, quiet=True).read_bytes() == data
    assert_agrees(server, PATH, file, KEY, data)


def test_a_hit_costs_no_hash_until_the_file_or_the_expected_hash_changes(server, monkeypatch):
    data = payload()
    file = ref(server.add(PATH, data), data=data, known=False)
    path = store.fetch_file(file, KEY, quiet=True)
    hashed = []
    real = store.verify.hash_file
    monkeypatch.setattr(store.verify, "hash_file", lambda p: hashed.append(p) or real(p))
    store.fetch_file(file, KEY, quiet=True)
    store.fetch_file(ref(server.base + PATH, data=data), KEY, quiet=True)  # the same sha256, now published
    assert hashed == []
    os.utime(path)  # touched: re-hashed once, then trusted again
    store.fetch_file(file, KEY, quiet=True)
    store.fetch_file(file, KEY, quiet=True)
    assert hashed == [path]
    with pytest.raises(ChecksumError):  # another sha256 published: re-hashed, discarded, the server disagrees
        store.fetch_file(ref(server.base + PATH, data=payload(seed=3)), KEY, quiet=True)
    assert len(hashed) == 2 and not path.exists()


def test_a_file_put_in_place_by_hand_is_hashed_once_and_never_pinned_unseen(server):
    data = payload()
    file = ref(server.add(PATH, data), data=data, known=False)
    path = store.cache_path(file, KEY)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    assert store.fetch_file(file, KEY, quiet=True, offline=True) == path
    assert read_record(path).pieces is None and read_record(path).sha256 == sha(data)
    with pytest.raises(OfflineError, match="put in place by hand"):
        store.pin_file(file, KEY, quiet=True, offline=True)
    assert store.pin_file(file, KEY, quiet=True).sha256 == sha(data)
    assert server.ranges(PATH) == [None]


def test_a_completed_file_removes_its_partials_from_every_url(server, monkeypatch):
    data = payload(SIZE)
    cut_a = server.add("/a" + PATH, data, mode="cut", cut_at=300_000)
    cut_b = server.add("/b" + PATH, data, mode="cut", cut_at=200_000)
    file = ref(cut_a, cut_b, data=data, known=False)
    monkeypatch.setenv("PYCONTRAST_ZOO_RETRIES", "0")
    with pytest.raises(DownloadError):
        store.fetch_file(file, KEY, quiet=True)
    assert sorted(p.size_bytes for p in partials()) == [200_000, 300_000]
    server.routes["/b" + PATH].mode = "ok"
    assert store.fetch_file(file, KEY, quiet=True).read_bytes() == data
    assert [c.kind for c in store.cached_files()] == ["file"]
    assert sorted(p.name for p in store.cache_path(file, KEY).parent.iterdir()) == [
        ".model_final.pth.lock", ".model_final.pth.verified.json", "model_final.pth"]
