"""URL -> verified local file: the download cache of pycontrast-det. No torch here.

The promise: no call returns, verifies or pins a file whose bytes differ from the server's file. Modules:
``layout`` (where the cache keeps what; ls / rm), ``fetch`` (the entry points), ``_http`` (transfer, resume,
retries, named failures), ``partials`` (bytes in flight and their validators), ``local`` (paths, ``file://``,
``hf://``), ``verify`` (what was verified about each file; cache hits; ``verify``), ``pins`` (checksums recorded
on this machine), ``redact`` (credentials out of URLs). Settings are read at each call through
:mod:`pycontrast_det.settings`.
"""
from __future__ import annotations

from ._http import NetPolicy, net_policy
from .fetch import candidate_urls, fetch_file, fetch_url, fetch_whole, hf_file, import_from_dir, is_offline, \
    mirror_url, pin_file, proven_checksum
from .layout import ROLES, CachedFile, cache_dir, cache_path, cached_files, files_dir, mirror_path, remove_cached
from .partials import DownloadInterrupted, interrupt_downloads
from .pins import Pin, checksum_status, load_pins
from .redact import redact
from .verify import Verification, hash_file, verify_file

__all__ = [
    "cache_dir", "files_dir", "cache_path", "fetch_file", "fetch_url", "fetch_whole", "import_from_dir", "hash_file",
    "verify_file", "pin_file", "load_pins", "checksum_status", "cached_files", "remove_cached", "candidate_urls",
    "is_offline", "interrupt_downloads", "DownloadInterrupted", "Pin", "Verification", "CachedFile", "NetPolicy",
    "net_policy", "ROLES", "mirror_path", "mirror_url", "proven_checksum", "hf_file", "redact",
]
