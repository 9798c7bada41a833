"""The model-zoo manifest (zoo.yaml): typed, validated records and queries over them. No torch here.

Modules: ``records`` (the schema's dataclasses), ``validate`` (one manifest's records checked field by field),
``loading`` (reading, merging and caching manifests; queries), ``editor`` (in-place edits keeping comments),
``dump`` (records and manifests as YAML), ``table`` (the README table), ``logconfig`` (the config a detectron2
training log ran with, compared with an entry's). File references and URL rules are :mod:`pycontrast_det.refs`.
"""
from ..refs import FORMATS, FileRef, url_basename, url_problem
from .dump import dump_manifest, entry_record, file_record, pretrain_record
from .editor import update_manifest_checksums, update_manifest_files, update_manifest_fixes
from .loading import ENV_MANIFEST, get_entry, get_pretrain, list_entries, load_manifest, manifests_in_use
from .records import DETECTORS, SCHEMA_VERSION, DetectorEntry, KnownIssue, PretrainEntry, Zoo
from .table import TABLE_END, TABLE_START, issue_line, render_table

__all__ = [
    "FileRef", "PretrainEntry", "DetectorEntry", "KnownIssue", "Zoo", "load_manifest", "list_entries", "get_entry",
    "get_pretrain", "render_table", "issue_line", "update_manifest_checksums", "update_manifest_files",
    "update_manifest_fixes", "url_basename", "url_problem", "file_record", "entry_record", "pretrain_record",
    "dump_manifest", "SCHEMA_VERSION", "FORMATS", "ENV_MANIFEST", "TABLE_START", "TABLE_END", "manifests_in_use",
    "DETECTORS",
]
