"""Publish the zoo: a tree of model cards, effective configs, ``model.safetensors`` detectors, training logs and
pretrains, with checksums and a ``merge: true`` manifest, written to a folder or uploaded to the Hugging Face Hub.

Layer ``publish``: above engine, below cli. ``publish`` is the entry point; :mod:`.tree` builds the tree (and
holds the checksum rule of its manifest), :mod:`.card` writes the model cards, :mod:`.convert` makes
``model.safetensors``, :mod:`.upload` talks to the Hub, :mod:`.target` names where things go.
"""
from __future__ import annotations

import dataclasses
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from .. import store
from ..errors import DownloadError, OfflineError
from ..zoo import Zoo
from .target import LAYOUTS, Target, parse_target
from .tree import TREE_MANIFEST, Options, Tree, TreeFile, build_tree, portable_manifest, read_tree_manifest, \
    write_root

__all__ = ["LAYOUTS", "Options", "PublishReport", "Target", "TreeFile", "parse_target", "publish"]


@dataclass
class PublishReport:
    """What a publish wrote (or, dry, would write): the files, the tree's manifest text and its portable copy,
    notes, and the commit of each repository uploaded to."""

    target: Target
    files: list[TreeFile]
    manifest: str
    portable: Optional[str]
    notes: list[str] = field(default_factory=list)
    commits: dict[str, str] = field(default_factory=dict)


def _earlier(target: Target, offline: bool, notes: list[str]) -> Optional[dict]:
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


def publish(zoo: Zoo, names: Sequence[str], target: Target, options: Options, *, dry_run: bool = False,
            message: str = "pycontrast-zoo publish") -> PublishReport:
    """Build the tree of ``names`` for ``target``: written into its folder, or staged in a temporary folder and
    uploaded; with ``dry_run``, staged, reported and removed (no network: the sources come from the cache)."""
    if dry_run:
        options = dataclasses.replace(options, offline=True)
    staged = target.uploads or dry_run
    with tempfile.TemporaryDirectory(prefix="pycontrast-publish-") if staged else nullcontext() as tmp:
        root = Path(tmp) if tmp is not None else target.directory
        assert root is not None
        notes: list[str] = []
        earlier = _earlier(target, options.offline, notes)
        tree: Tree = build_tree(zoo, names, target, root, options)
        entries, pretrains = write_root(tree, zoo, earlier)
        manifest = (root / TREE_MANIFEST).read_text(encoding="utf-8")
        portable = portable_manifest(entries, pretrains) if target.repo is not None else None
        report = PublishReport(target, tree.files, manifest, portable, notes + tree.notes)
        if target.uploads and not dry_run:
            from .upload import upload

            report.commits = upload(target, root, tree.files, message)
        return report
