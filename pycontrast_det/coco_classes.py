"""Detector categories: :class:`CategoryMap` (a model's or a dataset's classes: contiguous index <-> category id and
name), and the 80 COCO categories in detectron2's contiguous order (COCO category id, name)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterable


@dataclass(frozen=True)
class CategoryMap:
    """Categories sorted by id; contiguous id ``i`` is ``ids[i]`` named ``names[i]`` (detectron2's mapping)."""

    ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[int, str]]) -> "CategoryMap":
        ordered = sorted((int(cid), str(name)) for cid, name in pairs)
        return cls(ids=tuple(c for c, _ in ordered), names=tuple(n for _, n in ordered))

    @classmethod
    def placeholder(cls, num_classes: int) -> "CategoryMap":
        """``class_<i>`` with id ``i``: the classes of a model nobody named."""
        return cls(ids=tuple(range(num_classes)), names=tuple(f"class_{i}" for i in range(num_classes)))

    def __len__(self) -> int:
        return len(self.ids)

    def to_contiguous(self, dataset_id: int) -> int:
        """Dataset category id -> 0..K-1."""
        return self.contiguous_ids[dataset_id]

    def to_dataset(self, contiguous_id: int) -> int:
        """0..K-1 -> dataset category id (for COCO results files)."""
        return self.ids[contiguous_id]

    @cached_property
    def contiguous_ids(self) -> dict[int, int]:
        """dataset id -> contiguous id."""
        return {cid: i for i, cid in enumerate(self.ids)}

COCO_CATEGORIES: list[tuple[int, str]] = [
    (1, 'person'),
    (2, 'bicycle'),
    (3, 'car'),
    (4, 'motorcycle'),
    (5, 'airplane'),
    (6, 'bus'),
    (7, 'train'),
    (8, 'truck'),
    (9, 'boat'),
    (10, 'traffic light'),
    (11, 'fire hydrant'),
    (13, 'stop sign'),
    (14, 'parking meter'),
    (15, 'bench'),
    (16, 'bird'),
    (17, 'cat'),
    (18, 'dog'),
    (19, 'horse'),
    (20, 'sheep'),
    (21, 'cow'),
    (22, 'elephant'),
    (23, 'bear'),
    (24, 'zebra'),
    (25, 'giraffe'),
    (27, 'backpack'),
    (28, 'umbrella'),
    (31, 'handbag'),
    (32, 'tie'),
    (33, 'suitcase'),
    (34, 'frisbee'),
    (35, 'skis'),
    (36, 'snowboard'),
    (37, 'sports ball'),
    (38, 'kite'),
    (39, 'baseball bat'),
    (40, 'baseball glove'),
    (41, 'skateboard'),
    (42, 'surfboard'),
    (43, 'tennis racket'),
    (44, 'bottle'),
    (46, 'wine glass'),
    (47, 'cup'),
    (48, 'fork'),
    (49, 'knife'),
    (50, 'spoon'),
    (51, 'bowl'),
    (52, 'banana'),
    (53, 'apple'),
    (54, 'sandwich'),
    (55, 'orange'),
    (56, 'broccoli'),
    (57, 'carrot'),
    (58, 'hot dog'),
    (59, 'pizza'),
    (60, 'donut'),
    (61, 'cake'),
    (62, 'chair'),
    (63, 'couch'),
    (64, 'potted plant'),
    (65, 'bed'),
    (67, 'dining table'),
    (70, 'toilet'),
    (72, 'tv'),
    (73, 'laptop'),
    (74, 'mouse'),
    (75, 'remote'),
    (76, 'keyboard'),
    (77, 'cell phone'),
    (78, 'microwave'),
    (79, 'oven'),
    (80, 'toaster'),
    (81, 'sink'),
    (82, 'refrigerator'),
    (84, 'book'),
    (85, 'clock'),
    (86, 'vase'),
    (87, 'scissors'),
    (88, 'teddy bear'),
    (89, 'hair drier'),
    (90, 'toothbrush'),
]

COCO_CLASS_NAMES: list[str] = [name for _, name in COCO_CATEGORIES]

CONTIGUOUS_TO_COCO_ID: dict[int, int] = {i: cid for i, (cid, _) in enumerate(COCO_CATEGORIES)}

COCO: CategoryMap = CategoryMap.from_pairs(COCO_CATEGORIES)
