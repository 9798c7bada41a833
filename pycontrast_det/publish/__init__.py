"""Publish the zoo: a tree of model cards, effective configs, ``model.safetensors`` detectors, training logs and
pretrains, with checksums and a ``merge: true`` manifest, written to a folder or uploaded to the Hugging Face Hub.

Layer ``publish``: above engine, below cli. ``publish`` is the entry point; :mod:`.tree` builds the tree (and
holds the checksum rule of its manifest), :mod:`.card` writes the model cards, :mod:`.convert` makes
``model.safetensors``, :mod:`.upload` talks to the Hub, :mod:`.target` names where things go.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from .. import atomic, store
from ..errors import DownloadError, OfflineError, PublishError
from ..zoo import Zoo
from .target import LAYOUTS, Target, parse_target
from .tree import TREE_MANIFEST, Options, Tree, TreeFile, build_tree, portable_manifest, read_tree_manifest, \
    write_root

__all__ = ["LAYOUTS", "Options", "PublishReport", "Target", "TreeFile", "parse_target", "publish"]


@dataclass
class PublishReport:
    """What a publish wrote (or, dry, would write): the files, the tree's manifest text and its portable copy,
    notes, the commit of each repository uploaded to, and the collection grouping them."""

    target: Target
    files: list[TreeFile]
    manifest: str
    portable: Optional[str]
    notes: list[str] = field(default_factory=list)
    commits: dict[str, str] = field(default_factory=dict)
    collection: Optional[str] = None  # the collection grouping one repository per entry (its URL)


def _earlier(target: Target, offline: Optional[bool], notes: list[str]) -> Optional[dict]:
    """The manifest of an earlier publish to the same place, whose records the new one keeps."""
    if target.directory is not None:
        return read_tree_manifest(target.directory / TREE_MANIFEST)
    if target.layout != "folders":
        return None
    try:
        return read_tree_manifest(store.hf_file(f"hf://{target.repo}/{TREE_MANIFEST}", quiet=True, offline=offline))
    except OfflineError:
        notes.append(f"hf://{target.repo}/{TREE_MANIFEST} was not read (no network): an upload keeps the records "
                     f"it holds for other entries")
    except DownloadError:  # no such repository or file yet
        pass
    return None


def _cache_only(exc: OfflineError, flag: str) -> PublishError:
    """What is really missing when ``flag`` (--dry-run, --weights-from-cache) kept a publish to the cache."""
    detail = str(exc).splitlines()[0].split(") and ", 1)[-1].replace(", or turn offline mode off.", "")
    entry = detail.split("/", 1)[0]
    return PublishError(f"{flag} reads only the cache and local files, and {detail}; or, with network, "
                        f"`pycontrast-zoo download {entry}` first")


def _move_into(root: Path, directory: Path, files: Sequence[TreeFile]) -> None:
    """The staged tree's files into ``directory`` (each replaced atomically), once all of them were built."""
    for item in files:
        dest = directory / item.path
        atomic.make_dirs(dest.parent)
        with atomic.atomic_path(dest) as tmp:
            shutil.move(str(root / item.path), str(tmp))


def publish(zoo: Zoo, names: Sequence[str], target: Target, options: Options, *, dry_run: bool = False,
            message: str = "pycontrast-zoo publish", cache_only_flag: Optional[str] = None) -> PublishReport:
    """Build the tree of ``names`` for ``target`` in a temporary folder, then move it into the target's folder or
    upload it (a failed publish leaves nothing); with ``dry_run``, report it and remove it (no network: the
    sources come from the cache). ``cache_only_flag`` names the option that set ``options.offline``, for errors."""
    if dry_run:
        options = dataclasses.replace(options, offline=True)
        cache_only_flag = "--dry-run"
    with tempfile.TemporaryDirectory(prefix="pycontrast-publish-") as tmp:
        root = Path(tmp)
        notes: list[str] = []
        earlier = _earlier(target, options.offline, notes)
        try:
            tree: Tree = build_tree(zoo, names, target, root, options)
        except OfflineError as exc:
            if cache_only_flag is None or store.is_offline():
                raise
            raise _cache_only(exc, cache_only_flag) from None
        entries, pretrains = write_root(tree, zoo, earlier)
        manifest = (root / TREE_MANIFEST).read_text(encoding="utf-8")
        portable = portable_manifest(entries, pretrains) if target.repo is not None else None
        report = PublishReport(target, tree.files, manifest, portable, notes + tree.notes)
        if dry_run:
            return report
        if target.uploads:
            from .upload import upload

            report.commits, report.collection = upload(target, root, tree.files, message)
        else:
            assert target.directory is not None
            _move_into(root, target.directory, tree.files)
        return report
