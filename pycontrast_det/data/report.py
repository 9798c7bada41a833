"""What a dataset split holds and what is wrong with it: counted while its records are read, printed before
training and by ``finetune --dry-run``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..errors import DatasetError

#: problem kind -> how the report names it (and what was done about it)
PROBLEMS: dict[str, str] = {
    "missing_image": "missing image files",
    "unknown_category": "unknown category ids (objects skipped)",
    "outside": "boxes outside the image (clipped)",
    "zero_size": "zero-size boxes (skipped)",
    "empty": "images without objects",
}
FATAL = ("missing_image",)
_EXAMPLES = 3


@dataclass
class DatasetReport:
    """Images, objects per class, mask kinds, and each problem kind with its count and first examples."""

    name: str
    split: str
    where: str
    class_names: tuple[str, ...]
    images: int = 0
    objects: dict[str, int] = field(default_factory=dict)
    masks: dict[str, int] = field(default_factory=dict)  # "polygon" / "rle" / "none" -> non-crowd objects
    problems: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    empty_skipped: bool = False  # training: images without objects are left out (FILTER_EMPTY_ANNOTATIONS)

    def add(self, kind: str, example: str) -> None:
        """Count one problem of ``kind``; the first few keep an example."""
        self.problems[kind] = self.problems.get(kind, 0) + 1
        kept = self.examples.setdefault(kind, [])
        if len(kept) < _EXAMPLES:
            kept.append(example)

    @property
    def num_objects(self) -> int:
        return sum(self.objects.values())

    def lines(self) -> list[str]:
        """The report as printed: one line for the split, one per problem kind."""
        per_class = ", ".join(f"{name} {self.objects.get(name, 0)}" for name in self.class_names)
        lines = [f"{self.split} {self.name}: {self.where}: {self.images} images, {self.num_objects} objects "
                 f"({per_class})"]
        for kind, label in PROBLEMS.items():
            if kind in self.problems:
                if kind == "empty":
                    label += " (skipped in training, as DATALOADER.FILTER_EMPTY_ANNOTATIONS)" if \
                        self.empty_skipped else " (kept)"
                lines.append(f"  {self.problems[kind]} {label}: {', '.join(self.examples[kind])}"
                             + (", ..." if self.problems[kind] > len(self.examples[kind]) else ""))
        return lines

    def fatal(self) -> Optional[str]:
        """The one-line reason training on this split would be meaningless, or None."""
        where = f"{self.split} split {self.name} ({self.where})"
        for kind in FATAL:
            if kind in self.problems:
                return (f"{where}: {self.problems[kind]} {PROBLEMS[kind]} (e.g. {self.examples[kind][0]}); add the "
                        "images or remove them from the annotations")
        if self.images == 0 and not self.problems.get("empty"):
            return f"{where}: no images; the annotations list none"
        if self.num_objects == 0:
            if self.images == 0:
                return f"{where}: no objects in its {self.problems['empty']} images; annotate some"
            return f"{where}: no objects in its {self.images} images; annotate some (every box was unusable or absent)"
        return None

    def check(self) -> None:
        """DatasetError with :meth:`fatal`'s line, if any."""
        reason = self.fatal()
        if reason:
            raise DatasetError(reason)
