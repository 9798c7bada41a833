"""The published row beside the measured one: a small table with the difference and whether it is like-for-like."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Union

from ..evaluation import EvalResult

COCO_VAL2017_IMAGES = 5000
NOISE_AP = 0.3  # run-to-run spread of R50-FPN 1x on COCO (MoCo maintainers)


def compare_with_published(entry: Any, metrics: Union[EvalResult, Mapping[str, Mapping[str, float]]], *,
                           dataset: Optional[str] = None) -> str:
    """A small table of the entry's published box/mask AP next to the measured ones, with the difference."""
    from ..zoo import get_entry

    entry = get_entry(entry) if isinstance(entry, str) else entry
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
