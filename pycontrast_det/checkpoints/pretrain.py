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
from typing import Any, Mapping, Optional, Union

from ..errors import ArchitectureMismatchError, CheckpointFormatError
from .arrays import as_numpy
from .encoders import (
    EncoderChoice, Located, containers, group_of, group_reason, is_detector, locate, tensor_count,
)
from .formats import CheckpointFormat, canonical_name, format_named
from .r50 import r50_d2_shapes
from .readers import Checkpoint, _load_object
from .report import ConversionReport

_ENTRY_REASONS = {
    "model_ema": "EMA (momentum) encoder: pass ema=True / --ema to convert it instead",
    "model": "online encoder (the EMA encoder was converted)",
}
_UNKNOWN_CONVENTION = "detectron2 names: the file does not say its input convention; the config's is used"


def _check_shapes(source: str, out: dict[str, Any], source_of: dict[str, str]) -> None:
    shapes = r50_d2_shapes()
    conv1 = out.get("stem.conv1.weight")
    if conv1 is not None and tuple(conv1.shape)[1:2] != (3,):
        raise ArchitectureMismatchError(
            f"{source}: conv1 takes {tuple(conv1.shape)[1]} input channels ({source_of['stem.conv1.weight']} "
            f"has shape {tuple(conv1.shape)}); an RGB ResNet-50 needs 3")
    wrong = [(k, tuple(v.shape), shapes[k]) for k, v in out.items() if tuple(v.shape) != shapes[k]]
    if wrong:
        listed = "; ".join(f"{source_of[k]} has {got}, ResNet-50 needs {need}" for k, got, need in wrong[:4])
        raise ArchitectureMismatchError(
            f"{source}: {len(wrong)} weights have the wrong shape for a ResNet-50 ({listed}); "
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


def _row(format: Optional[str], source: str) -> Optional[CheckpointFormat]:
    """The row a format name (a table name or a manifest alias) stands for; None: find the encoder by structure."""
    try:
        name = canonical_name(format) if format is not None else None
    except KeyError:
        from .formats import CONVERTIBLE

        raise CheckpointFormatError(
            f"unknown checkpoint format {format!r}; choose one of {sorted(CONVERTIBLE)}") from None
    row = format_named(name) if name is not None else None
    if row is not None and row.refusal:
        raise CheckpointFormatError(f"{source}: this is {row.refusal}")
    return row


def find_encoder(source: Union[str, Path, Checkpoint], format: Optional[str] = None,
                 choice: Optional[EncoderChoice] = None) -> Located:
    """The ResNet-50 encoder of a pretrain file (or of a read Checkpoint's tensors), found by structure
    (:mod:`.encoders`); CheckpointFormatError for a detector, which is no backbone pretrain."""
    if isinstance(source, Checkpoint):
        return encoder_of(source.state, source.path, format or source.format, choice)
    path = Path(source)
    if not path.is_file():
        raise CheckpointFormatError(f"{path}: no such checkpoint file")
    _row(format, str(path))  # a refused format is refused before the file is read
    return encoder_of(load_tree(path), path, format, choice)


def load_tree(path: Path) -> dict[str, Any]:
    """A checkpoint file's top-level dict, read without running code from it (:mod:`.readers`)."""
    root = _load_object(path)
    if not isinstance(root, dict):
        raise CheckpointFormatError(f"{path}: expected a dict of weights, found a {type(root).__name__}")
    return root


def encoder_of(root: Mapping[str, Any], path: Path, format: Optional[str] = None,
               choice: Optional[EncoderChoice] = None) -> Located:
    """:func:`~.encoders.locate` on a file's top-level dict, refusing detectors and refused formats first."""
    row = _row(format, str(path))
    detector = is_detector(root)
    if detector is not None:
        raise CheckpointFormatError(
            f"{path}: a detector checkpoint ({detector[2]}: {next(iter(detector[1]))}, ...), not a backbone "
            "pretrain; use it as detector weights (load(..., weights=...) / MODEL.WEIGHTS)")
    return locate(root, str(path), choice or EncoderChoice(), row)


def _dropped(found: Located, report: ConversionReport) -> None:
    """Everything outside the chosen encoder, per key of its tensor set and per top-level entry of the file
    (``report.dropped``), and by group with counts (``report.groups``)."""
    chosen = found.chosen
    counts: dict[str, list[Any]] = {}

    def count(group: str, why: str, n: int = 1) -> None:
        counts.setdefault(group, [0, why])[0] += n

    inside = set(chosen.names.values())
    for key in found.state:
        if key in inside:
            continue
        if key.startswith(chosen.prefix):
            group = chosen.prefix + group_of(key[len(chosen.prefix):])
            why = chosen.scheme.rename(key[len(chosen.prefix):])[1]
            if why.startswith("not a ResNet-50"):  # nothing the scheme knows: say what the group is
                why = group_reason(group, found.others, chosen.container)
        else:
            group = next((c.prefix + "*" for c in found.others if c.container == chosen.container
                          and c.prefix and key.startswith(c.prefix)), group_of(key, chosen.prefix))
            why = next((w for p, w in found.row.outside if key.startswith(p)),
                       group_reason(group, found.others, chosen.container))
        report.dropped[key] = why
        count(group, why)
    for path, arrays in containers(found.root):
        if path == chosen.container:
            continue
        shared = next((i for i, (a, b) in enumerate(zip(path, chosen.container)) if a != b),
                      min(len(path), len(chosen.container)))
        for key in arrays:
            group = (".".join(path[:shared + 1]) + ".*" if len(path) > shared
                     else ".".join([*path, group_of(key)]))
            count(group, group_reason(group, found.others))
    top = chosen.container[0] if chosen.container else None
    for entry, value in found.root.items():
        name = str(entry)
        if name == top or (top is None and hasattr(value, "shape")):
            continue
        tensors = _count_arrays(value)
        report.dropped[name] = _ENTRY_REASONS.get(name, "") if tensors and name in _ENTRY_REASONS else (
            group_reason(f"{name}.*", found.others) if tensors else "not tensors")
        if not isinstance(value, Mapping) or not tensors:
            counts[f"{name}.*" if tensors else name] = [tensors, report.dropped[name]]
    report.groups = [f"{g} ({tensor_count(n)}, {why})" if n else f"{g} ({why})" for g, (n, why) in counts.items()]


def _count_arrays(value: Any) -> int:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return 1
    if isinstance(value, Mapping):
        return sum(_count_arrays(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_count_arrays(v) for v in value)
    return 0


def convert_to_detectron2(source: Union[str, Path, Checkpoint, Located], format: Optional[str] = None,
                          ema: bool = False, choice: Optional[EncoderChoice] = None
                          ) -> tuple[dict[str, Any], ConversionReport]:
    """Pretrain file (or read Checkpoint, or an encoder already found) -> ({detectron2 backbone key: numpy
    array}, report). ``choice`` picks among several encoders (``ema`` is a shorthand for its ``ema``).

    Raises CheckpointFormatError / ArchitectureMismatchError when the weights cannot initialise an RGB
    ResNet-50 (CMC, other depths or widths, ViTs, a partial ResNet-50, a detector).
    """
    choice = choice or EncoderChoice(ema=ema)
    found = source if isinstance(source, Located) else find_encoder(source, format, choice)
    chosen, row = found.chosen, found.row
    report = ConversionReport(source=found.source, format=row.name, ema=choice.ema,
                              container=".".join(chosen.container), prefix=chosen.prefix, names=chosen.scheme.name,
                              chosen=found.reason, also=[c.describe() for c in found.others],
                              convention=row.note or _UNKNOWN_CONVENTION)
    _dropped(found, report)
    shapes = r50_d2_shapes()
    out: dict[str, Any] = {}
    source_of: dict[str, str] = {}
    foreign = [key for name, key in chosen.names.items() if name not in shapes]
    if foreign:
        raise ArchitectureMismatchError(
            f"{found.source}: {len(foreign)} encoder weights have no place in a ResNet-50 (e.g. {foreign[:4]}); "
            "is it another network?")
    for name, key in chosen.names.items():
        out[name] = as_numpy(found.state[key])
        source_of[name] = key
        if name != key:
            report.renamed[key] = name
    _check_shapes(found.source, out, source_of)
    _fill(out, report, row)
    report.kept = [k for k in shapes if k in out]
    report.missing = [k for k in shapes if k not in out]
    report.stride_in_1x1, report.input_format = row.stride_in_1x1, row.input_format
    return {k: out[k] for k in report.kept}, report
