"""File references and URL rules: what a downloadable file is (URLs, checksum, size, format) and which URLs can be
fetched. The store needs only this, not the manifest's loading code. No torch here."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlparse

__all__ = ["FileRef", "FORMATS", "WEIGHT_FORMATS", "URL_SCHEMES", "url_basename", "url_problem"]

#: Every ``format`` a manifest may name for weights: the layouts of :mod:`pycontrast_det.checkpoints.formats` and
#: its aliases (the one list of these names; the checkpoint table is checked against it).
WEIGHT_FORMATS = frozenset({"pycontrast", "pycontrast_cmc", "moco", "msra_c2", "torchvision", "detectron2",
                            "detectron2_pkl", "safetensors"})
#: Every ``format`` a manifest file record may name: weights, plus ``text`` for training logs.
FORMATS = WEIGHT_FORMATS | {"text"}
URL_SCHEMES = ("http", "https", "hf", "file")


@dataclass(frozen=True)
class FileRef:
    """One downloadable file: URLs tried in order, its checksum and size when known, and its format."""

    urls: tuple[str, ...]
    sha256: Optional[str]
    size_bytes: Optional[int]
    format: str
    filename: str = ""           # cache file name; defaults to the first URL's basename
    published_url: Optional[str] = None  # the link as published (documentation only, never fetched)
    md5_prefix: Optional[str] = None     # short md5 published by some releases (MoCo); informative

    def __post_init__(self) -> None:
        if not self.filename:
            object.__setattr__(self, "filename", url_basename(self.urls[0]))


def url_basename(url: str) -> str:
    """The last path component of a URL or local path (query dropped)."""
    path = urlparse(url).path if "://" in url else url
    return path.rstrip("/").rsplit("/", 1)[-1] or "file"


def url_problem(url: str) -> Optional[str]:
    """Why ``url`` cannot be fetched as written (one phrase naming it), or None for a supported URL or a
    local path."""
    if not url.strip():
        return "empty URL"
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url):
        try:
            parsed = urlparse(url)
            parsed.port  # noqa: B018  (raises ValueError for a port that is not a number in 0..65535)
        except ValueError as exc:
            return f"malformed URL {url!r}: {exc}"
        if parsed.scheme not in URL_SCHEMES:
            return (f"URL scheme {parsed.scheme!r} not supported in {url!r} (use {', '.join(URL_SCHEMES)} or a "
                    f"local path)")
        if parsed.scheme in ("http", "https") and not parsed.hostname:
            return f"URL {url!r} has no host"
        if parsed.scheme in ("http", "https") and re.search(r"\s", url):
            return f"URL {url!r} contains whitespace (write a space as %20)"
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            return (f"file URL {url!r} names the host {parsed.netloc!r}; a local file is file:///absolute/path "
                    f"(or write the path itself)")
        if parsed.scheme == "hf" and len([p for p in (parsed.netloc + parsed.path).split("/") if p]) < 3:
            return f"hf URL {url!r} must look like hf://org/repo/path/in/repo"
        return None
    if re.match(r"^(https?|hf|file)(//|:/?[^/])", url, re.IGNORECASE):
        return f"{url!r} looks like a URL missing ':' or a '/' (write scheme://host/path)"
    if ":" in url.split("/", 1)[0] and not re.match(r"^[A-Za-z]:[\\/]", url):
        return f"{url!r} is neither a supported URL ({', '.join(URL_SCHEMES)}) nor a path"
    return None
