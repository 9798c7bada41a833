"""detectron2's ``ResizeShortestEdge`` rule, reproduced exactly (PIL bilinear on the uint8 image, int(x + 0.5)
sizes): one place for the data mapper (training and evaluation inputs) and the model's own preprocessing."""
from __future__ import annotations

import numpy as np
from PIL import Image


def scaled_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """(new_h, new_w) for ResizeShortestEdge: shortest edge to ``short``, longest capped at ``max_size``."""
    scale = short * 1.0 / min(h, w)
    newh, neww = (short, scale * w) if h < w else (scale * h, short)
    if max(newh, neww) > max_size:
        rescale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * rescale, neww * rescale
    return int(newh + 0.5), int(neww + 0.5)


def resize_shortest_edge(image: np.ndarray, short: int, max_size: int) -> np.ndarray:
    """Resize an HWC uint8 image as detectron2's ``ResizeShortestEdge`` + ``ResizeTransform`` do."""
    if image.dtype != np.uint8:
        raise TypeError(f"resize_shortest_edge expects a uint8 image, got {image.dtype}")
    h, w = image.shape[:2]
    newh, neww = scaled_size(h, w, short, max_size)
    if (newh, neww) == (h, w):
        return image
    squeeze = image.ndim == 3 and image.shape[2] == 1
    pil = Image.fromarray(image[:, :, 0] if squeeze else image)
    out = np.asarray(pil.resize((neww, newh), Image.Resampling.BILINEAR))
    return out[:, :, None] if squeeze else out


__all__ = ["resize_shortest_edge", "scaled_size"]
