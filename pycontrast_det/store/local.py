"""Sources that are not plain HTTP: local paths, ``file://`` URLs, and ``hf://`` repo paths (through
huggingface_hub and its own cache, offline aware). Each is copied whole into a Partial. No torch here."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlparse

from .partials import Partial
from .verify import CHUNK_BYTES


class SourceMissing(Exception):
    """This local source cannot serve the file (no such file, unreadable, unknown repo): try the next URL."""


def local_source(url: str) -> Optional[Path]:
    """The file behind a ``file://`` URL or a plain path; None for other URLs."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if "://" not in url:
        return Path(url)
    return None


def copy_local(src: Path, partial: Partial) -> None:
    """Copy ``src`` whole into ``partial`` (one piece, its total the size of ``src`` when opened)."""
    try:
        fh = open(src, "rb")
    except FileNotFoundError:
        raise SourceMissing(f"no such file {src}") from None
    except OSError as exc:
        raise SourceMissing(f"cannot read {src}: {exc.strerror or exc}") from None
    with fh:
        partial.validators.total = os.fstat(fh.fileno()).st_size
        partial.validators.pieces = 1
        while True:
            chunk = fh.read(CHUNK_BYTES)
            if not chunk:
                break
            partial.write(chunk)


def _hf_cache_dir() -> Optional[str]:
    """HF_HUB_CACHE / HF_HOME read now (huggingface_hub reads them once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def hf_download(url: str, offline: bool, quiet: bool) -> Path:
    """``hf://org/repo[@revision]/path/in/repo`` via huggingface_hub (its own cache). Offline, only its cache is
    read (``try_to_load_from_cache``: hf_hub_download with local_files_only still builds request headers, which
    may fetch a registry from the Hub)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    parsed = urlparse(url)
    parts = [p for p in (parsed.netloc + parsed.path).split("/") if p]
    org, repo, filename = parts[0], parts[1], "/".join(parts[2:])
    repo, _, revision = repo.partition("@")
    if offline:
        found = try_to_load_from_cache(f"{org}/{repo}", filename, cache_dir=_hf_cache_dir(), revision=revision or None)
        if isinstance(found, str):
            return Path(found)
        raise SourceMissing("not in the Hugging Face cache")
    try:
        path = hf_hub_download(f"{org}/{repo}", filename, revision=revision or None, local_files_only=offline,
                               endpoint=os.environ.get("HF_ENDPOINT") or None, cache_dir=_hf_cache_dir(),
                               tqdm_class=_quiet_tqdm() if quiet else None)
    except Exception as exc:  # huggingface_hub raises many kinds (HTTP, offline, validation): all mean "skip"
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise SourceMissing(f"huggingface_hub: {type(exc).__name__}: {text}") from None
    return Path(path)


def _quiet_tqdm() -> type:
    """A tqdm class that never draws (huggingface_hub takes a class)."""
    from tqdm.auto import tqdm

    class QuietTqdm(tqdm):
        def __init__(self, *args, **kwargs) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return QuietTqdm
