"""Build the published tree: per detector entry ``<entry>/`` (model card, effective config, ``model.safetensors``,
training log, SHA256SUMS), per pretrain ``<pretrain>/`` (the released file as it is, card, SHA256SUMS), and at the
root ``zoo.yaml`` (a ``merge: true`` manifest of what the tree holds) and ``README.md`` (an index card).

Every file lives at the path a mirror keeps it (:func:`pycontrast_det.store.mirror_path`: ``<name>/<filename>``),
so the tree, served by any static server, shared as a folder or uploaded as a Hub repository, is the mirror
``PYCONTRAST_ZOO_ENDPOINT`` points at.

Checksum rule of ``zoo.yaml``: every URL listed for a file serves exactly the bytes of its sha256. A published
file lists its path in the tree (relative to ``zoo.yaml``), its ``hf://`` URL, then the original URLs only when
its bytes are the original's (a log, a pretrain) and this machine can vouch for it (manifest or pin sha256, or
one whole download from those URLs: :func:`pycontrast_det.store.proven_checksum`); otherwise the original stays
a separate record with its own (possibly unknown) checksum. A converted ``model.safetensors`` never lists the
original ``.pth`` URL: that one becomes a ``model_alternatives`` record with the ``.pth``'s own checksum.
"""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import yaml

from .. import atomic, resources, store
from ..store.redact import redact
from ..checkpoints import sources
from ..checkpoints.published import CHECKSUMS, CONFIG, WEIGHTS, format_checksums
from ..errors import ManifestError, PublishError
from ..zoo import DetectorEntry, FileRef, Zoo, dump_manifest, entry_record, pretrain_record
from . import card
from .convert import detector_to_safetensors

if TYPE_CHECKING:
    from .target import Target

TREE_MANIFEST = "zoo.yaml"
CARD = "README.md"
COMMENT = ("pycontrast-det manifest of a tree made by `pycontrast-zoo publish` (merge: true): use it with\n"
           "PYCONTRAST_ZOO_MANIFEST=<this file>, or merge it with `pycontrast-zoo pin --write-manifest --merge`.\n"
           "Every URL of a file serves the bytes of its sha256; relative paths are files of this tree.")


@dataclass(frozen=True)
class TreeFile:
    """One file written into the tree: its path there (``<name>/<file>`` or a root file), checksum, size and
    what it is."""

    path: str
    sha256: str
    size_bytes: int
    what: str


@dataclass
class Tree:
    """A tree being built under ``root``: the files written, the manifest records of what was published, and
    notes for the user (what could not be vouched for, what was left out)."""

    root: Path
    target: "Target"
    files: list[TreeFile] = field(default_factory=list)
    entries: dict[str, dict] = field(default_factory=dict)
    pretrains: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, path: str, what: str) -> TreeFile:
        sha, size = store.hash_file(self.root / path)
        item = TreeFile(path, sha, size, what)
        self.files.append(item)
        return item

    def write_text(self, path: str, text: str, what: str) -> TreeFile:
        atomic.write_text(self.root / path, text)
        return self.add(path, what)

    def copy(self, src: Path, path: str, what: str) -> TreeFile:
        with atomic.atomic_path(self.root / path) as tmp:
            shutil.copyfile(src, tmp)
        return self.add(path, what)

    def urls(self, path: str) -> tuple[str, ...]:
        """Where the file at tree path ``path`` is published: the tree itself, then its Hub URL if any."""
        hub = self.target.hf_url(path)
        return (path,) + ((hub,) if hub else ())


@dataclass(frozen=True)
class Options:
    """What to publish and how: ``roles`` (model, log, pretrain), ``offline`` (only the cache, local files and
    the Hugging Face cache), ``check`` (load every converted detector into its architecture), ``github`` (the
    repository torch.hub loads pycontrast-det from, for the cards)."""

    roles: tuple[str, ...] = store.ROLES
    offline: Optional[bool] = None  # None: the user's offline setting (PYCONTRAST_ZOO_OFFLINE / HF_HUB_OFFLINE)
    quiet: bool = False
    check: bool = True
    github: str = card.DEFAULT_GITHUB


def build_tree(zoo: Zoo, names: Sequence[str], target: "Target", root: Path, options: Options) -> Tree:
    """Write the tree of ``names`` (detector entries, or pretrains alone) under ``root`` and return it; the root
    ``zoo.yaml`` and ``README.md`` keep the records of an earlier publish found at ``root`` (or given by
    :func:`write_root`'s caller)."""
    tree = Tree(root, target)
    both = sorted((set(zoo.entries) & set(zoo.pretrains)) & set(names))
    if both:
        raise PublishError(f"{', '.join(both)}: both a detector entry and a pretrain; their folders would be one")
    atomic.make_dirs(root)
    done: set[str] = set()
    for name in names:
        if name in zoo.pretrains and name not in zoo.entries:
            _pretrain(tree, zoo, name, options, done)
            continue
        entry = zoo.entry(name)
        _entry(tree, zoo, entry, options)
        if "pretrain" in options.roles:
            _pretrain(tree, zoo, entry.pretrain, options, done)
    return tree


def write_root(tree: Tree, zoo: Zoo, earlier: Optional[dict] = None) -> tuple[dict, dict]:
    """Write the root ``zoo.yaml`` (the records of ``earlier``, the manifest of a previous publish to the same
    place, updated with this one's) and ``README.md``; returns the (entries, pretrains) records written."""
    entries = dict((earlier or {}).get("entries") or {})
    pretrains = dict((earlier or {}).get("pretrains") or {})
    entries.update(tree.entries)
    pretrains.update(tree.pretrains)
    tree.write_text(TREE_MANIFEST, redact(dump_manifest(entries, pretrains, comment=COMMENT)),
                    "the pycontrast-det manifest of this tree (merge: true)")
    rows = [_row(name, record, zoo, pretrains) for name, record in entries.items()]
    if rows:
        tree.write_text(CARD, card.index_card(rows), "index card")
    return entries, pretrains


def read_tree_manifest(path: Path) -> Optional[dict]:
    """The records of the root ``zoo.yaml`` of an earlier publish (plain YAML data), None if there is none."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(f"{path}: cannot read the tree's manifest ({exc}); fix or remove it") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: not a manifest (expected a mapping); fix or remove it")
    return data


def portable_manifest(entries: dict, pretrains: dict) -> str:
    """The tree's manifest without its tree-relative paths, for use outside the tree (``--fragment``)."""
    def strip(file: dict, where: str) -> dict:
        urls = [u for u in file["urls"] if "://" in u or Path(u).is_absolute()]
        if not urls:
            raise PublishError(f"{where}: no URL outside the tree; give --repo (or publish to hf://) first")
        return {**file, "urls": urls}

    def records(section: dict, kind: str) -> dict:
        out = {}
        for name, record in section.items():
            new = dict(record)
            for key in ("model", "log", "file"):
                if new.get(key):
                    new[key] = strip(new[key], f"{kind}.{name}.{key}")
            for key in ("model_alternatives", "alternatives"):
                if new.get(key):
                    new[key] = [strip(f, f"{kind}.{name}.{key}") for f in new[key]]
            out[name] = new
        return out

    return redact(dump_manifest(records(entries, "entries"), records(pretrains, "pretrains"), comment=COMMENT))


# --------------------------------------------------------------------------------------------- entries


def _config_ref(entry: DetectorEntry) -> str:
    """The entry's config as the tree manifest names it: as written when it resolves from the shipped configs
    (anywhere), else this tree's effective ``<entry>/config.yaml``."""
    shipped = resources.data_root() / entry.config
    if shipped.is_file() and shipped.resolve() == entry.config_path:
        return entry.config
    return f"{entry.name}/{CONFIG}"


def _entry(tree: Tree, zoo: Zoo, entry: DetectorEntry, options: Options) -> None:
    from ..config import load_config

    pretrain = zoo.pretrain(entry.pretrain)
    cfg = load_config(entry.config_path, entry.config_overrides)
    folder = entry.name
    files = [tree.write_text(f"{folder}/{CONFIG}", cfg.dump(), f"effective config of `{entry.config}`")]
    model, alternatives, log_file = entry.model, entry.model_alternatives, entry.log
    if "model" in options.roles and entry.model is not None:
        converted, model, alternatives = _model(tree, entry, options)
        files.append(converted)
    if "log" in options.roles and entry.log is not None:
        copied, log_file = _copied(tree, entry.log, f"{entry.name}/log", "training log (detectron2)", options)
        files.append(copied)
    listed = [card.CardFile(Path(f.path).name, f.size_bytes, f.sha256, f.what) for f in files]
    files.append(tree.write_text(f"{folder}/{CARD}", card.entry_card(entry, pretrain, cfg, listed, tree.target,
                                                                     options.github), "model card"))
    _checksums(tree, folder, files)
    published = dataclasses.replace(entry, model=model, model_alternatives=alternatives, log=log_file)
    tree.entries[entry.name] = {**entry_record(published), "config": _config_ref(entry)}


def _model(tree: Tree, entry: DetectorEntry, options: Options) -> tuple[TreeFile, FileRef, tuple[FileRef, ...]]:
    """Convert the entry's detector into ``<entry>/model.safetensors``; (file, its record, the alternatives)."""
    models = sources.model_files(entry)
    src, key, ref = sources.fetch_first(models, quiet=options.quiet, offline=options.offline)
    path = f"{entry.name}/{WEIGHTS}"
    source_sha, _ = store.hash_file(src)
    count = detector_to_safetensors(src, ref.format, tree.root / path,
                                    {"entry": entry.name, "source_sha256": source_sha, "source_format": ref.format})
    if options.check:
        _check_fits(entry, tree.root / path)
    converted = tree.add(path, f"detector weights, {count} tensors, detectron2 key names (from `{ref.filename}`, "
                                f"sha256 {source_sha})")
    proven = store.proven_checksum(ref, key)
    if proven is None and ref.sha256 is None:
        tree.notes.append(f"{key}: the bytes of {ref.filename} were not vouched for as what its URLs serve (not one "
                          f"whole download from them); its record keeps sha256: null")
    alternatives = []
    for _, other in models:  # every other source of this detector; a previous model.safetensors is replaced
        if other.format == "safetensors" and other.filename == WEIGHTS:
            continue
        if other is ref and proven is not None:
            other = dataclasses.replace(other, sha256=proven[0], size_bytes=proven[1])
        alternatives.append(other)
    record = FileRef(urls=tree.urls(path), sha256=converted.sha256, size_bytes=converted.size_bytes,
                     format="safetensors", filename=WEIGHTS, published_url=tree.target.web_url(path))
    return converted, record, tuple(alternatives)


def _check_fits(entry: DetectorEntry, weights: Path) -> None:
    """Load the converted file into the entry's architecture (every key and shape must fit)."""
    from ..modeling import load

    load(str(entry.config_path), weights=str(weights), device="cpu")


def _copied(tree: Tree, ref: FileRef, key: str, what: str, options: Options) -> tuple[TreeFile, FileRef]:
    """Copy a file of the zoo into the tree at its mirror path; (file, its record)."""
    src = store.fetch_file(ref, key, quiet=options.quiet, offline=options.offline)
    path = store.mirror_path(ref, key)
    assert path is not None
    copied = tree.copy(src, path, what)
    same = store.proven_checksum(ref, key) == (copied.sha256, copied.size_bytes)
    if not same:
        tree.notes.append(f"{key}: the bytes of {ref.filename} were not vouched for as what "
                          f"{redact(ref.urls[0])} serves; the published record does not list that URL")
    record = dataclasses.replace(ref, urls=tree.urls(path) + (ref.urls if same else ()), sha256=copied.sha256,
                                 size_bytes=copied.size_bytes)
    return copied, record


def _checksums(tree: Tree, folder: str, files: Sequence[TreeFile]) -> None:
    text = format_checksums((Path(f.path).name, f.sha256) for f in files)
    tree.write_text(f"{folder}/{CHECKSUMS}", text, "sha256 of every file of this folder")


def _row(name: str, record: dict, zoo: Zoo, pretrains: dict[str, Any]) -> card.Row:
    pretrain = pretrains.get(record["pretrain"]) or {}
    method = pretrain.get("method") or (zoo.pretrains[record["pretrain"]].method
                                        if record["pretrain"] in zoo.pretrains else record["pretrain"])
    return card.Row(name, record["detector"], record["schedule"], method, float(record["box_ap"]),
                    float(record["mask_ap"]), record["config"], bool(record["published"]))


# -------------------------------------------------------------------------------------------- pretrains


def _pretrain(tree: Tree, zoo: Zoo, name: str, options: Options, done: set[str]) -> None:
    if name in done:
        return
    done.add(name)
    pretrain = zoo.pretrain(name)
    files = sources.pretrain_files(pretrain)
    if not files:
        tree.notes.append(f"{name}: no pretrain file to publish ({pretrain.method})")
        return
    _, key, ref = sources.fetch_first(files, quiet=options.quiet, offline=options.offline)
    copied, record = _copied(tree, ref, key, f"pre-trained ResNet-50 as released ({ref.format})", options)
    others = [f for _, f in files if f is not ref]
    if record.urls == tree.urls(copied.path):  # the original URLs were not vouched for: keep them apart
        others.append(ref)
    listed = [card.CardFile(Path(copied.path).name, copied.size_bytes, copied.sha256, copied.what)]
    used_by = [e.name for e in zoo.entries_for_pretrain(name)]
    text = card.pretrain_card(pretrain, ref.format, used_by, listed)
    card_file = tree.write_text(f"{name}/{CARD}", text, "model card")
    _checksums(tree, name, [copied, card_file])
    tree.pretrains[name] = pretrain_record(dataclasses.replace(pretrain, file=record, alternatives=tuple(others)))
