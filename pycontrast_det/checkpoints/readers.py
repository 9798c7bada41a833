"""Read any supported checkpoint file safely into a flat ``{name: tensor or ndarray}`` and say what it is.

Files: torch ``.pth``/``.pth.tar`` (``torch.load(weights_only=True)``, memory-mapped when the file is a zip
archive so that optimizer state and memory banks are never read), ``.pkl`` (restricted unpickler),
``.safetensors``. Formats (detected, or chosen by name): see :data:`FORMATS`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..errors import CheckpointFormatError, UnsafeCheckpointError
from .formats import CONVERTIBLE, CheckpointFormat, canonical_name, detect_format, format_named
from .safe_pickle import load_pickle

FORMATS = CONVERTIBLE  # name -> description of every format that can initialise a ResNet-50
#: The safetensors header key this package writes its metadata under (a JSON object; e.g. the classes).
SAFETENSORS_METADATA_KEY = "pycontrast_det"
_CONTAINERS = ("model", "state_dict", "blobs")


@dataclass
class Checkpoint:
    """The weights of one file: ``state`` keeps the file's own names; ``prefix`` is the encoder prefix in them."""

    path: Path
    format: str
    state: dict[str, Any]
    prefix: str
    ema: bool
    other_entries: tuple[str, ...]  # what was not read as weights: optimizer, epoch, contrast, ...
    metadata: dict[str, Any] = field(default_factory=dict)  # top-level entries of plain data (no arrays)

    @property
    def layout(self) -> CheckpointFormat:
        """The format's row (:mod:`.formats`)."""
        return format_named(self.format)


def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _load_object(path: Path) -> Any:
    """The file's top-level object, built without running code from it."""
    if path.name.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise CheckpointFormatError(f"{path}: not a readable safetensors file ({exc})") from exc
    with open(path, "rb") as f:
        head = f.read(64)
    if head.lstrip()[:1] == b"<":
        raise CheckpointFormatError(
            f"{path}: this is an HTML page, not weights (a dead or throttled download link?); delete it and "
            "download the file again, or from a mirror")
    is_zip = head[:4] == b"PK\x03\x04"
    if not is_zip and path.suffix in (".pkl", ".pickle"):
        return load_pickle(path)
    if not is_zip and head[:1] != b"\x80":  # neither torch's zip archive nor a (legacy) pickle
        kind = "a text file" if _is_text(head) else "some other binary file"
        raise CheckpointFormatError(f"{path}: not a checkpoint, it is {kind}; give a .pth (torch.save), .pkl "
                                    f"(detectron2) or .safetensors file")
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        refused = _REFUSED_GLOBAL.search(str(exc))
        if refused is None:  # not a refusal: the bytes are no (complete) torch checkpoint
            raise CheckpointFormatError(f"{path}: not a readable torch checkpoint (truncated or corrupt?): "
                                        f"{_torch_reason(str(exc))}") from None
        raise UnsafeCheckpointError(
            f"{path}: refused: would run code on load (it asks for {refused.group(1)}, which is not a tensor or "
            f"plain data; blocked by torch.load(weights_only=True)); re-save the state_dict alone from a trusted "
            f"environment, or use .safetensors") from None
    except Exception as exc:
        raise CheckpointFormatError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: "
                                    f"{_torch_reason(str(exc))})") from None


#: How torch names a global its weights-only unpickler refused (2.x wordings: "Unsupported global: GLOBAL x.y
#: was not an allowed global", "unsupported GLOBAL x.y whose module z is blocked").
_REFUSED_GLOBAL = re.compile(r"(?i)unsupported global:?\s+(?:GLOBAL\s+)?([\w.]+)")


def _torch_reason(message: str) -> str:
    """The line of a torch.load error that says what is wrong, without its advice to load unsafely."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [x for x in lines if "weights_only" not in x and not x.startswith("Check the documentation")]
    return (useful or ["unknown reason"])[0]


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch >= 32 or ch in (9, 10, 13) for ch in head)


def _is_plain(value: Any) -> bool:
    """Plain data (str, numbers, None, and lists / dicts of them): metadata such as a stored config or class names."""
    if isinstance(value, (str, int, float, bool, type(None))):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def _container(obj: Mapping[str, Any], ema: Optional[CheckpointFormat],
               path: Path) -> tuple[Optional[str], Mapping[str, Any]]:
    """Which top-level entry holds the weights (None: the object itself is the flat weights dict)."""
    if ema is not None and ema.ema_entry is not None:
        if not isinstance(obj.get(ema.ema_entry), Mapping):
            raise CheckpointFormatError(
                f"{path}: --ema asked for, but the file has no {ema.ema_entry!r} entry (top-level keys: "
                f"{sorted(map(str, obj))[:10]}); only PyContrast's MoCo/MoCov2/InfoMin checkpoints have one")
        return ema.ema_entry, obj[ema.ema_entry]
    for name in _CONTAINERS:
        if isinstance(obj.get(name), Mapping):
            return name, obj[name]
    return None, obj


def _prefix(fmt: CheckpointFormat, keys: list[str]) -> str:
    for prefix in fmt.prefixes:
        if prefix and any(k.startswith(prefix) for k in keys):
            return prefix
    return ""


def _chosen_format(format: Optional[str], ema: bool, path: Path) -> tuple[Optional[CheckpointFormat],
                                                                          Optional[CheckpointFormat]]:
    """(the row ``format`` names, or None to detect it; the row whose EMA entry to read, or None)."""
    try:
        name = canonical_name(format) if format is not None else None
    except KeyError:
        raise CheckpointFormatError(f"unknown checkpoint format {format!r}; choose one of {sorted(FORMATS)}") from None
    fmt = format_named(name) if name is not None else None
    if fmt is not None and fmt.refusal:
        raise CheckpointFormatError(f"{path}: this is {fmt.refusal}")
    if not ema:
        return fmt, None
    with_ema = fmt or format_named("pycontrast")
    if with_ema.ema_entry is None:
        raise CheckpointFormatError(f"--ema applies only to PyContrast checkpoints, not to format {format!r}")
    return fmt, with_ema


def read_checkpoint(path: Union[str, Path], format: Optional[str] = None, ema: bool = False) -> Checkpoint:
    """Read ``path`` safely; ``format`` (a key of FORMATS, or the zoo manifest's name for one) overrides
    detection; ``ema`` picks ``model_ema``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError(f"{path}: no such checkpoint file")
    fmt, ema_fmt = _chosen_format(format, ema, path)
    obj = _load_object(path)
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{path}: expected a dict of weights, found a {type(obj).__name__}")
    name, weights = _container(obj, ema_fmt, path)
    state = {str(k): v for k, v in weights.items() if _is_array(v)}
    skipped = [f"{name}.{k}" if name else str(k) for k, v in weights.items() if not _is_array(v)]
    keys = list(state)
    detected = detect_format(keys)
    if detected is not None and detected.refusal:
        raise CheckpointFormatError(f"{path}: this is {detected.refusal}")
    fmt = fmt or detected
    if fmt is None:
        raise CheckpointFormatError(
            f"{path}: unknown checkpoint layout (weights under {name or 'the top level'}, first keys "
            f"{keys[:5]}); pass the format explicitly, one of {sorted(FORMATS)}")
    if ema_fmt is not None and fmt is not ema_fmt:
        raise CheckpointFormatError(f"{path}: {ema_fmt.ema_entry!r} holds no PyContrast encoder "
                                    f"(first keys {keys[:5]})")
    others = [str(k) for k in obj if k != name] if name else []
    metadata = {str(k): v for k, v in obj.items() if k != name and _is_plain(v)} if name else {}
    if path.name.endswith(".safetensors"):
        metadata = safetensors_metadata(path)
    return Checkpoint(path=path, format=fmt.name, state=state, prefix=_prefix(fmt, keys), ema=ema,
                      other_entries=tuple(others + skipped), metadata=metadata)


def safetensors_metadata(path: Path) -> dict[str, Any]:
    """The plain entries of the JSON object this package stores in a safetensors header (none in other files)."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        text = (f.metadata() or {}).get(SAFETENSORS_METADATA_KEY)
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        raise CheckpointFormatError(f"{path}: its {SAFETENSORS_METADATA_KEY!r} header is not JSON") from None
    return {str(k): v for k, v in data.items() if _is_plain(v)} if isinstance(data, dict) else {}
