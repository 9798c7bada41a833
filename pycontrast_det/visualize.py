"""``draw(image, prediction)``: a detector's output drawn on its image with torchvision's
``draw_segmentation_masks`` (translucent masks) and ``draw_bounding_boxes`` (boxes, "name score" tags).

Colours are a fixed function of the class index, so one class has one colour in every image and run.
"""
from __future__ import annotations

import colorsys
from typing import Any, Mapping, Optional, Sequence

from PIL import Image

from .images import as_rgb_array

_GOLDEN_RATIO_CONJUGATE = 0.618033988749895


def class_color(label: int) -> tuple[int, int, int]:
    """A bright RGB colour for a class index; hues spread by the golden ratio so neighbours differ."""
    hue = (int(label) * _GOLDEN_RATIO_CONJUGATE) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.8, 0.95)
    return int(red * 255 + 0.5), int(green * 255 + 0.5), int(blue * 255 + 0.5)


def draw(image: Any, prediction: Mapping[str, Any], *, score_thresh: float = 0.5, mask_alpha: float = 0.5,
         class_names: Optional[Sequence[str]] = None) -> Image.Image:
    """A new RGB image: ``image`` (a path, PIL image, HWC uint8 array or CHW tensor; a path is read with its EXIF
    orientation, as ``predict`` reads it) with the detections of ``prediction`` (one ``predict`` result: ``boxes``
    XYXY pixels, ``labels``, optional ``scores``, ``label_names`` and bool ``masks`` [N, H, W]) scoring at least
    ``score_thresh``: masks blended at ``mask_alpha``, then boxes and "name score" tags on top. Names come from
    ``label_names``, else ``class_names[label]``, else the label number."""
    import torch
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    canvas = torch.from_numpy(as_rgb_array(image).copy()).permute(2, 0, 1)
    height, width = canvas.shape[1:]
    boxes = torch.as_tensor(prediction["boxes"], dtype=torch.float32).reshape(-1, 4)
    labels = [int(v) for v in torch.as_tensor(prediction["labels"]).reshape(-1).tolist()]
    scores = prediction.get("scores")
    score_list = None if scores is None else [float(v) for v in torch.as_tensor(scores).reshape(-1).tolist()]
    if len(labels) != len(boxes) or (score_list is not None and len(score_list) != len(boxes)):
        raise ValueError(f"draw: {len(boxes)} boxes, {len(labels)} labels and "
                         f"{'no' if score_list is None else len(score_list)} scores do not match")
    keep = [i for i in range(len(boxes)) if score_list is None or score_list[i] >= score_thresh]
    colors = [class_color(labels[i]) for i in keep]
    masks = prediction.get("masks")
    if masks is not None and keep:
        masks = torch.as_tensor(masks).to(torch.bool)
        if tuple(masks.shape[1:]) != (height, width):
            raise ValueError(f"draw: masks are {tuple(masks.shape[1:])}, the image {(height, width)}")
        canvas = draw_segmentation_masks(canvas, masks[keep], alpha=mask_alpha, colors=colors)
    if keep:
        names = prediction.get("label_names")

        def tag(i: int) -> str:
            label = labels[i]
            name = (names[i] if names is not None else class_names[label]
                    if class_names is not None and 0 <= label < len(class_names) else str(label))
            return name if score_list is None else f"{name} {score_list[i]:.2f}"

        canvas = draw_bounding_boxes(canvas, boxes[keep], labels=[tag(i) for i in keep], colors=colors,
                                     width=max(1, round(min(height, width) / 300)))
    return Image.fromarray(canvas.permute(1, 2, 0).numpy())
