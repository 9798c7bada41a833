"""Pictures of training runs: losses, learning rate and AP against iteration, one line style per source.

``plot_curves([ours, published], "curves.png")`` draws three panels (losses, lr, AP), sharing the iteration axis;
the first run is drawn solid, the next dashed. Every curve is labelled by its source (the
:class:`~pycontrast_det.reports.logs.LogSummary` label: "ours", "published", ...). A run whose length differs from
the first one's by more than 2x (the shapes protocol's 240 iterations beside a published 90k-iteration COCO log) is
drawn against its own iteration axis at the top of each panel, so that both curves fill the width. matplotlib is a
dependency of the package (a bare Figure: no display, no pyplot state).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from .. import atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .logs import LogSummary

_TASKS = (("bbox", "o", "box AP"), ("segm", "s", "mask AP"))
_SOURCE_STYLES = ("-", "--", ":", "-.")  # the first run solid, the next dashed, ...


def _comparable(first: Optional[int], other: Optional[int]) -> bool:
    """Whether two runs' last iterations are close enough (within 2x) to share one iteration axis."""
    if not first or not other:
        return True
    return max(first, other) / max(1, min(first, other)) <= 2


def _draw(axes: Sequence[Any], summary: "LogSummary", style: str, components: bool) -> None:
    """Losses (total thick; components thin, one colour each, when asked), lr and AP of one run, in ``style``."""
    ax_loss, ax_lr, ax_ap = axes
    label = summary.label
    if summary.losses:
        ax_loss.plot([p.iteration for p in summary.losses], [p.total_loss for p in summary.losses], color="C0",
                     linestyle=style, linewidth=1.8, label=f"{label}: total_loss")
        if components:
            names = sorted({k for p in summary.losses for k in p.losses})
            for index, name in enumerate(names, start=1):
                points = [(p.iteration, p.losses[name]) for p in summary.losses if name in p.losses]
                ax_loss.plot(*zip(*points), color=f"C{index}", linestyle=style, linewidth=0.8,
                             label=f"{label}: {name}")
        lrs = [(p.iteration, p.lr) for p in summary.losses if p.lr is not None]
        if lrs:
            ax_lr.plot(*zip(*lrs), color="C0", linestyle=style, label=f"{label}: lr")
    for index, (task, marker, name) in enumerate(_TASKS):
        points = [(i, r[task]["AP"]) for i, r in summary.evals if task in r and r[task].get("AP") is not None]
        if points:
            ax_ap.plot(*zip(*points), marker=marker, linestyle=style, color=f"C{index}", label=f"{label}: {name}")


def curves_figure(summaries: Sequence["LogSummary"], title: Optional[str] = None) -> "Figure":
    """The figure of :func:`plot_curves`: panels of losses, lr and AP; a legend per panel naming each curve's source."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.5))
    axes = fig.subplots(1, 3, sharex=True)
    base = summaries[0].last_iteration if summaries else None
    panels: list[list[Any]] = [[ax] for ax in axes]  # each panel's axes: its own, then any twin iteration axes
    for index, summary in enumerate(summaries):
        target = list(axes)
        if index and not _comparable(base, summary.last_iteration):
            target = [ax.twiny() for ax in axes]
            for panel, twin in zip(panels, target):
                twin.set_xlabel(f"iteration ({summary.label})", fontsize=8)
                twin.set_xlim(0, 1.04 * (summary.last_iteration or 1))  # every twin over that run's whole length
                panel.append(twin)
        _draw(target, summary, _SOURCE_STYLES[index % len(_SOURCE_STYLES)], components=index == 0)
    own_axis = "iteration" + (f" ({summaries[0].label})" if any(len(p) > 1 for p in panels) else "")
    for ax, (ylabel, name) in zip(axes, (("loss", "training losses"), ("learning rate", "learning rate"),
                                         ("AP (%)", "COCO AP"))):
        ax.set(xlabel=own_axis, ylabel=ylabel, title=name)
        ax.grid(alpha=0.3)
    axes[2].set_ylim(bottom=0)
    axes[0].set_xlim(0, 1.04 * (base or 1))  # shared by the three panels: the first run's whole length
    for panel, where in zip(panels, ("upper right", "upper right", "lower left")):  # AP points sit at the right
        handles = [h for ax in panel for h in ax.get_legend_handles_labels()[0]]
        labels = [label for ax in panel for label in ax.get_legend_handles_labels()[1]]
        if handles:  # one legend per panel, with the twin axes' curves
            panel[-1].legend(handles, labels, fontsize=7, loc=where)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(summaries: Sequence["LogSummary"], out_png: Union[str, os.PathLike], *,
                title: Optional[str] = None) -> Path:
    """Write a PNG of losses, lr and AP for each run in ``summaries`` (the first one's loss components too)."""
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure = curves_figure(summaries, title)
    with atomic.atomic_path(out) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    return out


__all__ = ["curves_figure", "plot_curves"]
