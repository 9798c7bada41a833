"""The published row beside the measured one: a small table with the difference and whether it is like-for-like."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

from ..evaluation import EvalResult

if TYPE_CHECKING:
    from .logs import LogSummary

COCO_VAL2017_IMAGES = 5000
NOISE_AP = 0.3  # run-to-run spread of R50-FPN 1x on COCO (MoCo maintainers)


def compare_with_published(entry: Any, metrics: Union[EvalResult, Mapping[str, Mapping[str, float]]], *,
                           dataset: Optional[str] = None) -> str:
    """A small table of the entry's published box/mask AP next to the measured ones, with the difference."""
    from ..zoo import get_entry

    entry = get_entry(entry) if isinstance(entry, str) else entry
    values: Mapping[str, Mapping[str, float]]
    if isinstance(metrics, EvalResult):
        like_for_like = metrics.is_coco_val2017 and metrics.num_images == COCO_VAL2017_IMAGES
        where = f"{metrics.dataset} ({metrics.num_images} images)"
        values = metrics.metrics
    else:
        like_for_like, where, values = dataset == "coco_2017_val", dataset or "an unnamed dataset", metrics
    lines = [f"{entry.name} on {where}", f"{'':8}{'published':>10}{'measured':>10}{'diff':>8}"]
    for task, label, published in (("bbox", "box AP", entry.box_ap), ("segm", "mask AP", entry.mask_ap)):
        measured = values.get(task, {}).get("AP")
        if measured is None:
            lines.append(f"{label:8}{published:>10.1f}{'-':>10}{'-':>8}")
        else:
            lines.append(f"{label:8}{published:>10.1f}{measured:>10.1f}{measured - published:>+8.1f}")
    if like_for_like:
        lines.append(f"Differences within about {NOISE_AP} AP are run-to-run noise on COCO val2017.")
    else:
        lines.append(f"Not like-for-like: the published numbers are on all {COCO_VAL2017_IMAGES} COCO val2017 "
                     f"images; this was measured on {where}.")
    return "\n".join(lines)


def describe_log(summary: "LogSummary") -> str:
    """Iterations covered, first and last total loss, final APs of a training log (``pycontrast-zoo logs``)."""
    lines = []
    if summary.losses:
        first, last = summary.losses[0], summary.losses[-1]
        lines.append(f"  {len(summary.losses)} loss points, iterations {first.iteration}..{last.iteration}; "
                     f"total_loss {first.total_loss:.3f} -> {last.total_loss:.3f}")
    for task in ("bbox", "segm"):
        values = summary.final(task)
        if values:
            lines.append(f"  final {task}: " + "  ".join(f"{k} {v:.2f}" for k, v in values.items() if "-" not in k))
    return "\n".join(lines)


def side_by_side(published: "LogSummary", ours: "LogSummary", rows: int = 8) -> str:
    """Total loss of both runs at a few of our logged iterations (nearest published point), then both final APs."""
    if not ours.losses or not published.losses:
        return ""
    step = max(1, len(ours.losses) // rows)
    picked = ours.losses[::step][:rows - 1]
    if picked[-1] is not ours.losses[-1]:
        picked.append(ours.losses[-1])
    lines = [f"\n{'iteration':>10}{'ours':>10}{'published':>12}"]
    for point in picked:
        theirs = published.loss_at(point.iteration)
        assert theirs is not None  # published.losses is not empty
        lines.append(f"{point.iteration:>10}{point.total_loss:>10.3f}{theirs.total_loss:>12.3f}"
                     + (f"  (at {theirs.iteration})" if theirs.iteration != point.iteration else ""))
    for task, label in (("bbox", "box AP"), ("segm", "mask AP")):
        a, b = ours.final(task).get("AP"), published.final(task).get("AP")
        if a is not None and b is not None:
            lines.append(f"{label}: ours {a:.2f}, published {b:.2f} ({a - b:+.2f})")
    return "\n".join(lines)
