"""Any supported pre-trained ResNet-50 -> detectron2 backbone state dict, named as PyContrast's converter names it.

Torchvision-style encoders (PyContrast, its EMA, MoCo, torchvision) lose their prefix and are renamed
``conv1 -> stem.conv1``, ``layer1..4 -> res2..5``, ``bn{i} -> conv{i}.norm``, ``downsample.0/1 ->
shortcut(.norm)``; MSRA caffe2 blobs are renamed as detectron2 renames them on load. The result is checked
against an RGB ResNet-50 (318 keys, exact shapes): anything else is refused rather than converted to nothing.

``num_batches_tracked`` is kept, as PyContrast's script keeps it: detectron2's SyncBN/BN backbones have that
buffer, so all 318 keys match. A source without it (MSRA blobs) gets 0, which no BN with momentum reads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from ..errors import ArchitectureMismatchError, CheckpointFormatError
from .arrays import as_numpy
from .formats import BACKBONE, CheckpointFormat, weights_kind
from .r50 import r50_d2_shapes
from .readers import Checkpoint, read_checkpoint
from .report import ConversionReport

_ENTRY_REASONS = {
    "model_ema": "EMA (momentum) encoder: pass ema=True / --ema to convert it instead",
    "model": "online encoder (the EMA encoder was converted)",
}


def _source_name(ckpt: Checkpoint, key: str) -> tuple[Optional[str], str]:
    """(detectron2 backbone name or None, why it was dropped when None), by the format's row."""
    layout = ckpt.layout
    if not key.startswith(ckpt.prefix):
        return None, next((why for p, why in layout.outside if key.startswith(p)), "outside the encoder")
    return layout.rename(key[len(ckpt.prefix):])


def _check_shapes(ckpt: Checkpoint, out: dict[str, Any], source_of: dict[str, str]) -> None:
    shapes = r50_d2_shapes()
    conv1 = out.get("stem.conv1.weight")
    if conv1 is not None and tuple(conv1.shape)[1:2] != (3,):
        raise ArchitectureMismatchError(
            f"{ckpt.path}: conv1 takes {tuple(conv1.shape)[1]} input channels ({source_of['stem.conv1.weight']} "
            f"has shape {tuple(conv1.shape)}); an RGB ResNet-50 needs 3")
    wrong = [(k, tuple(v.shape), shapes[k]) for k, v in out.items() if tuple(v.shape) != shapes[k]]
    if wrong:
        listed = "; ".join(f"{source_of[k]} has {got}, ResNet-50 needs {need}" for k, got, need in wrong[:4])
        raise ArchitectureMismatchError(
            f"{ckpt.path}: {len(wrong)} weights have the wrong shape for a ResNet-50 ({listed}); "
            "is it another width or depth (e.g. ResNet-18/34, a wide ResNet)?")


def _fill(out: dict[str, Any], report: ConversionReport, fmt: CheckpointFormat) -> None:
    """Add the buffers a format does not store: num_batches_tracked (any), running stats (affine-only norms)."""
    import numpy as np

    for key, shape in r50_d2_shapes().items():
        if key in out or ".norm." not in key or f"{key.rsplit('.', 1)[0]}.weight" not in out:
            continue
        param = key.rsplit(".", 1)[1]
        if param == "num_batches_tracked":
            out[key] = np.zeros((), dtype=np.int64)
        elif fmt.affine_only_norms and param in ("running_mean", "running_var"):
            out[key] = (np.zeros if param == "running_mean" else np.ones)(shape, dtype=np.float32)
        else:
            continue
        report.filled.append(key)


def convert_to_detectron2(source: Union[str, Path, Checkpoint], format: Optional[str] = None,
                          ema: bool = False) -> tuple[dict[str, Any], ConversionReport]:
    """Pretrain file (or read Checkpoint) -> ({detectron2 backbone key: numpy array}, report).

    Raises CheckpointFormatError / ArchitectureMismatchError when the weights cannot initialise an RGB
    ResNet-50 (CMC, other depths or widths, no backbone keys at all). Keys that are merely absent are
    listed in ``report.missing``.
    """
    ckpt = source if isinstance(source, Checkpoint) else read_checkpoint(source, format=format, ema=ema)
    kind = weights_kind(ckpt.state)
    if kind != BACKBONE:
        raise CheckpointFormatError(
            f"{ckpt.path}: a detector checkpoint ({kind}: {next(iter(ckpt.state))}, ...), not a backbone "
            "pretrain; use it as detector weights (load(..., weights=...) / MODEL.WEIGHTS)")
    report = ConversionReport(source=str(ckpt.path), format=ckpt.format, ema=ckpt.ema)
    report.dropped.update({entry: _ENTRY_REASONS.get(entry, "not backbone weights (top-level entry)")
                           for entry in ckpt.other_entries})
    shapes = r50_d2_shapes()
    out: dict[str, Any] = {}
    source_of: dict[str, str] = {}
    foreign: list[str] = []
    for key, value in ckpt.state.items():
        name, why = _source_name(ckpt, key)
        if name is None:
            if why.startswith("not a ResNet-50"):
                foreign.append(key)
            report.dropped[key] = why
            continue
        if name not in shapes:
            foreign.append(key)
            continue
        out[name] = as_numpy(value)
        source_of[name] = key
        if name != key:
            report.renamed[key] = name
    if not out:
        raise CheckpointFormatError(
            f"{ckpt.path}: no ResNet-50 backbone weights found as format {ckpt.format!r} (encoder prefix "
            f"{ckpt.prefix!r}, first keys {list(ckpt.state)[:5]}); choose the right --from format")
    if foreign:
        raise ArchitectureMismatchError(
            f"{ckpt.path}: {len(foreign)} encoder weights have no place in a ResNet-50 (e.g. {foreign[:4]}); "
            "is it a deeper ResNet or another network?")
    _check_shapes(ckpt, out, source_of)
    _fill(out, report, ckpt.layout)
    report.kept = [k for k in shapes if k in out]
    report.missing = [k for k in shapes if k not in out]
    ordered = {k: out[k] for k in report.kept}
    report.stride_in_1x1, report.input_format = ckpt.layout.stride_in_1x1, ckpt.layout.input_format
    if ckpt.layout.note:
        report.notes.append(ckpt.layout.note)
    return ordered, report
