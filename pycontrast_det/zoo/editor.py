"""Editing a manifest in place: checksums, file records and config fixes written into the YAML text, keeping its
comments and layout; the result is read back and the file left unchanged unless every value landed. No torch."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from .. import atomic
from ..errors import ManifestError
from ..refs import FileRef
from .dump import dump_yaml, file_record
from .loading import Layer, forget_loaded, read_layer
from .records import FixValue
from .validate import SHA256_RE


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
        if not SHA256_RE.match(sha):
            raise ManifestError(f"{path}: {section}.{name}.{role}: refusing to write malformed sha256 {sha!r}")
        _, start, end = _locate(lines, (section, name, role), path)
        for key, value in (("sha256", sha), ("size_bytes", str(int(size)))):
            idx = _find_key(lines, start, end, key)
            if idx is None:
                raise ManifestError(f"{path}: {section}.{name}.{role}: no '{key}:' line to update")
            indent = lines[idx][:len(lines[idx]) - len(lines[idx].lstrip())]
            lines[idx] = f"{indent}{key}: {value}\n"

    def check(layer: Layer) -> None:
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
            _set_field(lines, path, (section, name), field_name, _file_data(value), FILE_FIELDS[section][field_name],
                       remove=value == ())

    def check(layer: Layer) -> None:
        for (section, name), fields in updates.items():
            record = getattr(layer, section)[name]
            for field_name, value in fields.items():
                got = getattr(record, field_name)
                if got != value:
                    raise ManifestError(f"{path}: {section}.{name}.{field_name}: edit did not take effect "
                                        f"(read back {got!r}); file unchanged")
    _write_checked(path, lines, check)


def _write_checked(path: Path, lines: list[str], check: Callable[[Layer], None]) -> None:
    """Write ``lines`` to ``path`` atomically once ``check`` accepted the manifest they make; else leave it."""
    text = "".join(lines)
    with atomic.atomic_path(path, elsewhere="copy the manifest somewhere writable and pass it with --manifest") as tmp:
        tmp.write_text(text, encoding="utf-8")
        check(read_layer(tmp))
    forget_loaded()


def _content_end(lines: list[str], idx: int, end: int) -> int:
    """The line after the last content line of the block of ``lines[idx]`` (trailing blank lines and comments
    belong to what follows)."""
    j = _block_end(lines, idx, end)
    while j > idx + 1 and not _is_content(lines[j - 1]):
        j -= 1
    return j


def _file_data(value: FileValue) -> Any:
    """A file field's value as manifest data."""
    if isinstance(value, tuple):
        return [file_record(f) for f in value]
    return None if value is None else file_record(value)


def _set_field(lines: list[str], path: Path, record: tuple[str, str], field_name: str, data: Any,
               anchor: Optional[str], remove: bool = False) -> None:
    """Write ``field_name: data`` into the block of ``record`` (section, name): replacing the field where it is,
    else after the field ``anchor`` (else at the record's end); ``remove`` deletes it instead."""
    _, rec_start, rec_end = _locate(lines, record, path)
    col = min(_indent(lines[i]) for i in range(rec_start, rec_end) if _is_content(lines[i]))
    idx = _find_key(lines, rec_start, rec_end, field_name)
    new = [] if remove else [" " * col + line + "\n" for line in dump_yaml({field_name: data}).splitlines()]
    if idx is not None:
        lines[idx:_content_end(lines, idx, rec_end)] = new
        return
    at = _find_key(lines, rec_start, rec_end, anchor) if anchor else None
    pos = _content_end(lines, rec_start - 1 if at is None else at, rec_end)  # after the anchor, else the record
    lines[pos:pos] = new


def update_manifest_fixes(path: Union[str, os.PathLike],
                          updates: Mapping[str, Sequence[tuple[str, FixValue]]]) -> None:
    """Add config fixes to detector entries of a manifest in place: ``updates`` maps entry name -> (KEY, value)
    pairs, merged over the entry's ``config_fixes`` (a KEY given replaces its value; others are kept). The file is
    re-read afterwards and left unchanged unless every value landed."""
    path = Path(path)
    layer = read_layer(path)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    wanted: dict[str, dict[str, FixValue]] = {}
    for name, fixes in updates.items():
        entry = layer.entries.get(name)
        if entry is None:
            raise ManifestError(f"{path}: entries.{name}: not defined in this manifest (cannot edit it here)")
        merged = dict(entry.config_fixes)
        merged.update(fixes)
        wanted[name] = merged
        data = {key: list(v) if isinstance(v, tuple) else v for key, v in merged.items()}
        _set_field(lines, path, ("entries", name), "config_fixes", data, "config")

    def check(new: Layer) -> None:
        for name, fixes in wanted.items():
            got = dict(new.entries[name].config_fixes)
            if got != fixes:
                raise ManifestError(f"{path}: entries.{name}.config_fixes: edit did not take effect "
                                    f"(read back {got!r}); file unchanged")
    _write_checked(path, lines, check)


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
