"""Read any supported checkpoint file safely into a flat ``{name: tensor or ndarray}`` and say what it is.

Files: torch ``.pth``/``.pth.tar`` (``torch.load(weights_only=True)``, memory-mapped when the file is a zip
archive so that optimizer state and memory banks are never read), ``.pkl`` (restricted unpickler),
``.safetensors``. Formats (detected, or chosen by name): see :data:`FORMATS`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..errors import CheckpointFormatError, UnsafeCheckpointError
from .safe_pickle import load_pickle

FORMATS: dict[str, str] = {
    "pycontrast": "PyContrast: {'model': {'module.encoder.*'}, ...}; with ema, {'model_ema': {'encoder.*'}}",
    "moco": "MoCo: {'state_dict': {'module.encoder_q.*', 'module.encoder_k.*', 'module.queue'}, ...}",
    "torchvision": "plain torchvision ResNet state dict: conv1, bn1, layer1..4, fc",
    "msra_c2": "MSRA caffe2 blobs as detectron2 ships them: conv1_w, res_conv1_bn_s, res2_0_branch2a_w, ...",
    "detectron2": "detectron2: {'model': {name: array}} (.pkl model zoo, .pth training checkpoints)",
}

# encoder prefixes (inside the chosen weights dict) each format may use, most specific first
_PREFIXES: dict[str, tuple[str, ...]] = {
    "pycontrast": ("module.encoder.", "encoder."),
    "moco": ("module.encoder_q.",),
    "torchvision": ("module.", ""),
    "msra_c2": ("",),
    "detectron2": ("",),
}
# the zoo manifest's names for the same layouts (None: the file type only, detect the layout)
_ALIASES: dict[str, Optional[str]] = {"detectron2_pkl": "detectron2", "safetensors": None, "pycontrast_cmc": "cmc"}
_CMC_PREFIXES = ("module.encoder1.", "module.encoder2.", "encoder1.", "encoder2.")
_C2_NAME = re.compile(r"(conv1_w|res_conv1_bn_[sb]|res\d+_\d+_branch\w+)\Z")
_D2_NAME = re.compile(r"(module\.)?(stem\.|res\d\.|backbone\.|roi_heads\.|proposal_generator\.)")
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
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines()]
        refused = next((line for line in lines if "Unsupported global" in line), None)
        if refused is None:  # not a refusal: the bytes are no (complete) torch checkpoint
            raise CheckpointFormatError(f"{path}: not a readable torch checkpoint (truncated or corrupt?): "
                                        f"{next((x for x in lines if 'Unsupported' in x), lines[0])}") from exc
        raise UnsafeCheckpointError(
            f"{path}: refused: torch.load(weights_only=True) found objects that are not tensors or plain data "
            f"({refused.split(' was not', 1)[0].replace('WeightsUnpickler error: ', '')}); "
            "re-save the state_dict alone from a trusted environment") from exc
    except Exception as exc:
        raise CheckpointFormatError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from exc


def detect_format(keys: list[str]) -> Optional[str]:
    """The format a flat weights dict's key names belong to, or None."""
    if any(k.startswith(_CMC_PREFIXES) for k in keys):
        return "cmc"
    for fmt in ("moco", "pycontrast"):
        if any(k.startswith(p) for k in keys for p in _PREFIXES[fmt]):
            return fmt
    if any(_C2_NAME.match(k) for k in keys):
        return "msra_c2"
    if "conv1.weight" in keys or "module.conv1.weight" in keys:
        return "torchvision"
    if any(_D2_NAME.match(k) for k in keys):
        return "detectron2"
    return None


def _container(obj: Mapping[str, Any], ema: bool, path: Path) -> tuple[Optional[str], Mapping[str, Any]]:
    """Which top-level entry holds the weights (None: the object itself is the flat weights dict)."""
    if ema:
        if not isinstance(obj.get("model_ema"), Mapping):
            raise CheckpointFormatError(
                f"{path}: --ema asked for, but the file has no 'model_ema' entry (top-level keys: "
                f"{sorted(map(str, obj))[:10]}); only PyContrast's MoCo/MoCov2/InfoMin checkpoints have one")
        return "model_ema", obj["model_ema"]
    for name in _CONTAINERS:
        if isinstance(obj.get(name), Mapping):
            return name, obj[name]
    return None, obj


def _prefix(fmt: str, keys: list[str]) -> str:
    for prefix in _PREFIXES[fmt]:
        if prefix and any(k.startswith(prefix) for k in keys):
            return prefix
    return ""


def _cmc_message(path: Path) -> str:
    return (f"{path}: this is a CMC checkpoint (module.encoder1.* / module.encoder2.*): two half-width ResNets "
            "on the L and ab channels of Lab images, which cannot initialise an RGB ResNet-50; use another "
            "pretrain (InstDis, PIRL, MoCo, MoCov2, InfoMin)")


def read_checkpoint(path: Union[str, Path], format: Optional[str] = None, ema: bool = False) -> Checkpoint:
    """Read ``path`` safely; ``format`` (a key of FORMATS, or the zoo manifest's name for one) overrides
    detection; ``ema`` picks ``model_ema``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError(f"{path}: no such checkpoint file")
    format = _ALIASES.get(format, format) if format is not None else None
    if format == "cmc":
        raise CheckpointFormatError(_cmc_message(path))
    if format is not None and format not in FORMATS:
        raise CheckpointFormatError(f"unknown checkpoint format {format!r}; choose one of {sorted(FORMATS)}")
    if ema and format not in (None, "pycontrast"):
        raise CheckpointFormatError(f"--ema applies only to PyContrast checkpoints, not to format {format!r}")
    obj = _load_object(path)
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{path}: expected a dict of weights, found a {type(obj).__name__}")
    name, weights = _container(obj, ema, path)
    state = {str(k): v for k, v in weights.items() if _is_array(v)}
    skipped = [f"{name}.{k}" if name else str(k) for k, v in weights.items() if not _is_array(v)]
    keys = list(state)
    detected = detect_format(keys)
    if detected == "cmc":
        raise CheckpointFormatError(_cmc_message(path))
    fmt = format or detected
    if fmt is None:
        raise CheckpointFormatError(
            f"{path}: unknown checkpoint layout (weights under {name or 'the top level'}, first keys "
            f"{keys[:5]}); pass the format explicitly, one of {sorted(FORMATS)}")
    prefix = _prefix(fmt, keys)
    if ema and fmt != "pycontrast":
        raise CheckpointFormatError(f"{path}: 'model_ema' holds no PyContrast encoder (first keys {keys[:5]})")
    others = [str(k) for k in obj if k != name] if name else []
    return Checkpoint(path=path, format=fmt, state=state, prefix=prefix, ema=ema,
                      other_entries=tuple(others + skipped))
