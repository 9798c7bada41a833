"""``pycontrast-zoo audit``: each entry's effective config (its config file plus its config_fixes) against the
config its published training log ran with. Exit 1 when a model-defining key differs. No torch here."""
from __future__ import annotations

import argparse
from typing import Optional

from ..checkpoints import sources
from ..config import load_config
from ..zoo import DetectorEntry, Zoo, load_manifest, update_manifest_fixes
from ..zoo.logconfig import IGNORED_KEYS, MODEL_KEYS, ConfigAudit, compare_configs, read_log_config_file, \
    show_value
from ..zoo.records import FixValue
from .zoo_cmds import print_table, target_names

_KEYS_HELP = (f"model-defining keys (exit 1 when one differs): {', '.join(MODEL_KEYS)}; never compared: "
              f"{', '.join(IGNORED_KEYS)} (a trailing '.' or '_' means every key it starts)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``audit``."""
    p = subparsers.add_parser(
        "audit", help="compare each entry's config with the config its published training log ran with",
        description="Fetch each entry's training log (through the cache; offline from it), read the config it ran "
                    "with and compare it with the entry's effective config (config file + config_fixes). Prints "
                    "the differing keys per entry; exit 1 when a model-defining key differs. " + _KEYS_HELP)
    p.add_argument("entries", nargs="*", metavar="ENTRY")
    p.add_argument("--all", action="store_true", help="every detector entry")
    p.add_argument("--write-manifest", action="store_true",
                   help="record the log's values of the differing model-defining keys as config_fixes in the "
                        "manifest that defines each entry (for a maintainer to review and commit)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_audit)


def _cmd_audit(args: argparse.Namespace) -> int:
    zoo = load_manifest(getattr(args, "manifest", None))
    differs = False
    for name in target_names(zoo, args.entries, args.all):
        entry = zoo.entry(name)
        audit = _audit(entry, zoo, quiet=args.quiet)
        if audit is None:
            continue
        _print_audit(entry, audit)
        differs = differs or bool(audit.model_diffs)
        if args.write_manifest and audit.model_diffs:
            _write_fixes(entry, audit)
    return 1 if differs else 0


def _audit(entry: DetectorEntry, zoo: Zoo, *, quiet: bool) -> Optional[ConfigAudit]:
    """The comparison for one entry, or None (with a line saying why) when there is nothing to compare."""
    if entry.log is None:
        print(f"{entry.name}: no training log was published; nothing to compare")
        return None
    logged = read_log_config_file(sources.fetch_entry_file(entry.name, "log", zoo=zoo, quiet=quiet))
    if logged.full is None:
        why = logged.problem or "it has no 'Running with full config:' dump"
        print(f"{entry.name}: its training log says nothing comparable about its config ({why})")
        return None
    ours = load_config(entry.config_path, entry.config_overrides).to_dict()
    print(f"{entry.name}: its training log ran {logged.config_file or 'an unnamed config file'} "
          f"(command line: {logged.command_line or 'not logged'})")
    return compare_configs(ours, logged.full)


def _print_audit(entry: DetectorEntry, audit: ConfigAudit) -> None:
    fixes = f" + config_fixes {' '.join(entry.config_overrides)}" if entry.config_fixes else ""
    print(f"{entry.name}: {entry.config}{fixes} against its training log: {audit.compared} keys compared, "
          f"{len(audit.model_diffs)} model-defining and {len(audit.diffs) - len(audit.model_diffs)} other differ")
    if audit.diffs:
        print_table(("key", "entry", "log", ""), [(d.key, show_value(d.ours), show_value(d.logged),
                                                   "model-defining" if d.model_defining else "") for d in audit.diffs],
                    indent="  ")
    if audit.only_in_log:
        print(f"  not compared (keys this package's config does not have): {', '.join(audit.only_in_log)}")


def _write_fixes(entry: DetectorEntry, audit: ConfigAudit) -> None:
    """The log's values of the differing model-defining keys, written as the entry's config_fixes."""
    fixes: list[tuple[str, FixValue]] = []
    for diff in audit.model_diffs:
        value = _fix_value(diff.logged)
        if value is None:
            print(f"  {diff.key}: the log's value {diff.logged!r} cannot be written as a fix; left out")
        else:
            fixes.append((diff.key, value))
    if fixes:
        update_manifest_fixes(entry.source, {entry.name: fixes})
        print(f"  wrote {len(fixes)} config fix(es) into {entry.source} (entries.{entry.name}.config_fixes)")


def _fix_value(value: object) -> Optional[FixValue]:
    """A log value as a manifest fix (a scalar or a list of scalars), None when it is neither."""
    if isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, int, float, bool)) for v in value):
        return tuple(value)
    return None
