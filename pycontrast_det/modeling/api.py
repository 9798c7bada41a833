"""``load``: a ready-to-use MaskRCNN from a zoo entry, a config or a checkpoint, with its weights, in eval mode;
``load_weights``: any weights spec into a built model (the model-facing half of ``checkpoints.weights``)."""
from __future__ import annotations

import difflib
import logging
import os
import warnings
from collections.abc import Mapping
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

_CONFIG_SUFFIXES = (".yaml", ".yml")
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


def _unknown_source(text: str) -> UnknownEntryError:
    from ..resources import configs_dir
    from ..zoo import load_manifest

    known = [*load_manifest().entries, *(p.stem for p in configs_dir().glob("*.yaml"))]
    close = difflib.get_close_matches(text, known, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return UnknownEntryError(f"unknown entry {text!r}: not a zoo entry, a config (file or name under configs/) nor a "
                             f"checkpoint file.{hint} (`pycontrast-zoo list` shows the entries)")


def _resolve(source: Any, overrides: Sequence[str]
             ) -> tuple["CfgNode", Optional["DetectorEntry"], Optional[WeightsSpec]]:
    """(config, entry or None, the weights that come with the source or None)."""
    from ..config import load_config, resolve_config_path

    if isinstance(source, Mapping) and hasattr(source, "clone"):  # an existing CfgNode
        cfg = source.clone()
        cfg.defrost()
        cfg.merge_from_list(list(overrides))
        return cfg.freeze(), None, None
    if isinstance(source, Mapping):
        return load_config(source, overrides), None, None
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix not in _CONFIG_SUFFIXES:
        return _checkpoint_source(path, overrides)
    if not path.is_file():
        from ..zoo import load_manifest

        entries = load_manifest().entries
        if text in entries:
            return load_config(entries[text].config_path, overrides), entries[text], entries[text].name
        if path.suffix and path.suffix not in _CONFIG_SUFFIXES:
            raise ConfigError(f"{text}: no such checkpoint file")
        if os.sep not in text and not path.suffix:  # a bare name: an entry or a shipped config
            try:
                resolve_config_path(text)
            except ConfigError:
                raise _unknown_source(text) from None
    return load_config(text, overrides), None, None


def _checkpoint_source(path: Path, overrides: Sequence[str]) -> tuple["CfgNode", None, OpenedWeights]:
    """A checkpoint given alone: its stored config (or the config.yaml beside it) and its weights."""
    from ..config import load_config

    opened = open_weights(path)
    assert opened is not None  # a local file is never "random init"
    stored = opened.stored_config()
    if stored is None:
        raise ConfigError(f"{path}: no config is stored in this checkpoint and there is no config.yaml beside it; "
                          f"say which architecture it is: load(CONFIG, weights={str(path)!r})")
    return load_config(stored, overrides), None, opened


def load(entry_or_config: Union[str, os.PathLike, Mapping[str, Any]], weights: Optional[WeightsSpec] = None,
         device: Union[str, torch.device] = "cpu", pretrained: bool = True, overrides: Sequence[str] = ()
         ) -> MaskRCNN:
    """A MaskRCNN in eval mode on ``device``.

    Args:
        entry_or_config: a zoo entry name (its config and, with ``pretrained``, its published detector), a
            config (path, name under configs/, CfgNode, parsed YAML), a checkpoint file alone (its stored
            config or the ``config.yaml`` beside it, and its weights and class names), or a published folder
            (``hf://org/repo/<entry>``, or its copy on disk: its verified ``config.yaml`` and ``model.safetensors``).
        weights: weights replacing the source's: a file (detectron2's or this package's detector, or a backbone
            pretrain in any supported format), a URL, a ``detectron2://`` name, a zoo entry or a pretrain. Layers
            that depend on the number of classes are re-initialised, with a warning, when their shapes differ.
        device: where the model goes.
        pretrained: False builds the source's architecture randomly initialised.
        overrides: ``KEY VALUE`` config overrides.

    An entry without a published detector (the C4 rows) gets its pre-trained backbone only, with a warning.
    """
    from ..checkpoints.published import is_published_folder, resolve_published

    if isinstance(entry_or_config, (str, Path)) and is_published_folder(entry_or_config):
        folder = resolve_published(entry_or_config, weights=pretrained and weights is None)
        entry_or_config, weights = folder.config, weights if weights is not None else folder.weights
    cfg, entry, default = _resolve(entry_or_config, overrides)
    model = build_model(cfg)
    spec = weights if weights is not None else (default if pretrained else None)
    report = load_weights(model, spec) if spec is not None else None
    for line in report.warnings() if report is not None else ():
        _warn(line)
    if entry is not None and spec == entry.name and entry.model is None:
        what = (f"its pre-trained backbone ({entry.pretrain}) only" if report is not None
                else "random initialisation (its pretrain is 'rand')")
        _warn(f"{entry.name}: no detector weights were published for this row; the model has {what}, and its "
              "heads are untrained: train it first (pycontrast-zoo train)")
    return model.to(device).eval()
