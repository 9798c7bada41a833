"""Sources that are not plain HTTP: local paths, ``file://`` URLs, and ``hf://`` repo paths (through
huggingface_hub and its own cache, offline aware). Each is copied whole into a Partial. No torch here."""
from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional
from urllib.parse import unquote, urlparse

from .partials import Partial
from .redact import redact
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

    org, repo, revision, filename = hf_parts(url)
    if offline:
        try:
            found = try_to_load_from_cache(f"{org}/{repo}", filename, cache_dir=_hf_cache_dir(),
                                           revision=revision or None)
        except ValueError as exc:  # huggingface_hub's validation of the repo id or revision
            raise SourceMissing(f"huggingface_hub: {str(exc).splitlines()[0]}") from None
        if isinstance(found, str):
            return Path(found)
        raise SourceMissing("not in the Hugging Face cache")
    options: dict[str, type] = {}
    fetch: Callable[..., str] = hf_hub_download  # called with or without tqdm_class, by version
    quieting = quiet and not _takes_tqdm_class(hf_hub_download)
    if quiet and not quieting:
        options["tqdm_class"] = _quiet_tqdm()
    try:
        with _no_hf_progress_bars(quieting):
            path = fetch(f"{org}/{repo}", filename, revision=revision or None, local_files_only=offline,
                                   endpoint=os.environ.get("HF_ENDPOINT") or None, cache_dir=_hf_cache_dir(),
                                   **options)
    except Exception as exc:  # huggingface_hub raises many kinds (HTTP, offline, validation): all mean "skip",
        if isinstance(exc, (TypeError, AttributeError, NameError, ImportError)):  # but a misuse is a bug: raise
            raise
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise SourceMissing(f"huggingface_hub: {type(exc).__name__}: {redact(text)}") from None
    return Path(path)


def hf_parts(url: str) -> tuple[str, str, str, str]:
    """(org, repo, revision or "", path in the repo) of ``hf://org/repo[@revision]/path``; SourceMissing for a
    URL that names no file, or whose path climbs out of the repository (``..``)."""
    parsed = urlparse(url)
    parts = (parsed.netloc + parsed.path).split("/")
    if len(parts) < 3 or any(p in ("", ".", "..") for p in parts) or "\\" in url:
        raise SourceMissing("not a file of a repository: expected hf://org/repo[@revision]/path/to/file, with no "
                            "empty, '.' or '..' part")
    repo, _, revision = parts[1].partition("@")
    return parts[0], repo, revision, "/".join(parts[2:])


def _takes_tqdm_class(function: Callable[..., object]) -> bool:
    """Whether this huggingface_hub's ``hf_hub_download`` takes ``tqdm_class`` (1.x does; 0.2x does not)."""
    try:
        return "tqdm_class" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


@contextmanager
def _no_hf_progress_bars(active: bool) -> Iterator[None]:
    """huggingface_hub's progress bars off within the block (for versions without ``tqdm_class``)."""
    if not active:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    before = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not before:
            enable_progress_bars()


def _quiet_tqdm() -> type:
    """A tqdm class that never draws (huggingface_hub takes a class)."""
    from tqdm.auto import tqdm

    class QuietTqdm(tqdm):
        def __init__(self, *args, **kwargs) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return QuietTqdm
