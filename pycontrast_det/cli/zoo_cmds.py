"""``pycontrast-zoo list | info | download | verify | pin | cache | table``: the zoo and its file cache (``pin
--write-manifest --merge`` takes in what ``pycontrast-zoo publish`` wrote).

No torch here (``list``, ``info`` and ``table`` must stay light).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import queue
import sys
import threading
from pathlib import Path
from typing import Callable, Optional, Sequence

from .. import store
from ..checkpoints import sources
from ..errors import FilesystemError, ZooError
from ..zoo import DETECTORS, DetectorEntry, FileRef, Zoo, load_manifest, list_entries, render_table, \
    update_manifest_checksums, update_manifest_files


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the zoo and cache subcommands."""
    p = subparsers.add_parser("list", help="list detector entries with their reported AP and what is cached")
    p.add_argument("--detector", choices=DETECTORS)
    p.add_argument("--schedule", help="e.g. 1x, 2x, 6x")
    p.add_argument("--pretrain", help="e.g. supervised, moco_v2, infomin")
    p.add_argument("--min-box-ap", type=float, metavar="AP")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_list)

    p = subparsers.add_parser("info", help="everything about one entry or pretrain: config, URLs, checksums, cache")
    p.add_argument("entry")
    p.set_defaults(func=_cmd_info)

    p = subparsers.add_parser("download", help="fetch entries' files into the cache (verified)")
    p.add_argument("entries", nargs="*", metavar="ENTRY", help="detector entries or pretrains")
    p.add_argument("--all", action="store_true", help="every detector entry")
    p.add_argument("--what", default="model,log,pretrain", help="comma-separated roles (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=2, help="parallel downloads (default: %(default)s)")
    p.add_argument("--from-dir", metavar="DIR", help="import from a folder instead of the network (verified)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_download)

    p = subparsers.add_parser("verify", help="re-hash cached files against the manifest sha256 or the pin lock")
    p.add_argument("entries", nargs="*", metavar="ENTRY", help="default: every cached file of the zoo")
    p.set_defaults(func=_cmd_verify)

    p = subparsers.add_parser("pin", help="record sha256 and size of files (downloading them if needed)")
    p.add_argument("entries", nargs="*", metavar="ENTRY", help="default: every cached file of the zoo")
    p.add_argument("--what", default="model,log,pretrain", help="comma-separated roles (default: %(default)s)")
    p.add_argument("--write-manifest", action="store_true",
                   help="write the values into the manifest that defines each entry instead of pins.json")
    p.add_argument("--merge", metavar="FRAGMENT",
                   help="with --write-manifest: fetch and verify each file published in FRAGMENT (a manifest written "
                        "by `pycontrast-zoo publish`), then write its file records (network URLs, checksums, formats, "
                        "alternatives) into the manifests that define those entries and pretrains")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_pin)

    p = subparsers.add_parser("cache", help="inspect or clean the file cache")
    sub = p.add_subparsers(dest="cache_command", metavar="ACTION")
    sub.required = True
    sub.add_parser("ls", help="list cached files (trusted, partial downloads with their size, temp)") \
        .set_defaults(func=_cmd_cache_ls)
    rm = sub.add_parser("rm", help="remove cached files of entries / pretrains / entry/role keys")
    rm.add_argument("names", nargs="*", metavar="NAME")
    rm.add_argument("--all", action="store_true", help="remove everything")
    rm.add_argument("--partial", action="store_true",
                    help="remove only partial downloads and temp files (of NAME..., or all of them)")
    rm.set_defaults(func=_cmd_cache_rm)
    sub.add_parser("path", help="print the cache root").set_defaults(func=_cmd_cache_path)

    p = subparsers.add_parser("table", help="print the README results table (markdown) from the manifest")
    p.set_defaults(func=_cmd_table)


def _zoo(args: argparse.Namespace) -> Zoo:
    return load_manifest(getattr(args, "manifest", None))


def parse_roles(text: str) -> tuple[str, ...]:
    """``--what model,log,pretrain`` -> the roles; ZooError naming an unknown one."""
    roles = tuple(r.strip() for r in text.split(",") if r.strip())
    bad = [r for r in roles if r not in store.ROLES]
    if bad or not roles:
        raise ZooError(f"--what: unknown role(s) {', '.join(bad) or '(none)'}; choose from {', '.join(store.ROLES)}")
    return roles


def _cached_roles(entry: DetectorEntry, zoo: Zoo) -> list[str]:
    cached = []
    for role in store.ROLES:
        if any(store.cache_path(f, k).is_file() for k, f in sources.entry_files(entry.name, (role,), zoo)):
            cached.append(role)
    return cached


# ------------------------------------------------------------------------------------------- list/info


def _cmd_list(args: argparse.Namespace) -> int:
    zoo = _zoo(args)
    entries = list_entries(detector=args.detector, schedule=args.schedule, pretrain=args.pretrain,
                           min_box_ap=args.min_box_ap, zoo=zoo)
    if args.json:
        records = [{"name": e.name, "detector": e.detector, "schedule": e.schedule, "pretrain": e.pretrain,
                 "box_ap": e.box_ap, "mask_ap": e.mask_ap, "config": e.config, "published": e.published,
                 "cached": _cached_roles(e, zoo), "config_fixes": list(e.config_overrides),
                 "known_issues": [dataclasses.asdict(i) for i in e.known_issues]} for e in entries]
        print(json.dumps(records, indent=2))
        return 0
    header = ("entry", "det", "sched", "pretrain", "box AP", "mask AP", "files", "cached", "issues")
    rows = [(e.name, e.detector, e.schedule, e.pretrain, f"{e.box_ap:.1f}", f"{e.mask_ap:.1f}",
             "published" if e.published else "config only", ",".join(_cached_roles(e, zoo)) or "-",
             "!" * len(e.known_issues)) for e in entries]
    print_table(header, rows)
    if not rows:
        print("(no entry matches)")
    if any(e.known_issues for e in entries):
        print("issues: '!' marks a known issue (`pycontrast-zoo info ENTRY` says what)")
    return 0


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> None:
    """Rows under a header, in columns two spaces apart."""
    lines = [header, *rows]
    widths = [max(len(str(r[i])) for r in lines) for i in range(len(header))]
    for row in lines:
        print(indent + "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


def _describe_file(key: str, file: FileRef) -> list[str]:
    path = store.cache_path(file, key)
    lines = [f"  {key}  ({file.format})"]
    lines += [f"    url: {u}" for u in store.candidate_urls(file, key)]
    if file.published_url:
        lines.append(f"    published: {file.published_url}")
    if file.md5_prefix:
        lines.append(f"    md5 prefix (published): {file.md5_prefix}")
    lines.append(f"    size: {file.size_bytes if file.size_bytes is not None else 'unknown'}")
    lines.append(f"    checksum: {store.checksum_status(file, key)}")
    lines.append(f"    cache: {path} ({'cached' if path.is_file() else 'not cached'})")
    return lines


def _cmd_info(args: argparse.Namespace) -> int:
    zoo = _zoo(args)
    name = args.entry
    if name in zoo.pretrains and name not in zoo.entries:
        pre = zoo.pretrains[name]
        out = [f"{pre.name}: {pre.method} pretrain", f"  epochs: {pre.epochs}",
               f"  ImageNet linear top-1: {pre.imagenet_top1}", f"  can initialise an RGB R-50: {pre.can_init_r50}"]
        if pre.note:
            out.append(f"  note: {pre.note}")
        out.append(f"  used by: {', '.join(e.name for e in zoo.entries_for_pretrain(name)) or '-'}")
        out.append("files:" if sources.pretrain_files(pre) else "files: none")
        for key, file in sources.pretrain_files(pre):
            out += _describe_file(key, file)
        print("\n".join(out))
        return 0
    entry = zoo.entry(name)
    pre = zoo.pretrain(entry.pretrain)
    out = [f"{entry.name}: Mask R-CNN R-50-{entry.detector.upper()} {entry.schedule}, from {pre.method} "
           f"({pre.name}{f', {pre.epochs} epochs' if pre.epochs else ''}"
           f"{f', ImageNet top-1 {pre.imagenet_top1}' if pre.imagenet_top1 is not None else ''})",
           f"  reported COCO val2017: box AP {entry.box_ap:.1f}, mask AP {entry.mask_ap:.1f}",
           f"  config: {entry.config} ({entry.config_path})",
           f"  published: {_published(entry)}"]
    if entry.note:
        out.append(f"  note: {entry.note}")
    if entry.config_fixes:
        out.append(f"  config fixes (every use applies them): {' '.join(entry.config_overrides)}")
    out += [f"  known issue: {issue.text} ({issue.url})" for issue in entry.known_issues]
    out.append(f"  manifest: {entry.source}")
    out.append("files:")
    for key, file in sources.entry_files(name, store.ROLES, zoo):
        out += _describe_file(key, file)
    print("\n".join(out))
    return 0


def _published(entry: DetectorEntry) -> str:
    """What was released for a detector entry, in a few words."""
    if not entry.published:
        return "config only"
    return "model and log" if entry.log is not None else "model (no training log)"


def _cmd_table(args: argparse.Namespace) -> int:
    sys.stdout.write(render_table(_zoo(args)))
    return 0


# ------------------------------------------------------------------------------------------ download


def target_names(zoo: Zoo, names: list[str], use_all: bool) -> list[str]:
    """The ENTRY arguments (detector entries or pretrains, checked) or, with ``--all``, every detector entry."""
    if use_all and names:
        raise ZooError("give entry names or --all, not both")
    if use_all:
        return list(zoo.entries)
    if not names:
        raise ZooError("name at least one entry (see `pycontrast-zoo list`) or pass --all")
    for name in names:
        if name not in zoo.pretrains:
            zoo.entry(name)  # raises with a did-you-mean
    return names


def _download_jobs(zoo: Zoo, names: list[str], roles: tuple[str, ...], args) -> dict[str, Callable[[], Path]]:
    """One job per distinct file (pretrains are shared between entries), keyed by cache key; a model or a
    pretrain is its main file, else the first of its alternatives that can be had."""
    jobs: dict[str, Callable[[], Path]] = {}
    for name in names:
        pretrain_only = name in zoo.pretrains and name not in zoo.entries
        if not pretrain_only:
            entry = zoo.entry(name)
            for role in ("model", "log"):
                if role not in roles:
                    continue
                file = getattr(entry, role)
                if file is None:
                    print(f"{name}: no {role} published" + (f" ({entry.note})" if entry.note else ""),
                          file=sys.stderr)
                    continue
                files = sources.model_files(entry) if role == "model" else [(f"{name}/{role}", file)]
                jobs.setdefault(f"{name}/{role}", _first_job(files, zoo, args))
        if "pretrain" in roles:
            pre = zoo.pretrain(name if pretrain_only else zoo.entry(name).pretrain)
            if pre.file is not None:
                jobs.setdefault(f"{pre.name}/pretrain", _first_job(sources.pretrain_files(pre), zoo, args))
    return jobs


def _first_job(files: list[tuple[str, FileRef]], zoo: Zoo, args) -> Callable[[], Path]:
    """A job fetching (or importing, with --from-dir) the first of ``files`` that can be had."""
    if not args.from_dir:
        return lambda: sources.fetch_first(files, quiet=args.quiet)[0]

    def job() -> Path:
        errors = []
        for key, file in files:
            try:
                return sources.import_entry_file(args.from_dir, file, key, zoo)
            except FilesystemError:
                raise
            except ZooError as exc:
                errors.append(str(exc))
        raise ZooError("; ".join(errors))
    return job


def _run_jobs(jobs: dict[str, Callable[[], Path]], workers: int) -> int:
    """Run the jobs on ``workers`` threads, report each, return 2 if any failed.

    Ctrl-C stops every download at its next chunk with its partial kept (the next run resumes it), then
    ends the command; a cache that cannot be written stops the command with that one error.
    """
    pending: queue.Queue = queue.Queue()
    for key in jobs:
        pending.put(key)
    results: dict[str, object] = {}
    stop = threading.Event()
    count = max(1, min(workers, len(jobs)))
    running = [count]
    all_done = threading.Event()  # waited on instead of Thread.join: an interrupted join marks a live thread done
    guard = threading.Lock()

    def worker() -> None:
        try:
            while not stop.is_set():
                try:
                    key = pending.get_nowait()
                except queue.Empty:
                    return
                try:
                    results[key] = jobs[key]()
                except BaseException as exc:  # reported below; a non-ZooError is re-raised there
                    results[key] = exc
                    if isinstance(exc, (FilesystemError, KeyboardInterrupt)):
                        stop.set()
        finally:
            with guard:
                running[0] -= 1
                if not running[0]:
                    all_done.set()

    for _ in range(count):
        threading.Thread(target=worker, daemon=True).start()
    try:
        all_done.wait()
    except KeyboardInterrupt:
        stop.set()
        store.interrupt_downloads()
        all_done.wait(store.net_policy().read_timeout_s + 5)  # a download blocked in a read stops within its timeout
        raise
    first_fs_error = next((r for r in results.values() if isinstance(r, FilesystemError)), None)
    if first_fs_error is not None:
        raise first_fs_error
    failed = 0
    for key in jobs:
        outcome = results.get(key)
        if isinstance(outcome, ZooError):
            failed += 1
            print(f"{key}: FAILED: {outcome}", file=sys.stderr)
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            print(f"{key}: {outcome}")
    if failed:
        print(f"{failed} of {len(jobs)} file(s) failed", file=sys.stderr)
    return 2 if failed else 0


def _cmd_download(args: argparse.Namespace) -> int:
    zoo = _zoo(args)
    names = target_names(zoo, args.entries, args.all)
    jobs = _download_jobs(zoo, names, parse_roles(args.what), args)
    if not jobs:
        print("nothing to download", file=sys.stderr)
        return 0
    return _run_jobs(jobs, 1 if args.from_dir else args.jobs)


# -------------------------------------------------------------------------------------- verify / pin


def _files(zoo: Zoo, names: list[str], roles: tuple[str, ...] = store.ROLES,
           cached_only: bool = False) -> list[tuple[str, FileRef]]:
    """Distinct (key, file) pairs of the named entries/pretrains, or of the whole zoo."""
    pool = names or list(zoo.entries) + [p for p in zoo.pretrains if p not in zoo.entries]
    seen: dict[str, FileRef] = {}
    for name in pool:
        if name not in zoo.pretrains:
            zoo.entry(name)
        for key, file in sources.entry_files(name, roles, zoo):
            seen.setdefault(key, file)
    items = list(seen.items())
    return [(k, f) for k, f in items if store.cache_path(f, k).is_file()] if cached_only else items


def _cmd_verify(args: argparse.Namespace) -> int:
    zoo = _zoo(args)
    files = _files(zoo, args.entries, cached_only=not args.entries)
    if not files:
        print("nothing cached to verify")
        return 0
    bad = 0
    for key, file in files:
        result = store.verify_file(file, key)
        bad += result.status in ("mismatch", "missing")
        print(f"{key}: {result.status.upper()}: {result.message}")
    return 1 if bad else 0


def _pin_location(zoo: Zoo, key: str) -> Optional[tuple[Path, tuple[str, str, str]]]:
    """(manifest file, (section, name, role)) where ``key``'s checksum is written; None for alternatives."""
    name, role = key.split("/", 1)
    if role in ("model", "log"):
        return zoo.entries[name].source, ("entries", name, role)
    if role == "pretrain":
        return zoo.pretrains[name].source, ("pretrains", name, "file")
    return None


def _cmd_pin(args: argparse.Namespace) -> int:
    if args.merge:
        if not args.write_manifest:
            raise ZooError("--merge FRAGMENT writes into manifests: give --write-manifest too")
        return _merge_published(args)
    zoo = _zoo(args)
    files = _files(zoo, args.entries, parse_roles(args.what), cached_only=not args.entries)
    if not files:
        print("nothing to pin: name entries to download and pin, or download some first")
        return 0
    updates: dict[Path, dict] = {}
    for key, file in files:
        if not args.write_manifest:
            pin = store.pin_file(file, key, quiet=args.quiet)
            print(f"{key}: pinned sha256 {pin.sha256} ({pin.size_bytes} bytes)")
            continue
        location = _pin_location(zoo, key)
        if location is None:
            print(f"{key}: alternatives cannot be written in place; pinned in pins.json instead")
            store.pin_file(file, key, quiet=args.quiet)
            continue
        _, sha, size = store.fetch_whole(file, key, quiet=args.quiet)
        updates.setdefault(location[0], {})[location[1]] = (sha, size)
        print(f"{key}: sha256 {sha} ({size} bytes) -> {location[0]}")
    for manifest, values in updates.items():
        update_manifest_checksums(manifest, values)
    return 0


_NETWORK = ("http://", "https://", "hf://")


def _reachable(file: Optional[FileRef], where: str) -> Optional[FileRef]:
    """``file`` with only the URLs other machines can reach (the tree's own paths left out)."""
    if file is None:
        return None
    urls = tuple(u for u in file.urls if u.startswith(_NETWORK))
    if not urls:
        raise ZooError(f"{where}: lists only paths on this machine (a tree published without --repo?); publish to "
                       f"hf://ORG/REPO, or give --repo, for URLs to merge")
    return dataclasses.replace(file, urls=urls)


def _merge_published(args: argparse.Namespace) -> int:
    """``pin --write-manifest --merge FRAGMENT``: verify, then write the published file records in place."""
    zoo = _zoo(args)
    fragment = Path(args.merge).expanduser().resolve()
    if fragment in zoo.sources:
        raise ZooError(f"--merge {fragment}: already loaded (--manifest / PYCONTRAST_ZOO_MANIFEST); load only the "
                       f"manifests to write into")
    published = load_manifest([*zoo.sources, fragment])
    updates: dict[Path, dict] = {}
    checks: list[tuple[str, FileRef, Path]] = []
    for entry in (e for e in published.entries.values() if e.source == fragment):
        where = f"{fragment}: entries.{entry.name}"
        model, log_file = _reachable(entry.model, f"{where}.model"), _reachable(entry.log, f"{where}.log")
        fields = {"model": model, "log": log_file,
                  "model_alternatives": tuple(_reachable(a, f"{where}.model_alternatives")
                                              for a in entry.model_alternatives)}
        updates.setdefault(zoo.entry(entry.name).source, {})[("entries", entry.name)] = fields
        checks += [(f"{entry.name}/{role}", file, zoo.entry(entry.name).source)
                   for role, file in (("model", model), ("log", log_file)) if file is not None]
    for pretrain in (p for p in published.pretrains.values() if p.source == fragment):
        where = f"{fragment}: pretrains.{pretrain.name}"
        file = _reachable(pretrain.file, f"{where}.file")
        fields = {"file": file,
                  "alternatives": tuple(_reachable(a, f"{where}.alternatives") for a in pretrain.alternatives)}
        updates.setdefault(zoo.pretrain(pretrain.name).source, {})[("pretrains", pretrain.name)] = fields
        if file is not None:
            checks.append((f"{pretrain.name}/pretrain", file, zoo.pretrain(pretrain.name).source))
    if not updates:
        raise ZooError(f"--merge {fragment}: defines no entry or pretrain")
    for key, file, manifest in checks:
        if file.sha256 is None:
            raise ZooError(f"--merge {fragment}: {key} has no sha256; only files published with a checksum are merged")
        path = store.fetch_file(file, key, quiet=args.quiet)  # checked against the published sha256 and size
        print(f"{key}: {path.name} verified (sha256 {file.sha256}, {file.size_bytes} bytes) -> {manifest}")
    for manifest, values in updates.items():
        update_manifest_files(manifest, values)
        print(f"{manifest}: {len(values)} record(s) updated")
    return 0


# -------------------------------------------------------------------------------------------- cache


def _cmd_cache_ls(args: argparse.Namespace) -> int:
    items = store.cached_files()
    if not items:
        print(f"cache is empty ({store.files_dir()})")
        return 0
    print_table(("key", "kind", "bytes", "path"), [(c.key, c.kind, _size(c), str(c.path)) for c in items])
    total = sum(c.size_bytes for c in items)
    print(f"{len(items)} file(s), {total / 2**20:.1f} MiB")
    return 0


def _size(item: store.CachedFile) -> str:
    """Bytes of a cached file; for a partial, of how many (when the server announced the total)."""
    if item.kind == "partial" and item.total_bytes:
        return f"{item.size_bytes}/{item.total_bytes} ({100 * item.size_bytes / item.total_bytes:.0f}%)"
    return str(item.size_bytes)


def _cmd_cache_rm(args: argparse.Namespace) -> int:
    if (args.all and args.names) or not (args.all or args.names or args.partial):
        raise ZooError("cache rm: give NAME... (entry, pretrain or entry/role) or --all (or --partial alone)")
    removed = store.remove_cached(() if args.all else args.names, partial_only=args.partial)
    for path in removed:
        print(f"removed {path}")
    if not removed:
        print("nothing to remove")
    return 0


def _cmd_cache_path(args: argparse.Namespace) -> int:
    print(store.cache_dir())
    return 0
