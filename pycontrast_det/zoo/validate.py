"""Validation of one manifest's records: every field typed and checked, an error naming the file, the record and
the field. Reading files and merging them is :mod:`.loading`. No torch here."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .. import resources
from ..errors import ManifestError
from ..refs import FORMATS, FileRef, url_basename, url_problem
from .records import DETECTORS, DetectorEntry, FixValue, KnownIssue, PretrainEntry

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SCHEDULE_RE = re.compile(r"^[0-9]+x$")
_MD5_PREFIX_RE = re.compile(r"^[0-9a-f]{4,32}$")
_CONFIG_KEY_RE = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)+$")


class Ctx:
    """Where we are in a manifest, for error messages: file, entry and field."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, where: str, message: str) -> ManifestError:
        return ManifestError(f"{self.path}: {where}: {message}")


def check_keys(ctx: Ctx, where: str, data: Any, required: Sequence[str], optional: Sequence[str]) -> dict:
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


def typed(ctx: Ctx, where: str, value: Any, types: tuple, nullable: bool = False) -> Any:
    if value is None and nullable:
        return None
    if isinstance(value, bool) and bool not in types:  # YAML true is not a number
        raise ctx.error(where, f"expected {'/'.join(t.__name__ for t in types)}, got bool")
    if not isinstance(value, types):
        null = " or null" if nullable else ""
        raise ctx.error(where, f"expected {'/'.join(t.__name__ for t in types)}{null}, got {value!r}")
    return value


def _parse_url(ctx: Ctx, where: str, url: Any, base: Path) -> str:
    typed(ctx, where, url, (str,))
    problem = url_problem(url)
    if problem:
        raise ctx.error(where, problem)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url):
        return url
    path = Path(os.path.expanduser(url))
    return str(path if path.is_absolute() else (base / path).resolve())


def _parse_file(ctx: Ctx, where: str, data: Any, base: Path) -> FileRef:
    check_keys(ctx, where, data, ("urls", "sha256", "size_bytes", "format"),
                ("filename", "published_url", "md5_prefix"))
    urls = data["urls"]
    if not isinstance(urls, list) or not urls:
        raise ctx.error(f"{where}.urls", "expected a non-empty list of URLs")
    parsed_urls = tuple(_parse_url(ctx, f"{where}.urls[{i}]", u, base) for i, u in enumerate(urls))
    sha = typed(ctx, f"{where}.sha256", data["sha256"], (str,), nullable=True)
    if sha is not None and not SHA256_RE.match(sha):
        raise ctx.error(f"{where}.sha256", f"{sha!r} is not a sha256 (64 lowercase hex digits); use null if unknown")
    size = typed(ctx, f"{where}.size_bytes", data["size_bytes"], (int,), nullable=True)
    if size is not None and size <= 0:
        raise ctx.error(f"{where}.size_bytes", f"must be positive, got {size}")
    fmt = typed(ctx, f"{where}.format", data["format"], (str,))
    if fmt not in FORMATS:
        raise ctx.error(f"{where}.format", f"unknown format {fmt!r} (known: {', '.join(sorted(FORMATS))})")
    md5 = typed(ctx, f"{where}.md5_prefix", data.get("md5_prefix"), (str,), nullable=True)
    if md5 is not None and not _MD5_PREFIX_RE.match(md5):
        raise ctx.error(f"{where}.md5_prefix", f"{md5!r} is not a hex md5 prefix")
    filename = typed(ctx, f"{where}.filename", data.get("filename") or "", (str,))
    if filename and (not NAME_RE.match(filename)):
        raise ctx.error(f"{where}.filename", f"{filename!r} is not a plain file name")
    if not filename and not NAME_RE.match(url_basename(parsed_urls[0])):
        raise ctx.error(f"{where}.filename", f"cannot derive a file name from {parsed_urls[0]!r}; set filename")
    published = typed(ctx, f"{where}.published_url", data.get("published_url"), (str,), nullable=True)
    return FileRef(urls=parsed_urls, sha256=sha, size_bytes=size, format=fmt, filename=filename,
                   published_url=published, md5_prefix=md5)


def _parse_files(ctx: Ctx, where: str, data: Any, base: Path) -> tuple[FileRef, ...]:
    """A list of file records (``alternatives``), empty when absent."""
    if not isinstance(data or [], list):
        raise ctx.error(where, "expected a list of files")
    return tuple(_parse_file(ctx, f"{where}[{i}]", item, base) for i, item in enumerate(data or []))


def parse_name(ctx: Ctx, where: str, name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ctx.error(where, f"{name!r} is not a valid name (letters, digits, '_', '-', '.')")
    return name


def parse_pretrain(ctx: Ctx, name: str, data: Any, base: Path) -> PretrainEntry:
    where = f"pretrains.{name}"
    check_keys(ctx, where, data, ("method", "epochs", "imagenet_top1", "file"),
                ("alternatives", "can_init_r50", "note"))
    file_data = data["file"]
    return PretrainEntry(
        name=name,
        method=typed(ctx, f"{where}.method", data["method"], (str,)),
        epochs=typed(ctx, f"{where}.epochs", data["epochs"], (int,), nullable=True),
        imagenet_top1=_num(typed(ctx, f"{where}.imagenet_top1", data["imagenet_top1"], (int, float), nullable=True)),
        file=None if file_data is None else _parse_file(ctx, f"{where}.file", file_data, base),
        alternatives=_parse_files(ctx, f"{where}.alternatives", data.get("alternatives"), base),
        can_init_r50=typed(ctx, f"{where}.can_init_r50", data.get("can_init_r50", True), (bool,)),
        note=typed(ctx, f"{where}.note", data.get("note"), (str,), nullable=True),
        source=ctx.path,
    )


def _num(value: Optional[Union[int, float]]) -> Optional[float]:
    return None if value is None else float(value)


def _resolve_config(ctx: Ctx, where: str, config: str, base: Path) -> Path:
    path = Path(os.path.expanduser(config))
    candidates = [path] if path.is_absolute() else [base / path, resources.data_root() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ctx.error(where, f"config file {config!r} not found (looked at {tried})")


def parse_entry(ctx: Ctx, name: str, data: Any, base: Path) -> DetectorEntry:
    where = f"entries.{name}"
    check_keys(ctx, where, data, ("detector", "schedule", "pretrain", "config", "box_ap", "mask_ap",
                                   "published", "model"), ("log", "model_alternatives", "note", "config_fixes",
                                                            "known_issues"))
    detector = typed(ctx, f"{where}.detector", data["detector"], (str,))
    if detector not in DETECTORS:
        raise ctx.error(f"{where}.detector", f"{detector!r} is not one of {', '.join(DETECTORS)}")
    schedule = typed(ctx, f"{where}.schedule", data["schedule"], (str,))
    if not _SCHEDULE_RE.match(schedule):
        raise ctx.error(f"{where}.schedule", f"{schedule!r} is not a schedule like 1x, 2x, 6x")
    published = typed(ctx, f"{where}.published", data["published"], (bool,))
    model = None if data["model"] is None else _parse_file(ctx, f"{where}.model", data["model"], base)
    log = None if data.get("log") is None else _parse_file(ctx, f"{where}.log", data["log"], base)
    model_alternatives = _parse_files(ctx, f"{where}.model_alternatives", data.get("model_alternatives"), base)
    if model_alternatives and model is None:
        raise ctx.error(f"{where}.model_alternatives", "alternatives of a model that is not given (model: null)")
    note = typed(ctx, f"{where}.note", data.get("note"), (str,), nullable=True)
    if published and model is None:
        raise ctx.error(f"{where}.model", "published: true but no model file; give one or set published: false")
    if not published and (model is not None or log is not None):
        raise ctx.error(f"{where}.published", "published: false but model/log files are given")
    if not published and not note:
        raise ctx.error(f"{where}.note", "an unpublished entry needs a note saying what is (not) available")
    box_ap = typed(ctx, f"{where}.box_ap", data["box_ap"], (int, float))
    mask_ap = typed(ctx, f"{where}.mask_ap", data["mask_ap"], (int, float))
    for key, value in (("box_ap", box_ap), ("mask_ap", mask_ap)):
        if not 0 <= value <= 100:
            raise ctx.error(f"{where}.{key}", f"AP must be within 0..100, got {value}")
    config = typed(ctx, f"{where}.config", data["config"], (str,))
    return DetectorEntry(
        name=name, detector=detector, schedule=schedule,
        pretrain=parse_name(ctx, f"{where}.pretrain", data["pretrain"]),
        config=config, config_path=_resolve_config(ctx, f"{where}.config", config, base),
        box_ap=float(box_ap), mask_ap=float(mask_ap), published=published, model=model, log=log,
        model_alternatives=model_alternatives, note=note, source=ctx.path,
        config_fixes=_parse_fixes(ctx, f"{where}.config_fixes", data.get("config_fixes")),
        known_issues=_parse_issues(ctx, f"{where}.known_issues", data.get("known_issues")),
    )


def _parse_fixes(ctx: Ctx, where: str, data: Any) -> tuple[tuple[str, FixValue], ...]:
    """``config_fixes``: a mapping of dotted config KEY -> value (a scalar or a list of scalars)."""
    if data is None:
        return ()
    if not isinstance(data, dict) or not data:
        raise ctx.error(where, "expected a mapping of config KEY: value (e.g. INPUT.FORMAT: RGB)")
    fixes: list[tuple[str, FixValue]] = []
    for key, value in data.items():
        if not isinstance(key, str) or not _CONFIG_KEY_RE.match(key):
            raise ctx.error(where, f"{key!r} is not a dotted config key like INPUT.FORMAT")
        if isinstance(value, list) and value and all(_is_scalar(v) for v in value):
            fixes.append((key, tuple(value)))
        elif _is_scalar(value):
            fixes.append((key, value))
        else:
            raise ctx.error(f"{where}.{key}", f"expected a value or a list of values, got {value!r}")
    return tuple(fixes)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def _parse_issues(ctx: Ctx, where: str, data: Any) -> tuple[KnownIssue, ...]:
    """``known_issues``: a list of {text, url}; the URL says where the issue is established."""
    if data is None:
        return ()
    if not isinstance(data, list) or not data:
        raise ctx.error(where, "expected a list of {text, url}")
    issues = []
    for i, item in enumerate(data):
        check_keys(ctx, f"{where}[{i}]", item, ("text", "url"), ())
        text = typed(ctx, f"{where}[{i}].text", item["text"], (str,)).strip()
        url = typed(ctx, f"{where}[{i}].url", item["url"], (str,))
        if not text or "\n" in text:
            raise ctx.error(f"{where}[{i}].text", "expected one non-empty line")
        if not re.match(r"^https?://", url) or url_problem(url):
            raise ctx.error(f"{where}[{i}].url", f"{url!r} is not an http(s) URL")
        issues.append(KnownIssue(text=text, url=url))
    return tuple(issues)
