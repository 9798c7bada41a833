"""What ``predict`` reads: image files, folders (recursively, by image extension) and glob patterns, expanded to
one sorted list of paths; and each image's COCO image id (the dataset's, given ``--dataset``). No torch here."""
from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Optional, Sequence

from ..errors import DatasetError

#: What a folder or a glob's match is taken for (a file named on the command line is read whatever its name).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
_GLOB_CHARS = frozenset("*?[")


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def expand_inputs(inputs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """(the images, in order, each once; the inputs that gave none, each with why). A folder gives its image files
    at any depth, sorted by path; a pattern (``*``, ``?``, ``[``; ``**`` crosses folders) its image matches."""
    images: list[Path] = []
    seen: set[Path] = set()
    problems: list[str] = []
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p))
            if not found:
                problems.append(f"{text}: a folder with no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        elif _GLOB_CHARS & set(text):
            found = sorted(Path(p) for p in glob.glob(str(path), recursive=True)
                           if Path(p).is_file() and is_image_name(Path(p)))
            if not found:
                problems.append(f"{text}: no image file matches")
        else:
            problems.append(f"{text}: no such file or folder")
            found = []
        for item in found:
            key = item.resolve()
            if key not in seen:
                seen.add(key)
                images.append(item)
    return images, problems


def assign_image_ids(paths: Sequence[Path]) -> list[int]:
    """COCO image ids: the file stems when all are distinct integers (COCO's naming), else 1, 2, 3, ..."""
    stems = [p.stem for p in paths]
    if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(paths) + 1))


def dataset_image_ids(json_file: Path, image_root: Path, paths: Sequence[Path]) -> list[Optional[int]]:
    """Each image's id in a COCO annotation file: matched by its path under ``image_root``, else by its file name
    when only one image of the dataset has it; None for an image the dataset does not list."""
    try:
        listed = json.loads(json_file.read_text(encoding="utf-8")).get("images") or []
        by_path = {str(Path(item["file_name"])): int(item["id"]) for item in listed}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{json_file}: cannot read its images' file names and ids ({exc})") from None
    names: dict[str, list[int]] = {}
    for file_name, image_id in by_path.items():
        names.setdefault(Path(file_name).name, []).append(image_id)
    root = image_root.resolve()
    ids: list[Optional[int]] = []
    for path in paths:
        full = path.resolve()
        relative = str(full.relative_to(root)) if full.is_relative_to(root) else None
        same_name = names.get(path.name, [])
        ids.append(by_path[relative] if relative in by_path else same_name[0] if len(same_name) == 1 else None)
    return ids


def png_names(paths: Sequence[Path]) -> list[str]:
    """``<stem>.png`` per image, made unique with ``_<n>`` where inputs share a stem."""
    names: list[str] = []
    taken: set[str] = set()
    for path in paths:
        name, count = f"{path.stem}.png", 0
        while name in taken:
            count += 1
            name = f"{path.stem}_{count}.png"
        taken.add(name)
        names.append(name)
    return names
