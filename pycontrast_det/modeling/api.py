"""``load``: a ready-to-use MaskRCNN from a zoo entry, a config or a checkpoint, with its weights, in eval mode;
``load_weights``: any weights spec into a built model (the model-facing half of ``checkpoints.weights``)."""
from __future__ import annotations

import difflib
import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import torch

from ..checkpoints.weights import LoadReport, ModelTarget, OpenedWeights, map_weights, open_weights
from ..errors import ConfigError, UnknownEntryError
from .build import build_model
from .meta_arch import MaskRCNN

if TYPE_CHECKING:
    from ..config import CfgNode
    from ..zoo import DetectorEntry

log = logging.getLogger(__name__)

WeightsSpec = Union[str, os.PathLike, OpenedWeights]


def model_target(model: MaskRCNN) -> ModelTarget:
    """``model`` as the loading path sees it: layout, state-dict shapes, what its config asks of a pretrain."""
    return ModelTarget(arch=model.arch, shapes={k: tuple(v.shape) for k, v in model.state_dict().items()},
                       input_format=model.cfg.INPUT.FORMAT, stride_in_1x1=bool(model.cfg.MODEL.RESNETS.STRIDE_IN_1X1))


def load_weights(model: MaskRCNN, weights: WeightsSpec, *, quiet: bool = False) -> Optional[LoadReport]:
    """Load a weights spec (file, URL, ``detectron2://`` name, zoo entry or pretrain; see ``checkpoints.weights``)
    into ``model`` and return what was loaded and what was not; None when the spec means random init.

    Class names stored with the weights become ``model.classes`` when the model has as many classes.
    ArchitectureMismatchError when the file does not fit the model.
    """
    opened = weights if isinstance(weights, OpenedWeights) else open_weights(weights, quiet=quiet)
    if opened is None:
        return None
    state, report = map_weights(opened, model_target(model))
    model.load_state_dict(state, strict=False)
    if report.classes is not None and not report.reinitialised and len(report.classes) == len(model.classes):
        model.classes = report.classes
    return report


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)
    log.warning(message)


_WARNED: set[str] = set()


def _entry_warnings(entry: "DetectorEntry") -> list[str]:
    """What to warn about an entry, each line once per process: its known issues, and a cached training log whose
    config differs from the entry's (with its config_fixes) on a model-defining key (the cache only: no network)."""
    from ..config import load_config
    from ..store import cache_path
    from ..zoo import issue_line
    from ..zoo.logconfig import compare_configs, drift_line, read_log_config_file

    lines = [issue_line(entry)] if entry.known_issues else []
    cached = cache_path(entry.log, f"{entry.name}/log") if entry.log is not None else None
    if cached is not None and cached.is_file():
        logged = read_log_config_file(cached).full
        ours = load_config(entry.config_path, entry.config_overrides).to_dict()
        drift = drift_line(entry, compare_configs(ours, logged)) if logged is not None else None
        lines += [drift] if drift else []
    new = [line for line in lines if line not in _WARNED]
    _WARNED.update(new)
    return new


def _unknown_source(text: str, entries: Sequence[str]) -> UnknownEntryError:
    from ..resources import configs_dir

    known = [*entries, *(p.stem for p in configs_dir().glob("*.yaml"))]
    close = difflib.get_close_matches(text, known, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return UnknownEntryError(f"unknown entry {text!r}: not a zoo entry, a config (file or name under configs/) nor a "
                             f"checkpoint file.{hint} (`pycontrast-zoo list` shows the entries)")


@dataclass(frozen=True)
class ModelSource:
    """What an ENTRY|CHECKPOINT|CONFIG argument stands for: the config that comes with it (a file, parsed YAML or
    a CfgNode; None when none does), the weights that come with it (a spec for :func:`load_weights`; None: none)
    and its zoo entry, if it is one."""

    spec: str                        # the argument as given (a config given as data: "<config>")
    config: Union[Path, Mapping[str, Any], None]
    weights: Optional[WeightsSpec]
    entry: Optional["DetectorEntry"] = None
    origin: str = ""                 # where the config comes from, for messages and plans

    @property
    def fixes(self) -> tuple[str, ...]:
        """KEY VALUE words every use applies on top of ``config``: a zoo entry's manifest config_fixes."""
        return self.entry.config_overrides if self.entry is not None else ()


def resolve_source(source: Union[str, os.PathLike, Mapping[str, Any]]) -> ModelSource:
    """The config and weights of a source, as :func:`load` takes it: a config (path, name under configs/, CfgNode,
    parsed YAML), a zoo entry name, a checkpoint file (read once: its stored config or the ``config.yaml`` beside
    it, and its weights and class names) or a published folder (``hf://org/repo/<entry>`` or its copy on disk:
    its verified ``config.yaml``; its weights are fetched when loaded). Nothing else is downloaded.

    UnknownEntryError with close names for a bare name that is none of these.
    """
    from ..checkpoints.names import CONFIG_SUFFIXES, Kind, parse_name
    from ..checkpoints.published import resolve_published
    from ..config import resolve_config_path

    if isinstance(source, Mapping):
        return ModelSource("<config>", source, None, origin="the config given")
    name = parse_name(source)  # what the string names, decided in one place
    text = name.text
    if name.kind is Kind.PUBLISHED:
        folder = resolve_published(text, weights=False)
        return ModelSource(text, folder.config, text, origin=f"{folder.config} (published folder {text})")
    if name.kind is Kind.FILE:
        opened = open_weights(name.spec)
        assert opened is not None  # a local file is never "random init"
        stored = opened.stored_config()
        origin = str(stored) if isinstance(stored, Path) else f"stored in {text}"
        return ModelSource(name.spec, stored, opened, origin=origin)
    if name.kind is Kind.ENTRY:
        from ..zoo import load_manifest

        entry = load_manifest().entries[text]
        return ModelSource(text, entry.config_path, entry.name, entry, origin=f"{entry.config_path} (zoo entry {text})")
    if name.kind is Kind.MISSING_FILE and Path(text).suffix not in CONFIG_SUFFIXES:
        raise ConfigError(f"{text}: no such checkpoint file")
    if name.kind in (Kind.URL, Kind.DETECTRON2):
        raise ConfigError(f"{text}: a {name.kind.value}, which brings weights but no config; "
                          f"load(CONFIG, weights={text!r})")
    if name.kind in (Kind.UNKNOWN, Kind.PRETRAIN):
        from ..zoo import load_manifest

        raise _unknown_source(text, list(load_manifest().entries))
    config = resolve_config_path(text)
    return ModelSource(text, config, None, origin=str(config))


def _config(source: ModelSource, overrides: Sequence[str]) -> "CfgNode":
    """The source's config with ``overrides``; ConfigError when no config comes with it."""
    from ..config import load_config

    if source.config is None:
        raise ConfigError(f"{source.spec}: no config is stored in this checkpoint and there is no config.yaml beside "
                          f"it; say which architecture it is: load(CONFIG, weights={source.spec!r})")
    if hasattr(source.config, "clone"):  # an existing CfgNode: kept as it is, overrides on top
        cfg = source.config.clone()
        cfg.defrost()
        cfg.merge_from_list(list(overrides))
        return cfg.freeze()
    return load_config(source.config, [*source.fixes, *overrides])


def load(entry_or_config: Union[str, os.PathLike, Mapping[str, Any], ModelSource],
         weights: Optional[WeightsSpec] = None, device: Union[str, torch.device, None] = None, pretrained: bool = True,
         overrides: Sequence[str] = ()) -> MaskRCNN:
    """A MaskRCNN in eval mode on ``device``.

    Args:
        entry_or_config: a zoo entry name (its config and, with ``pretrained``, its published detector), a
            config (path, name under configs/, CfgNode, parsed YAML), a checkpoint file alone (its stored
            config or the ``config.yaml`` beside it, and its weights and class names), or a published folder
            (``hf://org/repo/<entry>``, or its copy on disk: its verified ``config.yaml`` and ``model.safetensors``);
            or what :func:`resolve_source` made of one of these.
        weights: weights replacing the source's: a file (detectron2's or this package's detector, or a backbone
            pretrain in any supported format), a URL, a ``detectron2://`` name, a published folder, a zoo entry or a
            pretrain. Layers that depend on the number of classes are re-initialised, with a warning, when their
            shapes differ.
        device: where the model goes: cpu, cuda, cuda:N or auto (default: MODEL.DEVICE when ``overrides`` set it,
            else cpu); ConfigError for a device this machine does not have.
        pretrained: False builds the source's architecture randomly initialised.
        overrides: ``KEY VALUE`` config overrides.

    An entry without a published detector (the C4 rows) gets its pre-trained backbone only, with a warning.
    """
    from ..config import requested_device
    from .device import resolve_device

    target = resolve_device(requested_device(device, overrides, default="cpu"))
    source = entry_or_config if isinstance(entry_or_config, ModelSource) else resolve_source(entry_or_config)
    cfg = _config(source, overrides)
    for line in _entry_warnings(source.entry) if source.entry is not None else ():
        _warn(line)
    model = build_model(cfg)
    spec = weights if weights is not None else (source.weights if pretrained else None)
    report = load_weights(model, spec) if spec is not None else None
    for line in report.warnings() if report is not None else ():
        _warn(line)
    entry = source.entry
    if entry is not None and spec == entry.name and entry.model is None:
        what = (f"its pre-trained backbone ({entry.pretrain}) only" if report is not None
                else "random initialisation (its pretrain is 'rand')")
        _warn(f"{entry.name}: no detector weights were published for this row; the model has {what}, and its "
              "heads are untrained: train it first (pycontrast-zoo train)")
    return model.to(target).eval()
