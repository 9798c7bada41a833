"""Writing manifests: records (files, entries, pretrains) as a manifest writes them and whole manifests' text, in
the block style of zoo.yaml. No torch here."""
from __future__ import annotations

from typing import Any, Mapping

import yaml

from ..refs import FileRef, url_basename
from .records import SCHEMA_VERSION, DetectorEntry, PretrainEntry


class _BlockDumper(yaml.SafeDumper):
    """Block-style YAML with list items indented under their key, as zoo.yaml is written."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


def dump_yaml(data: Any) -> str:
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
    if entry.config_fixes:
        out["config_fixes"] = {key: list(v) if isinstance(v, tuple) else v for key, v in entry.config_fixes}
    if entry.known_issues:
        out["known_issues"] = [{"text": i.text, "url": i.url} for i in entry.known_issues]
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
    return head + dump_yaml(body)
