"""Draw detections (boxes, class labels with scores, translucent masks) on an image with PIL and numpy.

Colours are a fixed function of the class index, so one class has one colour in every image and run.
Inputs may be numpy arrays or anything ``numpy.asarray`` accepts (CPU torch tensors included).
"""
from __future__ import annotations

import colorsys
from typing import Any, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .images import as_rgb_array

ImageLike = Union[Image.Image, np.ndarray]

_GOLDEN_RATIO_CONJUGATE = 0.618033988749895


def class_color(label: int) -> tuple[int, int, int]:
    """A bright RGB colour for a class index; hues spread by the golden ratio so neighbours differ."""
    hue = (int(label) * _GOLDEN_RATIO_CONJUGATE) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.8, 0.95)
    return int(red * 255 + 0.5), int(green * 255 + 0.5), int(blue * 255 + 0.5)


def _label_text(label: int, score: Optional[float], label_names: Optional[Sequence[str]]) -> str:
    name = label_names[label] if label_names is not None and 0 <= label < len(label_names) else str(label)
    return name if score is None else f"{name} {score:.2f}"


def draw_detections(
    image: ImageLike,
    boxes: Any,
    labels: Any,
    scores: Any = None,
    masks: Any = None,
    label_names: Optional[Sequence[str]] = None,
    mask_alpha: float = 0.5,
) -> Image.Image:
    """Return a new RGB image with each detection drawn.

    ``boxes`` is (N, 4) XYXY in the image's pixels, ``labels`` (N,) class indices, ``scores`` (N,) or None,
    ``masks`` (N, H, W) bool (same size as the image) or None. Masks are blended at ``mask_alpha``, then
    boxes and "name score" tags are drawn on top.
    """
    canvas = as_rgb_array(image).copy()
    height, width = canvas.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    count = len(boxes)
    if len(labels) != count:
        raise ValueError(f"draw_detections: {count} boxes but {len(labels)} labels")
    score_list = None if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if score_list is not None and len(score_list) != count:
        raise ValueError(f"draw_detections: {count} boxes but {len(score_list)} scores")

    if masks is not None:
        masks = np.asarray(masks).astype(bool)
        if masks.shape != (count, height, width):
            raise ValueError(f"draw_detections: masks must have shape {(count, height, width)}, "
                             f"got {masks.shape}")
        blended = canvas.astype(np.float32)
        for mask, label in zip(masks, labels):
            color = np.asarray(class_color(int(label)), dtype=np.float32)
            blended[mask] = (1.0 - mask_alpha) * blended[mask] + mask_alpha * color
        canvas = np.clip(blended + 0.5, 0, 255).astype(np.uint8)

    result = Image.fromarray(canvas)
    draw = ImageDraw.Draw(result)
    font = ImageFont.load_default()
    line_width = max(1, round(min(height, width) / 300))
    for index in range(count):
        x0, y0, x1, y1 = boxes[index]
        label = int(labels[index])
        color = class_color(label)
        draw.rectangle((x0, y0, x1, y1), outline=color, width=line_width)
        score = None if score_list is None else float(score_list[index])
        text = _label_text(label, score, label_names)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_w, text_h = right - left, bottom - top
        tag_y = y0 - text_h - 4 if y0 - text_h - 4 >= 0 else y0
        draw.rectangle((x0, tag_y, x0 + text_w + 4, tag_y + text_h + 4), fill=color)
        draw.text((x0 + 2 - left, tag_y + 2 - top), text, fill=(0, 0, 0), font=font)
    return result
