"""The README results table (markdown) generated from the manifest, with each entry's known issues. No torch."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..refs import FileRef
from .loading import load_manifest
from .records import DetectorEntry, Zoo

#: Markers around the generated results table in README.md.
TABLE_START = "<!-- zoo-table:start -->"
TABLE_END = "<!-- zoo-table:end -->"


def render_table(zoo: Optional[Zoo] = None) -> str:
    """The README results table, one row per detector entry; an entry with known issues is marked and its issues
    listed under the table."""
    zoo = zoo or load_manifest()
    lines = ["| entry | detector | sched | pretrain | box AP | mask AP | config | model | log |",
             "|---|---|---|---|---|---|---|---|---|"]
    issues: list[str] = []
    for e in zoo.entries.values():
        pre = zoo.pretrains[e.pretrain]
        mark = f" [!{len(issues) + 1}]" if e.known_issues else ""
        issues += [issue_line(e)] if e.known_issues else []
        lines.append(f"| `{e.name}`{mark} | {e.detector.upper()} | {e.schedule} | {pre.method} | {e.box_ap:.1f} | "
                     f"{e.mask_ap:.1f} | [{Path(e.config).stem}]({e.config}) | {_link(e.model, 'model')} | "
                     f"{_link(e.log, 'log')} |")
    notes = [""] + [f"- [!{i}] {text}" for i, text in enumerate(issues, 1)] if issues else []
    return "\n".join(lines + notes) + "\n"


def issue_line(entry: DetectorEntry) -> str:
    """An entry's known issues and its config fixes, on one line (for tables, cards and warnings)."""
    text = "; ".join(f"{issue.text} ({issue.url})" for issue in entry.known_issues)
    if entry.config_fixes:
        text += f"; every use applies: {' '.join(entry.config_overrides)}"
    return f"{entry.name}: known issue: {text}"


def _link(file: Optional[FileRef], label: str) -> str:
    if file is None:
        return "not published"
    return f"[{label}]({file.published_url or file.urls[0]})"
