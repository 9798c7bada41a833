"""One loading path: a weights spec -> a verified local file -> what it holds -> tensors under a model's names.

Every way of giving weights goes through here: ``load(cfg, weights=...)``, MODEL.WEIGHTS of a training run,
``reproduce``'s pretrain, ``convert`` and the detectron2 backend.

A spec (:func:`resolve_weights`) is a local path (or ``file://``), an ``http(s)://`` / ``hf://`` URL (fetched
through the store's verified cache), a ``detectron2://`` name of a zoo pretrain, a published folder
(``hf://org/repo/<entry>`` or its copy on disk: its verified ``model.safetensors``), a zoo entry name (its
published detector; for a row without one, its pretrain) or a zoo pretrain name (:mod:`.names` says which; a file
may end in ``#key=...`` / ``#prefix=...`` to pick a pretrain's encoder). What a file holds is decided by one
rule, :func:`~.formats.weights_kind`; a pretrain's ResNet-50 is found by structure (:mod:`.encoders`).
:func:`map_weights` puts the file onto a model given as plain data (:class:`ModelTarget`: this layer does not know
the model class) and says what it did (:class:`LoadReport`):

- a detector file must give every weight of the model (a ``num_batches_tracked`` counter excepted);
- the class-dependent layers (box classifier and regressor, mask predictor) are re-initialised, i.e. left as
  the model initialised them, when their shapes differ (another number of classes), as detectron2 does;
- any other shape difference, and any weight with no place in the model, is an ArchitectureMismatchError;
- a backbone pretrain is converted (one row per format in :mod:`.formats`), checked against the config's
  stride placement and input channel order, and fills the backbone; every other weight keeps its init.

Checkpoints written by this package's trainer also carry their classes (:data:`CLASSES_KEY`) and may carry
their config (:data:`CONFIG_KEY`, YAML text); :meth:`OpenedWeights.stored_config` falls back to the
``config.yaml`` a training run writes beside its checkpoints.
"""
from __future__ import annotations

import difflib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

from .. import atomic
from ..coco_classes import CategoryMap
from ..errors import ArchitectureMismatchError, CheckpointFormatError, ConfigError, UnknownEntryError
from .arrays import as_float32_tensor
from .cache import converted_pretrain
from .detectron2 import CLASS_DEPENDENT, backbone_to_detector, d2_to_model
from .formats import BACKBONE, DETECTOR_D2, DETECTOR_OURS, detect_format
from .encoders import EncoderChoice, Located, is_detector
from .names import Kind, parse_name
from .pretrain import convert_to_detectron2, encoder_of, load_tree
from .published import resolve_published
from .readers import Checkpoint, _is_plain
from .report import ConversionReport

if TYPE_CHECKING:
    from ..zoo import Zoo

CLASSES_KEY = "classes"  # {"names": [...], "ids": [...]}: contiguous class i is dataset category ids[i], names[i]
CONFIG_KEY = "config"  # the training config as YAML text
CONFIG_BESIDE = "config.yaml"  # what a training run writes beside its checkpoints
_COUNTER = "num_batches_tracked"
MASK_BRANCH = ("roi_heads.mask_head.", "roi_heads.mask_predictor.")  # what a box-only model lacks


@dataclass(frozen=True)
class WeightsFile:
    """A weights spec resolved to a verified local file; ``format`` is the manifest's (None: detect it);
    ``choice``: which encoder of a pretrain to take (``FILE#key=...``, see :mod:`.names`)."""

    spec: str
    path: Path
    format: Optional[str] = None
    origin: str = "file"  # what it is, for messages: a file, a URL, a zoo entry's detector, a pretrain
    choice: EncoderChoice = EncoderChoice()


def resolve_weights(spec: Union[str, os.PathLike], *, zoo: Optional["Zoo"] = None,
                    quiet: bool = False) -> Optional[WeightsFile]:
    """The local, verified file of a weights spec (what it names: :func:`~.names.parse_name`); None when the spec
    names a zoo entry or pretrain whose weights are random initialisation. Downloads go through the store's cache."""
    name = parse_name(spec, zoo=zoo)
    text, kind = name.text, name.kind
    if kind is Kind.FILE and name.path is not None:
        return WeightsFile(name.spec, name.path, choice=name.choice)
    if kind is Kind.MISSING_FILE:
        raise ConfigError(f"weights {text!r}: no such file")
    if kind is Kind.DETECTRON2:
        return _detectron2_name(text, _zoo(zoo), quiet)
    if kind is Kind.PUBLISHED:
        folder = resolve_published(text, quiet=quiet)
        assert folder.weights is not None  # asked for: PublishError when the folder has none
        return WeightsFile(text, folder.weights, origin=f"the detector of the published folder {text}")
    if kind is Kind.URL:
        from ..store import fetch_url

        return WeightsFile(name.spec, fetch_url(text, quiet=quiet), origin="URL", choice=name.choice)
    if kind is Kind.ENTRY:
        return _entry_weights(_zoo(zoo), text, quiet)
    if kind is Kind.PRETRAIN:
        return _pretrain_weights(_zoo(zoo), text, quiet, f"pretrain {text}")
    if kind is Kind.CONFIG:
        raise ConfigError(f"weights {text!r}: a config, not weights; give it as the config and the weights apart")
    zoo = _zoo(zoo)
    close = difflib.get_close_matches(text, [*zoo.entries, *zoo.pretrains], n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownEntryError(f"unknown entry or pretrain {text!r}, and no such file.{hint} Weights are a file, a URL, "
                            "a zoo entry or a pretrain (`pycontrast-zoo list` shows them)")


def _zoo(zoo: Optional["Zoo"]) -> "Zoo":
    from ..zoo import load_manifest

    return zoo or load_manifest()


def _entry_weights(zoo: "Zoo", name: str, quiet: bool) -> Optional[WeightsFile]:
    entry = zoo.entry(name)
    if entry.model is None:
        origin = f"pretrain {entry.pretrain} of zoo entry {name} (no detector was published for this row)"
        return _pretrain_weights(zoo, entry.pretrain, quiet, origin)
    from .sources import fetch_entry_file

    path = fetch_entry_file(name, "model", zoo=zoo, quiet=quiet)
    return WeightsFile(name, path, entry.model.format, f"the published detector of zoo entry {name}")


def _pretrain_weights(zoo: "Zoo", name: str, quiet: bool, origin: str) -> Optional[WeightsFile]:
    if zoo.pretrain(name).file is None:
        return None
    from .sources import fetch_pretrain

    path, file = fetch_pretrain(name, zoo=zoo, quiet=quiet)
    return WeightsFile(name, path, file.format, origin)


def _detectron2_name(text: str, zoo: "Zoo", quiet: bool) -> Optional[WeightsFile]:
    for pretrain in zoo.pretrains.values():
        if pretrain.file is not None and text in (pretrain.file.published_url, *pretrain.file.urls):
            return _pretrain_weights(zoo, pretrain.name, quiet, f"pretrain {pretrain.name}")
    raise ConfigError(f"weights {text}: not a pretrain of the zoo manifest; download it and give the local file")


@dataclass(frozen=True)
class OpenedWeights:
    """A resolved file, read safely, with what it holds (``kind``: formats.DETECTOR_OURS / DETECTOR_D2 / BACKBONE)."""

    file: WeightsFile
    checkpoint: Checkpoint
    kind: str
    encoder: Optional[Located] = None  # a backbone pretrain's ResNet-50, found by structure

    @property
    def classes(self) -> Optional[CategoryMap]:
        """The class names and category ids stored with the weights (None: the file does not say)."""
        return classes_from(self.checkpoint.metadata, self.file.path)

    def stored_config(self) -> Union[Path, dict, None]:
        """The config the weights were trained with: stored in the file (parsed YAML), else the ``config.yaml``
        beside it, else None."""
        text = self.checkpoint.metadata.get(CONFIG_KEY)
        if isinstance(text, str):
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise CheckpointFormatError(f"{self.file.path}: its stored config is not valid YAML ({exc})") from None
            if isinstance(data, dict):
                return data
        beside = self.file.path.parent / CONFIG_BESIDE
        return beside if beside.is_file() else None


def open_weights(spec: Union[str, os.PathLike], *, zoo: Optional["Zoo"] = None,
                 quiet: bool = False) -> Optional[OpenedWeights]:
    """:func:`resolve_weights`, then the file read (never running code from it) and classified: a detector (its
    tensor set with detector parts), else a backbone pretrain whose ResNet-50 is found now (errors come early)."""
    file = resolve_weights(spec, zoo=zoo, quiet=quiet)
    if file is None:
        return None
    root = load_tree(file.path)
    metadata = {str(k): v for k, v in root.items() if _is_plain(v)}
    detector = is_detector(root)
    if detector is not None:
        path, state, kind = detector
        row = detect_format(state)
        others = tuple(str(k) for k in root if not path or k != path[0])
        checkpoint = Checkpoint(file.path, row.name if row is not None else "detectron2", state, "", False, others,
                                metadata)
        return OpenedWeights(file, checkpoint, kind)
    found = encoder_of(root, file.path, file.format, file.choice)
    container = found.chosen.container
    others = tuple(str(k) for k in root if not container or k != container[0])
    checkpoint = Checkpoint(file.path, found.row.name, dict(found.state), found.chosen.prefix, file.choice.ema,
                            others, metadata)
    return OpenedWeights(file, checkpoint, BACKBONE, found)


def classes_entry(classes: CategoryMap) -> dict[str, dict[str, list]]:
    """The checkpoint entry that stores a model's classes (read back by :func:`classes_from`)."""
    return {CLASSES_KEY: {"names": list(classes.names), "ids": [int(i) for i in classes.ids]}}


def classes_from(metadata: Mapping[str, Any], source: Path) -> Optional[CategoryMap]:
    """The classes stored in a checkpoint's metadata, None when it has none."""
    entry = metadata.get(CLASSES_KEY)
    if entry is None:
        return None
    names, ids = (entry.get("names"), entry.get("ids")) if isinstance(entry, Mapping) else (None, None)
    if (not isinstance(names, list) or not isinstance(ids, list) or len(names) != len(ids)
            or not all(isinstance(n, str) for n in names) or not all(isinstance(i, int) for i in ids)):
        raise CheckpointFormatError(f"{source}: its {CLASSES_KEY!r} entry is not {{'names': [str], 'ids': [int]}} "
                                    "of equal lengths")
    return CategoryMap(ids=tuple(ids), names=tuple(names))


@dataclass(frozen=True)
class ModelTarget:
    """The model weights go into, as plain data: layout (``fpn``/``c4``), state-dict shapes, and what its config
    asks of a backbone pretrain (INPUT.FORMAT, MODEL.RESNETS.STRIDE_IN_1X1)."""

    arch: str
    shapes: Mapping[str, tuple[int, ...]]
    input_format: str
    stride_in_1x1: bool


@dataclass(frozen=True)
class LoadReport:
    """What loading one file into one model did, under the model's key names.

    ``loaded``: weights taken from the file; ``reinitialised``: class-dependent weights whose shapes differ,
    left as the model initialised them (``mismatched`` says how); ``missing``: model weights the file does not
    have, left as initialised (a backbone pretrain has no heads); ``unexpected``: file entries left out because
    they are not weights of any model (detectron2's anchor and pixel buffers, BN counters of frozen norms).
    """

    source: str
    path: Path
    kind: str
    format: str
    loaded: tuple[str, ...]
    reinitialised: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[str, ...]
    classes: Optional[CategoryMap] = None
    conversion: Optional[ConversionReport] = None
    num_classes: Optional[tuple[int, int]] = None  # (the file's, the model's) when they differ
    mask_head_dropped: tuple[str, ...] = ()  # a Mask R-CNN file's mask branch, not loaded into a box-only model

    @property
    def reinitialised_layers(self) -> tuple[str, ...]:
        """The layers (module names) of :attr:`reinitialised`."""
        return tuple(sorted({k.rsplit(".", 1)[0] for k in self.reinitialised}))

    def warnings(self) -> list[str]:
        """The lines a user must see: the layers re-initialised for another number of classes, a mask head left
        out."""
        lines = []
        if self.reinitialised:
            why = (f"the file has {self.num_classes[0]} classes, the model {self.num_classes[1]}" if self.num_classes
                   else f"their shapes differ ({self.mismatched[0]})")
            lines.append(f"{self.source}: {why}: re-initialised {', '.join(self.reinitialised_layers)} (they start "
                         "untrained)")
        if self.mask_head_dropped:
            lines.append(f"{self.source}: the model has no mask head (MODEL.MASK_ON False): the file's "
                         f"{len(self.mask_head_dropped)} mask-head weights are not loaded")
        return lines

    def summary(self) -> list[str]:
        """One line per fact: what the file is, how much was loaded, what was not."""
        total = len(self.loaded) + len(self.reinitialised) + len(self.missing)
        where = self.source if self.source == str(self.path) else f"{self.source} ({self.path})"
        lines = [f"weights {where}: {self.kind}, format {self.format}",
                 f"loaded {len(self.loaded)} of the model's {total} weights"
                 + (" (all others listed below)" if len(self.loaded) < total else " (all of them)")]
        lines += self.warnings()
        if self.missing:
            lines.append(f"not in the file, left as initialised: {len(self.missing)} weights "
                         f"({', '.join(_groups(self.missing))})")
        if self.unexpected:
            lines.append(f"left out (not model weights): {len(self.unexpected)} ({', '.join(self.unexpected[:4])}"
                         f"{', ...' if len(self.unexpected) > 4 else ''})")
        return lines


def _groups(keys: tuple[str, ...], depth: int = 2) -> list[str]:
    """Module prefixes of ``keys`` (``roi_heads.box_head``, ...), in order, for a short summary."""
    seen: dict[str, None] = {}
    for key in keys:
        seen.setdefault(".".join(key.split(".")[:depth]), None)
    return list(seen)


def check_fit(report: ConversionReport, input_format: str, stride_in_1x1: bool, source: str) -> None:
    """ConfigError when converted weights need another channel order or stride placement than the config has:
    shapes are identical either way, so such a mismatch would load silently and give wrong outputs."""
    if report.input_format is not None and report.input_format != input_format:
        matching = "an *_infomin config" if report.input_format == "RGB" else "a supervised (BGR) config"
        raise ConfigError(f"{source}: these weights were trained on {report.input_format} input, but the config "
                          f"feeds {input_format}; use {matching} or set INPUT.FORMAT")
    if report.stride_in_1x1 is not None and report.stride_in_1x1 != stride_in_1x1:
        raise ConfigError(f"{source}: these weights need MODEL.RESNETS.STRIDE_IN_1X1 {report.stride_in_1x1}, "
                          f"the config has {stride_in_1x1}")


def _backbone_state(weights: OpenedWeights, target: ModelTarget) -> tuple[dict[str, Any], ConversionReport]:
    """A backbone pretrain converted (the formats table), checked against the config, under our detector's names."""
    backbone, conversion = convert_to_detectron2(weights.encoder or weights.checkpoint)
    check_fit(conversion, target.input_format, target.stride_in_1x1, f"{weights.file.spec} ({weights.file.origin})")
    state, _ = d2_to_model(backbone_to_detector(backbone, target.arch), target.arch)
    return state, conversion


def map_weights(weights: OpenedWeights, target: ModelTarget) -> tuple[dict[str, Any], LoadReport]:
    """The file's weights under ``target``'s names, ready for ``load_state_dict(strict=False)``, and the report.

    Raises ArchitectureMismatchError when the file does not fit (the rules in the module docstring).
    """
    ckpt, kind = weights.checkpoint, weights.kind
    conversion, foreign, left_out = None, [], []
    dropped: list[str] = []
    if kind == DETECTOR_OURS:
        strip = len("module.") if all(k.startswith("module.") for k in ckpt.state) else 0
        state = {k[strip:]: as_float32_tensor(v) for k, v in ckpt.state.items()}
    elif kind == DETECTOR_D2:
        state, mapping = d2_to_model(ckpt.state, target.arch)
        foreign, left_out = list(mapping.unexpected), list(mapping.dropped)
    else:
        state, conversion = _backbone_state(weights, target)
    shapes = target.shapes
    box_only = not any(k.startswith(MASK_BRANCH) for k in shapes)
    for key in [k for k in state if k not in shapes]:
        (left_out if key.endswith(_COUNTER) else dropped if box_only and key.startswith(MASK_BRANCH)
         else foreign).append(key)
        del state[key]
    differ = {k: f"{k}: file {tuple(v.shape)} vs model {tuple(shapes[k])}" for k, v in state.items()
              if tuple(v.shape) != tuple(shapes[k])}
    reinitialised = sorted(k for k in differ if k.startswith(CLASS_DEPENDENT))
    wrong = [differ[k] for k in differ if k not in reinitialised]
    missing = [k for k in shapes if k not in state]
    required = [k for k in missing if not k.endswith(_COUNTER)] if kind != BACKBONE else []
    if foreign or wrong or required:
        parts = [f"{len(required)} missing: {required[:8]}" if required else "",
                 f"{len(foreign)} unexpected: {foreign[:8]}" if foreign else "",
                 f"{len(wrong)} shape mismatches: {wrong[:8]}" if wrong else ""]
        raise ArchitectureMismatchError(
            f"{weights.file.spec} ({weights.file.path}, {kind}) does not fit the {target.arch.upper()} model of "
            f"this config ({'; '.join(p for p in parts if p)}); check that the config matches the checkpoint "
            "(FPN vs C4, norms)")
    classifier = "roi_heads.box_predictor.cls_score.weight"  # (classes + background, features)
    counts = (state[classifier].shape[0] - 1, shapes[classifier][0] - 1) if classifier in differ else None
    for key in reinitialised:
        del state[key]
    report = LoadReport(
        source=weights.file.spec, path=weights.file.path, kind=kind, format=ckpt.format, loaded=tuple(state),
        reinitialised=tuple(reinitialised), missing=tuple(missing), unexpected=tuple(left_out),
        mismatched=tuple(differ[k] for k in reinitialised), classes=weights.classes, conversion=conversion,
        num_classes=counts, mask_head_dropped=tuple(dropped))
    return state, report


def describe_pretrain(spec: Union[str, os.PathLike], *, quiet: bool = False) -> list[str]:
    """For a plan: where a pretrain's ResNet-50 was found, which one was taken, what is dropped and the input
    convention (:meth:`~.report.ConversionReport.found`); converted in memory, so that errors come now."""
    file = resolve_weights(spec, quiet=quiet)
    if file is None:
        return []
    return convert_to_detectron2(file.path, format=file.format, choice=file.choice)[1].found()


def stage_backbone(spec: Union[str, os.PathLike], dest: Union[str, os.PathLike], *, input_format: str,
                   stride_in_1x1: bool, hint: str = "", quiet: bool = False) -> Optional[ConversionReport]:
    """Write the detectron2 ``.pkl`` of ``spec``'s backbone pretrain to ``dest`` (converted once, cached) after
    checking that it fits the config; returns the conversion report, None when ``spec`` is random init.

    For runs that hand MODEL.WEIGHTS to another trainer (``reproduce``, the detectron2 backend). ``hint`` is
    appended to the file's name in a ConfigError.
    """
    file = resolve_weights(spec, quiet=quiet)
    if file is None:
        return None
    converted, report = converted_pretrain(file.path, format=file.format, choice=file.choice)
    check_fit(report, input_format, stride_in_1x1, f"{file.path}{hint}")
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(target) as tmp:
        shutil.copyfile(converted, tmp)
    return report
