"""Converted pretrains cached by (source sha256, format, encoder choice, converter version): the same file
converts once."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from .. import atomic
from ..store import cache_dir, hash_file
from .encoders import EncoderChoice
from .pretrain import convert_to_detectron2
from .report import ConversionReport
from .writers import write_d2_pkl

# bump when the conversion's output changes, so that stale cached files are not reused
CONVERTER_VERSION = 2
_digests: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered for this process while its size and mtime stay the same."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        _digests[key] = hash_file(path)[0]
    return _digests[key]


def _choice_tag(choice: EncoderChoice) -> str:
    """The choice in a cache file name: ``-ema``, or a hash of a hand-given key / prefix."""
    if not choice.by_hand:
        return "-ema" if choice.ema else ""
    import hashlib

    return "-" + hashlib.sha256(f"{choice.key}\0{choice.prefix}\0{choice.ema}".encode()).hexdigest()[:12]


def converted_pretrain_path(source: Union[str, Path], format: Optional[str] = None, ema: bool = False,
                            choice: Optional[EncoderChoice] = None) -> Path:
    """A detectron2 ``.pkl`` of ``source``'s ResNet-50 backbone, converted on first use and cached.

    The conversion report is kept beside it as ``.json``. A partial backbone is never cached: the conversion
    refuses it (CheckpointFormatError naming what is missing).
    """
    from filelock import FileLock

    source = Path(source)
    choice = choice or EncoderChoice(ema=ema)
    name = f"{file_sha256(source)[:32]}-{format or 'auto'}{_choice_tag(choice)}-v{CONVERTER_VERSION}"
    folder = cache_dir() / "converted"
    target = folder / f"{name}.pkl"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / f"{name}.lock")):
        if target.is_file():  # another process converted it while we waited
            return target
        state, report = convert_to_detectron2(source, format=format, choice=choice)
        atomic.write_text(folder / f"{name}.json", report.to_json())
        write_d2_pkl(state, target)
    return target


def converted_pretrain(source: Union[str, Path], format: Optional[str] = None, ema: bool = False,
                       choice: Optional[EncoderChoice] = None) -> tuple[Path, ConversionReport]:
    """:func:`converted_pretrain_path` plus the conversion's report (what STRIDE_IN_1X1 / INPUT.FORMAT the
    weights need), read back from the cache."""
    import json

    path = converted_pretrain_path(source, format=format, ema=ema, choice=choice)
    return path, ConversionReport.from_dict(json.loads(path.with_suffix(".json").read_text()))
