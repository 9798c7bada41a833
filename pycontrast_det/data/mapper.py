"""Dataset record -> the model's input dict, as detectron2's ``DatasetMapper`` does it.

Training: ResizeShortestEdge with a sampled short side (INPUT.MIN_SIZE_TRAIN, ..._SAMPLING "choice" or
"range", MAX_SIZE_TRAIN) and INPUT.RANDOM_FLIP, applied alike to the image, boxes and polygons; crowd
instances are left out of the targets, and boxes that end up empty are dropped. Test: resize to
MIN_SIZE_TEST / MAX_SIZE_TEST only, no targets. The image is read with PIL as RGB (EXIF orientation applied)
and given to the model in INPUT.FORMAT channel order as a CHW uint8 tensor.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from ..errors import ConfigError, DatasetError
from ..images import read_image
from ..resize import resize_shortest_edge, scaled_size
from .masks import decode_mask, transform_mask

_FORMATS = ("RGB", "BGR")
_FLIPS = ("horizontal", "vertical", "none")
_MASK_FORMATS = ("polygon", "bitmask")
_MIN_BOX_SIDE = 1e-5  # detectron2's filter_empty_instances threshold


class DatasetMapper:
    """Callable ``record -> batched_inputs item``; ``rng`` makes the random augmentation reproducible."""

    def __init__(self, cfg: Any, is_train: bool) -> None:
        inp = cfg.INPUT
        self.is_train = bool(is_train)
        self.image_format = str(inp.FORMAT)
        if self.image_format not in _FORMATS:
            raise ConfigError(f"INPUT.FORMAT {self.image_format!r} is not supported; use one of {_FORMATS}")
        self.mask_on = bool(cfg.MODEL.MASK_ON)
        self.mask_format = str(inp.MASK_FORMAT)
        if self.mask_format not in _MASK_FORMATS:
            raise ConfigError(f"INPUT.MASK_FORMAT {self.mask_format!r} is not one of {_MASK_FORMATS}")
        if self.is_train:
            sizes = inp.MIN_SIZE_TRAIN
            self.min_sizes = tuple(int(s) for s in (sizes if isinstance(sizes, (list, tuple)) else [sizes]))
            self.sampling = str(inp.MIN_SIZE_TRAIN_SAMPLING)
            self.max_size = int(inp.MAX_SIZE_TRAIN)
            self.flip = str(inp.RANDOM_FLIP)
        else:
            self.min_sizes, self.sampling = (int(inp.MIN_SIZE_TEST),), "choice"
            self.max_size, self.flip = int(inp.MAX_SIZE_TEST), "none"
        if self.sampling not in ("choice", "range") or (self.sampling == "range" and len(self.min_sizes) != 2):
            raise ConfigError(f"INPUT.MIN_SIZE_TRAIN_SAMPLING {self.sampling!r} with MIN_SIZE_TRAIN "
                              f"{list(self.min_sizes)}: use 'choice' (any sizes) or 'range' (exactly [min, max])")
        if self.flip not in _FLIPS:
            raise ConfigError(f"INPUT.RANDOM_FLIP {self.flip!r} is not one of {_FLIPS}")

    def __call__(self, record: dict, rng: Optional[np.random.Generator] = None) -> dict:
        rng = rng if rng is not None else np.random.default_rng()
        image = read_image(record["file_name"])
        height, width = image.shape[:2]
        if (height, width) != (record["height"], record["width"]):
            raise DatasetError(f"{record['file_name']} is {width}x{height} but its annotation says "
                               f"{record['width']}x{record['height']} (width x height)")
        short = self._sample_short_side(rng)
        if short > 0:
            image = resize_shortest_edge(image, short, self.max_size)
            expected = scaled_size(height, width, short, self.max_size)
            assert image.shape[:2] == expected, (image.shape, expected)
        hflip = self.flip == "horizontal" and rng.random() < 0.5
        vflip = self.flip == "vertical" and rng.random() < 0.5
        if hflip:
            image = image[:, ::-1]
        if vflip:
            image = image[::-1]
        if self.image_format == "BGR":
            image = image[:, :, ::-1]
        out = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
               "height": height, "width": width, "image_id": record["image_id"], "file_name": record["file_name"]}
        if self.is_train:
            geometry = _Geometry(height, width, image.shape[0], image.shape[1], hflip, vflip)
            out["instances"] = self._instances(record, geometry, (height, width))
        return out

    def _sample_short_side(self, rng: np.random.Generator) -> int:
        if self.sampling == "range":
            return int(rng.integers(self.min_sizes[0], self.min_sizes[1] + 1))
        return self.min_sizes[int(rng.integers(len(self.min_sizes)))]

    def _instances(self, record: dict, geo: "_Geometry", size: tuple[int, int]) -> dict:
        boxes: list[list[float]] = []
        classes: list[int] = []
        masks: list = []  # per instance: its polygons, or its bitmask
        bitmask = self.mask_format == "bitmask"
        for ann in record["annotations"]:
            if ann.get("iscrowd", 0):
                continue
            x, y, w, h = ann["bbox"]
            box = geo.box([x, y, x + w, y + h])
            if box[2] - box[0] <= _MIN_BOX_SIDE or box[3] - box[1] <= _MIN_BOX_SIDE:
                continue
            if self.mask_on:
                segm = ann.get("segmentation")
                if segm is None or (isinstance(segm, dict) and not bitmask):
                    kind = "no segmentation" if segm is None else "an RLE mask"
                    need = "a mask" if bitmask else "polygon segmentations (or INPUT.MASK_FORMAT bitmask for RLE)"
                    raise DatasetError(f"{record['file_name']}: an instance has {kind}; training with masks "
                                       f"(MODEL.MASK_ON) needs {need} for every non-crowd instance")
                if bitmask:
                    mask = decode_mask(segm, *size, where=record["file_name"])
                    masks.append(transform_mask(mask, int(geo.h), int(geo.w), geo.hflip, geo.vflip))
                else:
                    masks.append([geo.polygon(p) for p in segm])
            boxes.append(box)
            classes.append(ann["category_id"])
        instances: dict[str, Any] = {"boxes": torch.tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
                                     "classes": torch.tensor(classes, dtype=torch.int64)}
        if self.mask_on and bitmask:
            empty = np.zeros((0, int(geo.h), int(geo.w)), dtype=bool)
            instances["masks"] = torch.from_numpy(np.stack(masks) if masks else empty)
        elif self.mask_on:
            instances["masks"] = masks
        return instances


class _Geometry:
    """The resize (per-axis scale) then flip that was applied to the image, for coordinates."""

    def __init__(self, h: int, w: int, newh: int, neww: int, hflip: bool, vflip: bool) -> None:
        self.sx, self.sy = neww / w, newh / h
        self.w, self.h = float(neww), float(newh)
        self.hflip, self.vflip = hflip, vflip

    def points(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = xs * self.sx, ys * self.sy
        return (self.w - xs if self.hflip else xs), (self.h - ys if self.vflip else ys)

    def box(self, xyxy: list[float]) -> list[float]:
        """Transform the corners, take min/max, clip to the new image (detectron2's ``apply_box`` + clip)."""
        xs, ys = self.points(np.array(xyxy[0::2], dtype=np.float64), np.array(xyxy[1::2], dtype=np.float64))
        return [min(max(v, 0.0), lim) for v, lim in
                zip((xs.min(), ys.min(), xs.max(), ys.max()), (self.w, self.h, self.w, self.h))]

    def polygon(self, flat: list[float]) -> np.ndarray:
        """A flat x0, y0, x1, y1, ... polygon in new-image coordinates, float64 as detectron2's PolygonMasks
        keep it (the mask targets are rasterised from these coordinates)."""
        xs, ys = self.points(np.asarray(flat[0::2], dtype=np.float64), np.asarray(flat[1::2], dtype=np.float64))
        return np.stack([xs, ys], axis=1).reshape(-1)
