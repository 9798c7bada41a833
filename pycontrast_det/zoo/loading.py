"""Reading manifests: the shipped ``zoo.yaml`` and user manifests, validated, merged and cached; queries over the
result. No torch here.

Which manifests are read (``load_manifest``):

1. the shipped ``zoo.yaml`` (``resources.manifest_path()``) is always the base;
2. then each user manifest in order: ``paths`` if given (CLI ``--manifest``, repeatable, which every command passes
   on through :func:`manifests_in_use`), otherwise
   ``PYCONTRAST_ZOO_MANIFEST`` (``os.pathsep``-separated). A user manifest with ``merge: true`` merges over
   what was loaded so far, entry by entry and pretrain by pretrain (a name it defines replaces the whole
   record of that name; other names are kept); a manifest without ``merge: true`` replaces everything loaded
   so far.

A detector entry without a published training log may omit ``log`` (or write ``log: null``). A detector entry's
``model_alternatives`` are other sources of the same detector in other bytes (the original
``.pth`` of a converted ``model.safetensors``), each with its own checksum: every URL of one file record
serves exactly the bytes of its ``sha256``, never another file's. ``config_fixes`` (config KEY: value) are applied
by every use of the entry on top of its config; ``known_issues`` ({text, url}) are shown wherever it is.

Cross references (an entry's pretrain, its config file) are checked after merging. A relative config path
resolves against the folder of the manifest that names it, else against the shipped data root.
"""
from __future__ import annotations

import contextlib
import difflib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Optional, Sequence, Union

import yaml

from .. import resources, settings
from ..errors import ManifestError, UnknownEntryError, yaml_problem
from .records import DETECTORS, SCHEMA_VERSION, DetectorEntry, PretrainEntry, Zoo, unknown_message
from .validate import Ctx, check_keys, parse_entry, parse_name, parse_pretrain, typed

ENV_MANIFEST = settings.MANIFEST


@dataclass
class Layer:
    """One parsed manifest file before merging."""

    path: Path
    merge: bool
    entries: dict[str, DetectorEntry]
    pretrains: dict[str, PretrainEntry]


def read_layer(path: Path) -> Layer:
    ctx = Ctx(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read manifest: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: plain data only
    except _DuplicateKey as dup:
        raise ctx.error(f"line {dup.second}", f"{dup.key!r} defined twice (first at line {dup.first})") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{yaml_problem(path, exc)} (not valid YAML)") from None
    if data is None or data == {}:
        raise ManifestError(f"{path}: the manifest is empty; a manifest holds schema_version: {SCHEMA_VERSION}, "
                            "'merge: true' to add to the shipped zoo, and 'pretrains:' / 'entries:' records laid out "
                            "as in the shipped zoo.yaml")
    check_keys(ctx, "top level", data, ("schema_version",),
                ("merge", "entries", "pretrains"))
    version = data["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ctx.error("schema_version", f"expected a positive integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise ctx.error("schema_version", f"version {version} is newer than this pycontrast-det supports "
                                          f"({SCHEMA_VERSION}); upgrade pycontrast-det")
    merge = typed(ctx, "merge", data.get("merge", False), (bool,))
    base = path.parent
    pretrains = {name: parse_pretrain(ctx, name, record, base) for name, record in _section(ctx, data, "pretrains")}
    entries = {name: parse_entry(ctx, name, record, base) for name, record in _section(ctx, data, "entries")}
    return Layer(path, merge, entries, pretrains)


def _section(ctx: Ctx, data: dict, section: str) -> list[tuple[str, Any]]:
    """(checked name, record) pairs of a manifest section."""
    block = data.get(section) or {}
    if not isinstance(block, dict):
        raise ctx.error(section, "expected a mapping of name -> record")
    return [(parse_name(ctx, f"{section}.{name}", name), record) for name, record in block.items()]


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate mapping keys (plain YAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(key, first, second)
        self.key, self.first, self.second = key, first, second


def _check_references(zoo: Zoo) -> None:
    for entry in zoo.entries.values():
        if entry.pretrain not in zoo.pretrains:
            ctx = Ctx(entry.source)
            close = difflib.get_close_matches(entry.pretrain, list(zoo.pretrains), n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ctx.error(f"entries.{entry.name}.pretrain",
                            f"refers to unknown pretrain {entry.pretrain!r}{hint}")


def _manifest_paths(paths: Optional[Sequence[Union[str, os.PathLike]]]) -> tuple[Path, ...]:
    if paths is None:
        paths = settings.manifest_paths()
    return tuple(Path(os.path.expanduser(str(p))).resolve() for p in paths)


@contextlib.contextmanager
def manifests_in_use(paths: Optional[Sequence[Union[str, os.PathLike]]]) -> Iterator[None]:
    """Within the block, ``paths`` (absolute) are the user manifests of every :func:`load_manifest` call, in this
    process and in the processes it starts (through $PYCONTRAST_ZOO_MANIFEST); None changes nothing."""
    if paths is None:
        yield
        return
    resolved = _manifest_paths(paths)
    bad = [str(p) for p in resolved if os.pathsep in str(p)]
    if bad:
        raise ManifestError(f"--manifest {bad[0]}: a path containing {os.pathsep!r} cannot be passed on to the "
                            f"processes a command starts; move or link the manifest to a path without it")
    before = os.environ.get(ENV_MANIFEST)
    os.environ[ENV_MANIFEST] = os.pathsep.join(str(p) for p in resolved)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_MANIFEST, None)
        else:
            os.environ[ENV_MANIFEST] = before


def load_manifest(paths: Optional[Sequence[Union[str, os.PathLike]]] = None) -> Zoo:
    """Load and validate the shipped zoo.yaml plus user manifests (``paths`` or $PYCONTRAST_ZOO_MANIFEST).

    See the module docstring for the replace / ``merge: true`` rule. Raises ManifestError naming the file,
    entry and field of the first problem found.
    """
    user = _manifest_paths(paths)
    stamps = tuple((p, _mtime(p)) for p in (resources.manifest_path(),) + user)
    return _load_cached(stamps)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


@lru_cache(maxsize=8)
def _load_cached(stamps: tuple[tuple[Path, float], ...]) -> Zoo:
    entries: dict[str, DetectorEntry] = {}
    pretrains: dict[str, PretrainEntry] = {}
    sources: list[Path] = []
    for path, _ in stamps:
        layer = read_layer(path)
        if not layer.merge:
            entries, pretrains, sources = {}, {}, []
        entries.update(layer.entries)
        pretrains.update(layer.pretrains)
        sources.append(path)
    zoo = Zoo(entries=MappingProxyType(entries), pretrains=MappingProxyType(pretrains), sources=tuple(sources))
    _check_references(zoo)
    return zoo


# ----------------------------------------------------------------------------------------------- queries


def list_entries(detector: Optional[str] = None, schedule: Optional[str] = None, pretrain: Optional[str] = None,
                 min_box_ap: Optional[float] = None, zoo: Optional[Zoo] = None) -> list[DetectorEntry]:
    """Detector entries in manifest order, filtered by detector (fpn|c4), schedule, pretrain and box AP."""
    zoo = zoo or load_manifest()
    if detector is not None and detector not in DETECTORS:
        raise UnknownEntryError(f"{unknown_message('detector', detector, DETECTORS)} Known detectors: fpn, c4")
    if pretrain is not None:
        zoo.pretrain(pretrain)  # raises with a suggestion on a typo
    return [e for e in zoo.entries.values()
            if (detector is None or e.detector == detector)
            and (schedule is None or e.schedule == schedule)
            and (pretrain is None or e.pretrain == pretrain)
            and (min_box_ap is None or e.box_ap >= min_box_ap)]


def get_entry(name: str, zoo: Optional[Zoo] = None) -> DetectorEntry:
    """The detector entry ``name`` (e.g. ``mask_rcnn_fpn_2x_infomin``); UnknownEntryError suggests close names."""
    return (zoo or load_manifest()).entry(name)


def get_pretrain(name: str, zoo: Optional[Zoo] = None) -> PretrainEntry:
    """The pretrain ``name`` (e.g. ``infomin``); UnknownEntryError suggests close names."""
    return (zoo or load_manifest()).pretrain(name)


def forget_loaded() -> None:
    """Drop the cached manifests, so the next :func:`load_manifest` reads the files again (after an edit)."""
    _load_cached.cache_clear()
