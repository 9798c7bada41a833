"""The model-zoo manifest (zoo.yaml): typed, validated records and queries over them. No torch here.

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
serves exactly the bytes of its ``sha256``, never another file's.

Cross references (an entry's pretrain, its config file) are checked after merging. A relative config path
resolves against the folder of the manifest that names it, else against the shipped data root.
"""
from __future__ import annotations

import contextlib
import difflib
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union
from urllib.parse import urlparse

import yaml

from . import atomic, resources, settings
from .errors import ManifestError, UnknownEntryError

__all__ = [
    "FileRef", "PretrainEntry", "DetectorEntry", "Zoo", "load_manifest", "list_entries", "get_entry",
    "get_pretrain", "render_table", "update_manifest_checksums", "update_manifest_files", "url_basename", "url_problem",
    "file_record", "entry_record", "pretrain_record", "dump_manifest", "SCHEMA_VERSION", "FORMATS", "ENV_MANIFEST",
    "TABLE_START", "TABLE_END", "manifests_in_use",
]

SCHEMA_VERSION = 1
ENV_MANIFEST = settings.MANIFEST
#: Markers around the generated results table in README.md.
TABLE_START = "<!-- zoo-table:start -->"
TABLE_END = "<!-- zoo-table:end -->"

#: Known file formats: the rows and aliases of checkpoints/formats.py (names only: zoo is torch-free and below
#: checkpoints; tests/test_weights.py keeps the two equal), plus text logs.
FORMATS = frozenset({"pycontrast", "pycontrast_cmc", "moco", "msra_c2", "torchvision", "detectron2",
                     "detectron2_pkl", "safetensors", "text"})
DETECTORS = ("fpn", "c4")
URL_SCHEMES = ("http", "https", "hf", "file")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SCHEDULE_RE = re.compile(r"^[0-9]+x$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MD5_PREFIX_RE = re.compile(r"^[0-9a-f]{4,32}$")


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


@dataclass(frozen=True)
class PretrainEntry:
    """A pre-trained ResNet-50 encoder (or 'rand'): its file, alternatives and ImageNet linear accuracy."""

    name: str
    method: str
    epochs: Optional[int]
    imagenet_top1: Optional[float]
    file: Optional[FileRef]
    alternatives: tuple[FileRef, ...] = ()
    can_init_r50: bool = True
    note: Optional[str] = None
    source: Optional[Path] = None  # the manifest file that defined it


@dataclass(frozen=True)
class DetectorEntry:
    """A Mask R-CNN row of the table: detector, schedule, pretrain, config, reported AP and its files."""

    name: str
    detector: str
    schedule: str
    pretrain: str
    config: str                  # as written in the manifest
    config_path: Path            # resolved, existing file
    box_ap: float
    mask_ap: float
    published: bool
    model: Optional[FileRef]
    log: Optional[FileRef]
    model_alternatives: tuple[FileRef, ...] = ()  # the same detector in other bytes (e.g. the original .pth)
    note: Optional[str] = None
    source: Optional[Path] = None  # the manifest file that defined it


@dataclass(frozen=True, eq=False)
class Zoo:
    """A loaded manifest: detector entries and pretrains by name (read-only, in manifest order) and the files
    they came from. Loaded manifests are cached (keyed by path and mtime), so never mutate one."""

    entries: Mapping[str, DetectorEntry]
    pretrains: Mapping[str, PretrainEntry]
    sources: tuple[Path, ...] = field(default=())
    schema_version: int = SCHEMA_VERSION

    def entry(self, name: str) -> DetectorEntry:
        """The detector entry called ``name``; UnknownEntryError with close matches otherwise."""
        try:
            return self.entries[name]
        except KeyError:
            raise UnknownEntryError(f"{_unknown('detector entry', name, self.entries)} "
                                    f"(`pycontrast-zoo list` shows all)") from None

    def pretrain(self, name: str) -> PretrainEntry:
        """The pretrain called ``name``; UnknownEntryError with close matches otherwise."""
        try:
            return self.pretrains[name]
        except KeyError:
            known = ", ".join(self.pretrains)
            raise UnknownEntryError(f"{_unknown('pretrain', name, self.pretrains)} Known pretrains: {known}") from None

    def entries_for_pretrain(self, name: str) -> list[DetectorEntry]:
        """Detector entries fine-tuned from pretrain ``name`` (the pretrain -> downstream link)."""
        return [e for e in self.entries.values() if e.pretrain == name]


def _unknown(kind: str, name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"unknown {kind} {name!r}.{hint}"


def url_basename(url: str) -> str:
    """The last path component of a URL or local path (query dropped)."""
    path = urlparse(url).path if "://" in url else url
    return path.rstrip("/").rsplit("/", 1)[-1] or "file"


# ----------------------------------------------------------------------------------------------- parsing


class _Ctx:
    """Where we are in a manifest, for error messages: file, entry and field."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, where: str, message: str) -> ManifestError:
        return ManifestError(f"{self.path}: {where}: {message}")


def _check_keys(ctx: _Ctx, where: str, data: Any, required: Sequence[str], optional: Sequence[str]) -> dict:
    if not isinstance(data, dict):
        raise ctx.error(where, f"expected a mapping, got {type(data).__name__}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ctx.error(where, f"missing field(s) {', '.join(missing)}")
    unknown = [k for k in data if k not in required and k not in optional]
    if unknown:
        allowed = ", ".join(list(required) + list(optional))
        raise ctx.error(where, f"unknown field(s) {', '.join(map(str, unknown))} (allowed: {allowed})")
    return data


def _typed(ctx: _Ctx, where: str, value: Any, types: tuple, nullable: bool = False) -> Any:
    if value is None and nullable:
        return None
    if isinstance(value, bool) and bool not in types:  # YAML true is not a number
        raise ctx.error(where, f"expected {'/'.join(t.__name__ for t in types)}, got bool")
    if not isinstance(value, types):
        null = " or null" if nullable else ""
        raise ctx.error(where, f"expected {'/'.join(t.__name__ for t in types)}{null}, got {value!r}")
    return value


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
            return f"URL scheme {parsed.scheme!r} not supported in {url!r} (use {', '.join(URL_SCHEMES)} or a local path)"
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


def _parse_url(ctx: _Ctx, where: str, url: Any, base: Path) -> str:
    _typed(ctx, where, url, (str,))
    problem = url_problem(url)
    if problem:
        raise ctx.error(where, problem)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url):
        return url
    path = Path(os.path.expanduser(url))
    return str(path if path.is_absolute() else (base / path).resolve())


def _parse_file(ctx: _Ctx, where: str, data: Any, base: Path) -> FileRef:
    _check_keys(ctx, where, data, ("urls", "sha256", "size_bytes", "format"),
                ("filename", "published_url", "md5_prefix"))
    urls = data["urls"]
    if not isinstance(urls, list) or not urls:
        raise ctx.error(f"{where}.urls", "expected a non-empty list of URLs")
    parsed_urls = tuple(_parse_url(ctx, f"{where}.urls[{i}]", u, base) for i, u in enumerate(urls))
    sha = _typed(ctx, f"{where}.sha256", data["sha256"], (str,), nullable=True)
    if sha is not None and not _SHA256_RE.match(sha):
        raise ctx.error(f"{where}.sha256", f"{sha!r} is not a sha256 (64 lowercase hex digits); use null if unknown")
    size = _typed(ctx, f"{where}.size_bytes", data["size_bytes"], (int,), nullable=True)
    if size is not None and size <= 0:
        raise ctx.error(f"{where}.size_bytes", f"must be positive, got {size}")
    fmt = _typed(ctx, f"{where}.format", data["format"], (str,))
    if fmt not in FORMATS:
        raise ctx.error(f"{where}.format", f"unknown format {fmt!r} (known: {', '.join(sorted(FORMATS))})")
    md5 = _typed(ctx, f"{where}.md5_prefix", data.get("md5_prefix"), (str,), nullable=True)
    if md5 is not None and not _MD5_PREFIX_RE.match(md5):
        raise ctx.error(f"{where}.md5_prefix", f"{md5!r} is not a hex md5 prefix")
    filename = _typed(ctx, f"{where}.filename", data.get("filename") or "", (str,))
    if filename and (not _NAME_RE.match(filename)):
        raise ctx.error(f"{where}.filename", f"{filename!r} is not a plain file name")
    if not filename and not _NAME_RE.match(url_basename(parsed_urls[0])):
        raise ctx.error(f"{where}.filename", f"cannot derive a file name from {parsed_urls[0]!r}; set filename")
    published = _typed(ctx, f"{where}.published_url", data.get("published_url"), (str,), nullable=True)
    return FileRef(urls=parsed_urls, sha256=sha, size_bytes=size, format=fmt, filename=filename,
                   published_url=published, md5_prefix=md5)


def _parse_files(ctx: _Ctx, where: str, data: Any, base: Path) -> tuple[FileRef, ...]:
    """A list of file records (``alternatives``), empty when absent."""
    if not isinstance(data or [], list):
        raise ctx.error(where, "expected a list of files")
    return tuple(_parse_file(ctx, f"{where}[{i}]", item, base) for i, item in enumerate(data or []))


def _parse_name(ctx: _Ctx, where: str, name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ctx.error(where, f"{name!r} is not a valid name (letters, digits, '_', '-', '.')")
    return name


def _parse_pretrain(ctx: _Ctx, name: str, data: Any, base: Path) -> PretrainEntry:
    where = f"pretrains.{name}"
    _check_keys(ctx, where, data, ("method", "epochs", "imagenet_top1", "file"),
                ("alternatives", "can_init_r50", "note"))
    file_data = data["file"]
    return PretrainEntry(
        name=name,
        method=_typed(ctx, f"{where}.method", data["method"], (str,)),
        epochs=_typed(ctx, f"{where}.epochs", data["epochs"], (int,), nullable=True),
        imagenet_top1=_num(_typed(ctx, f"{where}.imagenet_top1", data["imagenet_top1"], (int, float), nullable=True)),
        file=None if file_data is None else _parse_file(ctx, f"{where}.file", file_data, base),
        alternatives=_parse_files(ctx, f"{where}.alternatives", data.get("alternatives"), base),
        can_init_r50=_typed(ctx, f"{where}.can_init_r50", data.get("can_init_r50", True), (bool,)),
        note=_typed(ctx, f"{where}.note", data.get("note"), (str,), nullable=True),
        source=ctx.path,
    )


def _num(value: Optional[Union[int, float]]) -> Optional[float]:
    return None if value is None else float(value)


def _resolve_config(ctx: _Ctx, where: str, config: str, base: Path) -> Path:
    path = Path(os.path.expanduser(config))
    candidates = [path] if path.is_absolute() else [base / path, resources.data_root() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ctx.error(where, f"config file {config!r} not found (looked at {tried})")


def _parse_entry(ctx: _Ctx, name: str, data: Any, base: Path) -> DetectorEntry:
    where = f"entries.{name}"
    _check_keys(ctx, where, data, ("detector", "schedule", "pretrain", "config", "box_ap", "mask_ap",
                                   "published", "model"), ("log", "model_alternatives", "note"))
    detector = _typed(ctx, f"{where}.detector", data["detector"], (str,))
    if detector not in DETECTORS:
        raise ctx.error(f"{where}.detector", f"{detector!r} is not one of {', '.join(DETECTORS)}")
    schedule = _typed(ctx, f"{where}.schedule", data["schedule"], (str,))
    if not _SCHEDULE_RE.match(schedule):
        raise ctx.error(f"{where}.schedule", f"{schedule!r} is not a schedule like 1x, 2x, 6x")
    published = _typed(ctx, f"{where}.published", data["published"], (bool,))
    model = None if data["model"] is None else _parse_file(ctx, f"{where}.model", data["model"], base)
    log = None if data.get("log") is None else _parse_file(ctx, f"{where}.log", data["log"], base)
    model_alternatives = _parse_files(ctx, f"{where}.model_alternatives", data.get("model_alternatives"), base)
    if model_alternatives and model is None:
        raise ctx.error(f"{where}.model_alternatives", "alternatives of a model that is not given (model: null)")
    note = _typed(ctx, f"{where}.note", data.get("note"), (str,), nullable=True)
    if published and model is None:
        raise ctx.error(f"{where}.model", "published: true but no model file; give one or set published: false")
    if not published and (model is not None or log is not None):
        raise ctx.error(f"{where}.published", "published: false but model/log files are given")
    if not published and not note:
        raise ctx.error(f"{where}.note", "an unpublished entry needs a note saying what is (not) available")
    box_ap = _typed(ctx, f"{where}.box_ap", data["box_ap"], (int, float))
    mask_ap = _typed(ctx, f"{where}.mask_ap", data["mask_ap"], (int, float))
    for key, value in (("box_ap", box_ap), ("mask_ap", mask_ap)):
        if not 0 <= value <= 100:
            raise ctx.error(f"{where}.{key}", f"AP must be within 0..100, got {value}")
    config = _typed(ctx, f"{where}.config", data["config"], (str,))
    return DetectorEntry(
        name=name, detector=detector, schedule=schedule,
        pretrain=_parse_name(ctx, f"{where}.pretrain", data["pretrain"]),
        config=config, config_path=_resolve_config(ctx, f"{where}.config", config, base),
        box_ap=float(box_ap), mask_ap=float(mask_ap), published=published, model=model, log=log,
        model_alternatives=model_alternatives, note=note, source=ctx.path,
    )


@dataclass
class _Layer:
    """One parsed manifest file before merging."""

    path: Path
    merge: bool
    entries: dict[str, DetectorEntry]
    pretrains: dict[str, PretrainEntry]


def _read_layer(path: Path) -> _Layer:
    ctx = _Ctx(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read manifest: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: plain data only
    except _DuplicateKey as dup:
        raise ctx.error(f"line {dup.second}", f"{dup.key!r} defined twice (first at line {dup.first})") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from None
    _check_keys(ctx, "top level", data if data is not None else {}, ("schema_version",),
                ("merge", "entries", "pretrains"))
    version = data["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ctx.error("schema_version", f"expected a positive integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise ctx.error("schema_version", f"version {version} is newer than this pycontrast-det supports "
                                          f"({SCHEMA_VERSION}); upgrade pycontrast-det")
    merge = _typed(ctx, "merge", data.get("merge", False), (bool,))
    base = path.parent
    layer = _Layer(path, merge, {}, {})
    for section, parse, target in (("pretrains", _parse_pretrain, layer.pretrains),
                                   ("entries", _parse_entry, layer.entries)):
        block = data.get(section) or {}
        if not isinstance(block, dict):
            raise ctx.error(section, "expected a mapping of name -> record")
        for name, record in block.items():
            target[_parse_name(ctx, f"{section}.{name}", name)] = parse(ctx, name, record, base)
    return layer


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
            ctx = _Ctx(entry.source or Path("?"))
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
        layer = _read_layer(path)
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
        raise UnknownEntryError(f"{_unknown('detector', detector, DETECTORS)} Known detectors: fpn, c4")
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


def render_table(zoo: Optional[Zoo] = None) -> str:
    """The README results table (markdown) generated from the manifest, one row per detector entry."""
    zoo = zoo or load_manifest()
    lines = ["| entry | detector | sched | pretrain | box AP | mask AP | config | model | log |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in zoo.entries.values():
        pre = zoo.pretrains[e.pretrain]
        lines.append(f"| `{e.name}` | {e.detector.upper()} | {e.schedule} | {pre.method} | {e.box_ap:.1f} | "
                     f"{e.mask_ap:.1f} | [{Path(e.config).stem}]({e.config}) | {_link(e.model, 'model')} | "
                     f"{_link(e.log, 'log')} |")
    return "\n".join(lines) + "\n"


def _link(file: Optional[FileRef], label: str) -> str:
    if file is None:
        return "not published"
    return f"[{label}]({file.published_url or file.urls[0]})"


# ------------------------------------------------------------------------------------- manifest editing


def _locate(lines: list[str], keys: Sequence[str], path: Path) -> tuple[int, int, int]:
    """(line of the last key, first and end line of its block) for nested ``keys`` (section, name, field...)."""
    start, end, idx = 0, len(lines), -1
    for depth, key in enumerate(keys):
        found = _find_key(lines, start, end, key)
        if found is None:
            raise ManifestError(f"{path}: {'.'.join(keys[:depth + 1])}: not found as a block (cannot edit this "
                                f"manifest in place)")
        idx, start, end = found, found + 1, _block_end(lines, found, end)
    return idx, start, end


def update_manifest_checksums(path: Union[str, os.PathLike],
                              updates: Mapping[tuple[str, str, str], tuple[str, int]]) -> None:
    """Write sha256 and size_bytes into a manifest file in place, keeping its comments and layout.

    ``updates`` maps (section, name, role) -> (sha256, size_bytes), section ``entries`` (role ``model`` or
    ``log``) or ``pretrains`` (role ``file``). The edit is line-based; the file is re-read afterwards to
    check every value landed, and is left unchanged if not.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for (section, name, role), (sha, size) in updates.items():
        if not _SHA256_RE.match(sha):
            raise ManifestError(f"{path}: {section}.{name}.{role}: refusing to write malformed sha256 {sha!r}")
        _, start, end = _locate(lines, (section, name, role), path)
        for key, value in (("sha256", sha), ("size_bytes", str(int(size)))):
            idx = _find_key(lines, start, end, key)
            if idx is None:
                raise ManifestError(f"{path}: {section}.{name}.{role}: no '{key}:' line to update")
            indent = lines[idx][:len(lines[idx]) - len(lines[idx].lstrip())]
            lines[idx] = f"{indent}{key}: {value}\n"

    def check(layer: "_Layer") -> None:
        for (section, name, role), (sha, size) in updates.items():
            record = getattr(layer, section)[name]
            file = getattr(record, "file" if role == "file" else role)
            if file is None or file.sha256 != sha or file.size_bytes != int(size):
                raise ManifestError(f"{path}: {section}.{name}.{role}: edit did not take effect; file unchanged")
    _write_checked(path, lines, check)


#: The file fields of each section that :func:`update_manifest_files` can replace, with the field a missing
#: one is inserted after.
FILE_FIELDS = {"entries": {"model": None, "model_alternatives": "model", "log": None},
               "pretrains": {"file": None, "alternatives": "file"}}

FileValue = Union[None, FileRef, tuple[FileRef, ...]]


def update_manifest_files(path: Union[str, os.PathLike], updates: Mapping[tuple[str, str], Mapping[str, FileValue]]
                          ) -> None:
    """Replace file records of a manifest in place (URLs, checksums, format, alternatives), keeping its comments
    and the rest of its layout.

    ``updates`` maps (section, name) -> {field: value}; fields per section in :data:`FILE_FIELDS`; a value is a
    FileRef, None (``null``) or a tuple of FileRefs (an empty one removes the field). URLs are written as given:
    give absolute URLs (a relative path would resolve against this manifest's folder). The file is re-read
    afterwards and left unchanged unless every value landed.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for (section, name), fields in updates.items():
        for field_name, value in fields.items():
            if field_name not in FILE_FIELDS.get(section, {}):
                raise ManifestError(f"{path}: {section}.{name}.{field_name}: not a file field of {section}")
            _, rec_start, rec_end = _locate(lines, (section, name), path)
            col = min(_indent(lines[i]) for i in range(rec_start, rec_end) if _is_content(lines[i]))
            idx = _find_key(lines, rec_start, rec_end, field_name)
            new = [] if value == () else _field_lines(field_name, value, col)
            if idx is not None:
                lines[idx:_content_end(lines, idx, rec_end)] = new
                continue
            anchor = FILE_FIELDS[section][field_name]
            at = _find_key(lines, rec_start, rec_end, anchor) if anchor else None
            pos = _content_end(lines, rec_start - 1 if at is None else at, rec_end)  # after the anchor, else the record
            lines[pos:pos] = new

    def check(layer: "_Layer") -> None:
        for (section, name), fields in updates.items():
            record = getattr(layer, section)[name]
            for field_name, value in fields.items():
                got = getattr(record, field_name)
                if got != value:
                    raise ManifestError(f"{path}: {section}.{name}.{field_name}: edit did not take effect "
                                        f"(read back {got!r}); file unchanged")
    _write_checked(path, lines, check)


def _write_checked(path: Path, lines: list[str], check: Any) -> None:
    """Write ``lines`` to ``path`` atomically once ``check`` accepted the manifest they make; else leave it."""
    text = "".join(lines)
    with atomic.atomic_path(path, elsewhere="copy the manifest somewhere writable and pass it with --manifest") as tmp:
        tmp.write_text(text, encoding="utf-8")
        check(_read_layer(tmp))
    _load_cached.cache_clear()


def _content_end(lines: list[str], idx: int, end: int) -> int:
    """The line after the last content line of the block of ``lines[idx]`` (trailing blank lines and comments
    belong to what follows)."""
    j = _block_end(lines, idx, end)
    while j > idx + 1 and not _is_content(lines[j - 1]):
        j -= 1
    return j


def _field_lines(name: str, value: FileValue, col: int) -> list[str]:
    """``name: value`` as block YAML lines indented by ``col``."""
    if isinstance(value, tuple):
        data: Any = [file_record(f) for f in value]
    else:
        data = None if value is None else file_record(value)
    text = _dump({name: data})
    return [" " * col + line + "\n" for line in text.splitlines()]


# ------------------------------------------------------------------------------------- manifest writing


class _BlockDumper(yaml.SafeDumper):
    """Block-style YAML with list items indented under their key, as zoo.yaml is written."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False, width=1000,
                     allow_unicode=True)


def file_record(file: FileRef) -> dict:
    """A FileRef as a manifest writes it (the inverse of parsing; URLs and paths as they are)."""
    out: dict[str, Any] = {"urls": list(file.urls)}
    if file.published_url:
        out["published_url"] = file.published_url
    out["sha256"] = file.sha256
    if file.md5_prefix:
        out["md5_prefix"] = file.md5_prefix
    out["size_bytes"] = file.size_bytes
    out["format"] = file.format
    if file.filename != url_basename(file.urls[0]):
        out["filename"] = file.filename
    return out


def entry_record(entry: DetectorEntry) -> dict:
    """A detector entry as a manifest writes it (``config`` as it was written)."""
    out: dict[str, Any] = {"detector": entry.detector, "schedule": entry.schedule, "pretrain": entry.pretrain,
                           "config": entry.config, "box_ap": entry.box_ap, "mask_ap": entry.mask_ap,
                           "published": entry.published}
    if entry.note:
        out["note"] = entry.note
    out["model"] = None if entry.model is None else file_record(entry.model)
    if entry.model_alternatives:
        out["model_alternatives"] = [file_record(f) for f in entry.model_alternatives]
    out["log"] = None if entry.log is None else file_record(entry.log)
    return out


def pretrain_record(pretrain: PretrainEntry) -> dict:
    """A pretrain as a manifest writes it."""
    out: dict[str, Any] = {"method": pretrain.method, "epochs": pretrain.epochs,
                           "imagenet_top1": pretrain.imagenet_top1}
    if not pretrain.can_init_r50:
        out["can_init_r50"] = False
    out["file"] = None if pretrain.file is None else file_record(pretrain.file)
    if pretrain.alternatives:
        out["alternatives"] = [file_record(f) for f in pretrain.alternatives]
    if pretrain.note:
        out["note"] = pretrain.note
    return out


def dump_manifest(entries: Mapping[str, dict], pretrains: Mapping[str, dict], *, merge: bool = True,
                  comment: str = "") -> str:
    """A manifest's text from records (:func:`entry_record`, :func:`pretrain_record`), ``comment`` lines first."""
    body: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    if merge:
        body["merge"] = True
    if pretrains:
        body["pretrains"] = dict(pretrains)
    if entries:
        body["entries"] = dict(entries)
    head = "".join(f"# {line}".rstrip() + "\n" for line in comment.splitlines())
    return head + _dump(body)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _is_content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _block_end(lines: list[str], idx: int, end: int) -> int:
    """The line after the last line nested under ``lines[idx]`` (a ``key:`` line)."""
    j = idx + 1
    while j < end and (not _is_content(lines[j]) or _indent(lines[j]) > _indent(lines[idx])):
        j += 1
    return j


def _find_key(lines: list[str], start: int, end: int, key: str) -> Optional[int]:
    """The line of ``key:`` among the least-indented content lines of [start, end) (the block's children)."""
    content = [i for i in range(start, end) if _is_content(lines[i])]
    if not content:
        return None
    col = min(_indent(lines[i]) for i in content)
    for i in content:
        m = re.match(r"^([^\s#:][^:]*):(\s|$)", lines[i][col:])
        if _indent(lines[i]) == col and m and m.group(1).strip().strip("'\"") == key:
            return i
    return None
