"""A folder made by ``pycontrast-zoo publish`` -> its verified local config and weights. No torch here.

A published folder holds ``config.yaml`` (the entry's effective config), ``model.safetensors`` (the detector,
detectron2 key names; absent for rows published as a config only), ``README.md`` (its model card), the training
log, and ``SHA256SUMS`` (``sha256sum`` format: one ``<sha256>  <file>`` line per file). It is named
``hf://org/repo[@revision]/<folder>`` (one folder per entry in one repository), ``hf://org/<repo>`` (one
repository per entry), or by its path on disk (a copy of the tree). Its config and weights are fetched through
the store and checked against ``SHA256SUMS``, itself read straight from huggingface_hub (which checks for a newer
commit when online).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

from .. import store
from ..errors import ChecksumError, PublishError
from ..refs import url_problem

__all__ = ["CHECKSUMS", "CONFIG", "WEIGHTS", "PublishedFolder", "is_published_folder", "resolve_published",
           "format_checksums", "read_checksums"]

CHECKSUMS = "SHA256SUMS"
CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](\S+)$")


@dataclass(frozen=True)
class PublishedFolder:
    """A published folder's verified local files: ``weights`` is None when it has no detector (or none was asked)."""

    spec: str
    config: Path
    weights: Optional[Path]


def is_published_folder(spec: Union[str, Path]) -> bool:
    """Whether ``spec`` names a published folder: an ``hf://`` name (not ending in a weights file's suffix), or a
    folder on disk holding SHA256SUMS (see :func:`~.names.parse_name`)."""
    from .names import Kind, parse_name

    return parse_name(spec).kind is Kind.PUBLISHED


def format_checksums(items: Iterable[tuple[str, str]]) -> str:
    """SHA256SUMS text from (file name, sha256) pairs, sorted by name (``sha256sum -c SHA256SUMS`` checks it)."""
    return "".join(f"{sha}  {name}\n" for name, sha in sorted(items))


def read_checksums(path: Path, where: str) -> dict[str, str]:
    """File name -> sha256 from a SHA256SUMS file; ChecksumError naming ``where`` and the line if malformed."""
    out: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        match = _LINE.match(line.strip())
        if match is None:
            raise ChecksumError(f"{where}: line {number} is not '<sha256>  <file>': {line[:80]!r}")
        out[match.group(2)] = match.group(1)
    return out


def resolve_published(spec: Union[str, Path], *, weights: bool = True, quiet: bool = False,
                      offline: Optional[bool] = None) -> PublishedFolder:
    """The verified ``config.yaml`` and (with ``weights``) ``model.safetensors`` of a published folder.

    PublishError when the folder lacks SHA256SUMS entries for them (a folder published as a config only has
    no weights: load the zoo entry by name for its pre-trained backbone, or ask for no weights); ChecksumError
    when a file's bytes differ from its SHA256SUMS line.
    """
    text = str(spec).rstrip("/")
    remote = text.startswith("hf://")
    if remote:
        problem = url_problem(f"{text}/{CHECKSUMS}")
        if problem:
            raise PublishError(f"{text}: {problem}; name a published folder as hf://org/repo[@revision][/folder]")
        sums_path = store.hf_file(f"{text}/{CHECKSUMS}", quiet=quiet, offline=offline)
    else:
        text = str(Path(text).expanduser().resolve())
        sums_path = Path(text) / CHECKSUMS
    where = f"{text}/{CHECKSUMS}"
    sums = read_checksums(sums_path, where)

    def fetch(name: str, fmt: str) -> Path:
        if name not in sums:
            raise PublishError(f"{where} lists no {name}: not a folder made by `pycontrast-zoo publish`"
                               if name == CONFIG else
                               f"{text} has no {name} (published as a config only): load the zoo entry by name for "
                               f"its pre-trained backbone, or load this folder with pretrained=False")
        url = f"{text}/{name}" if remote else str(Path(text) / name)
        return store.fetch_url(url, sha256=sums[name], format=fmt, quiet=quiet, offline=offline)

    config = fetch(CONFIG, "text")
    return PublishedFolder(text, config, fetch(WEIGHTS, "safetensors") if weights else None)
