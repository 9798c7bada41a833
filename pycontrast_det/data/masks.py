"""Instance masks as bitmaps (INPUT.MASK_FORMAT ``bitmask``): polygons and RLE (compressed or not) decoded at the
image's size, then resized and flipped as the image is (detectron2's ``BitMasks`` path)."""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from ..errors import DatasetError


def decode_mask(segm: Any, height: int, width: int, where: str) -> np.ndarray:
    """A bool (height, width) mask of polygons (list) or an RLE dict (``counts`` a string or a list)."""
    from pycocotools import mask as mask_util

    if isinstance(segm, dict):
        if [int(v) for v in segm["size"]] != [height, width]:
            raise DatasetError(f"{where}: its RLE mask is {segm['size'][1]}x{segm['size'][0]} but the image is "
                               f"{width}x{height} (width x height)")
        rle = mask_util.frPyObjects(segm, height, width) if isinstance(segm["counts"], list) else dict(segm)
        if isinstance(rle.get("counts"), str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        rle = mask_util.merge(mask_util.frPyObjects([list(p) for p in segm], height, width))
    try:
        return mask_util.decode(rle).astype(bool)
    except (ValueError, TypeError) as exc:
        raise DatasetError(f"{where}: cannot decode its mask ({exc})") from None


def transform_mask(mask: np.ndarray, new_height: int, new_width: int, hflip: bool, vflip: bool) -> np.ndarray:
    """Resize (nearest, as detectron2 resizes segmentations) then flip like the image."""
    if mask.shape != (new_height, new_width):
        image = Image.fromarray(mask.astype(np.uint8)).resize((new_width, new_height), Image.Resampling.NEAREST)
        mask = np.asarray(image).astype(bool)
    if hflip:
        mask = mask[:, ::-1]
    if vflip:
        mask = mask[::-1]
    return np.ascontiguousarray(mask)
