"""The detectron2 names and shapes of an RGB ResNet-50 backbone, computed from its layout.

A converted pretrain must match this exactly: 318 keys (53 norms with num_batches_tracked, no fc).
"""
from __future__ import annotations

from functools import lru_cache

BLOCKS = (3, 4, 6, 3)  # res2..res5
WIDTHS = (64, 128, 256, 512)  # bottleneck width; output is 4x
NORM_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _conv(out: dict[str, tuple[int, ...]], name: str, cout: int, cin: int, k: int, norm: bool = True) -> None:
    out[f"{name}.weight"] = (cout, cin, k, k)
    if norm:
        for p in NORM_PARAMS:
            out[f"{name}.norm.{p}"] = () if p == "num_batches_tracked" else (cout,)


@lru_cache(maxsize=1)
def r50_d2_shapes() -> dict[str, tuple[int, ...]]:
    """{detectron2 backbone key (``stem.conv1.weight``, ``res2.0.conv1.norm.weight``, ...): shape}."""
    out: dict[str, tuple[int, ...]] = {}
    _conv(out, "stem.conv1", 64, 3, 7)
    cin = 64
    for stage, (blocks, width) in enumerate(zip(BLOCKS, WIDTHS), start=2):
        for b in range(blocks):
            prefix = f"res{stage}.{b}"
            if b == 0:
                _conv(out, f"{prefix}.shortcut", width * 4, cin, 1)
            _conv(out, f"{prefix}.conv1", width, cin, 1)
            _conv(out, f"{prefix}.conv2", width, width, 3)
            _conv(out, f"{prefix}.conv3", width * 4, width, 1)
            cin = width * 4
    return out
