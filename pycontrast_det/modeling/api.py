"""``load``: a ready-to-use MaskRCNN from a zoo entry or a config, with its weights, in eval mode."""
from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from ..errors import ArchitectureMismatchError
from .build import build_model
from .meta_arch import MaskRCNN

log = logging.getLogger(__name__)

_OUR_PREFIXES = ("backbone.body.", "rpn.head.")  # keys only this package's model has (detectron2: bottom_up, rpn_head)


def _resolve(entry_or_config: Any, overrides: Sequence[str]):
    """(config, entry or None): an entry name goes through the zoo, anything else is a config."""
    from ..config import load_config

    if isinstance(entry_or_config, str) and not Path(entry_or_config).is_file():
        from ..zoo import load_manifest

        zoo = load_manifest()
        if entry_or_config in zoo.entries:
            entry = zoo.entries[entry_or_config]
            return load_config(entry.config_path, overrides), entry
    if isinstance(entry_or_config, Mapping) and hasattr(entry_or_config, "clone"):  # an existing CfgNode
        cfg = entry_or_config.clone()
        cfg.defrost()
        cfg.merge_from_list(list(overrides))
        return cfg.freeze(), None
    return load_config(entry_or_config, overrides), None


def _local_weights(weights: Union[str, Path]) -> Path:
    """A weights path, or a URL fetched through the store's verified cache."""
    text = str(weights)
    if "://" not in text or text.startswith("file://"):
        return Path(text[len("file://"):] if text.startswith("file://") else text)
    from ..store import fetch_url

    return fetch_url(text)


def _detector_state(path: Path, model: MaskRCNN) -> dict[str, Any]:
    """A checkpoint's weights under our key names: detectron2 keys renamed, or our own keys taken as they are."""
    from ..checkpoints import d2_to_model
    from ..checkpoints.readers import read_checkpoint

    state = read_checkpoint(path).state
    if any(k.startswith(_OUR_PREFIXES) for k in state):  # saved from this package's model
        return {k: torch.as_tensor(v) for k, v in state.items()}
    mapped, report = d2_to_model(state, model.arch)
    mapped.update({k: state[k] for k in report.unexpected})  # no rename: load_weights reports them
    return mapped


def load_weights(model: MaskRCNN, state: Mapping[str, Any], source: str, strict: bool = True) -> list[str]:
    """Load ``state`` (our key names) into ``model``; ArchitectureMismatchError lists every missing or
    unexpected key and shape mismatch (missing keys are allowed, and returned, when not ``strict``)."""
    own = model.state_dict()
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state)
    shapes = sorted(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                    for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape))
    if unexpected or shapes or (strict and missing):
        parts = [f"{len(missing)} missing: {missing[:8]}" if strict and missing else "",
                 f"{len(unexpected)} unexpected: {unexpected[:8]}" if unexpected else "",
                 f"{len(shapes)} shape mismatches: {shapes[:8]}" if shapes else ""]
        raise ArchitectureMismatchError(
            f"{source} does not fit the {model.arch.upper()} model of this config "
            f"({'; '.join(p for p in parts if p)}); check that the config matches the checkpoint "
            "(FPN vs C4, NUM_CLASSES, norms)")
    model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=False)
    return missing


def check_pretrain_fits(report: Any, cfg: Any, source: str) -> None:
    """ConfigError when converted weights need another channel order or stride placement than ``cfg`` has:
    shapes are identical either way, so such a mismatch would load silently and give wrong outputs."""
    from ..errors import ConfigError

    if report.input_format is not None and report.input_format != cfg.INPUT.FORMAT:
        matching = "an *_infomin config" if report.input_format == "RGB" else "a supervised (BGR) config"
        raise ConfigError(f"{source}: these weights were trained on {report.input_format} input, but the config "
                          f"feeds {cfg.INPUT.FORMAT}; use {matching} or set INPUT.FORMAT")
    if report.stride_in_1x1 is not None and report.stride_in_1x1 != cfg.MODEL.RESNETS.STRIDE_IN_1X1:
        raise ConfigError(f"{source}: these weights need MODEL.RESNETS.STRIDE_IN_1X1 {report.stride_in_1x1}, "
                          f"the config has {cfg.MODEL.RESNETS.STRIDE_IN_1X1}")


def _pretrain_backbone(entry, model: MaskRCNN) -> Optional[dict[str, Any]]:
    """The entry's pre-trained ResNet-50 under our key names (converted once, cached), or None for random init."""
    from ..checkpoints import backbone_to_detector, converted_pretrain, d2_to_model, read_checkpoint
    from ..checkpoints.sources import fetch_pretrain
    from ..zoo import load_manifest

    pretrain = load_manifest().pretrain(entry.pretrain)
    if pretrain.file is None:
        return None
    path, ref = fetch_pretrain(pretrain.name)
    converted, report = converted_pretrain(path, format=ref.format)
    check_pretrain_fits(report, model.cfg, f"pretrain {pretrain.name} ({path})")
    state, _ = d2_to_model(backbone_to_detector(read_checkpoint(converted).state, model.arch), model.arch)
    return state


def load(entry_or_config: Union[str, Path, Mapping[str, Any]], weights: Union[str, Path, None] = None,
         device: Union[str, torch.device] = "cpu", pretrained: bool = True, overrides: Sequence[str] = ()
         ) -> MaskRCNN:
    """A MaskRCNN in eval mode on ``device``.

    ``entry_or_config``: a zoo entry name (its config and, with ``pretrained``, its published detector
    weights), or a config (path, name under configs/, CfgNode). ``weights``: a path or URL of a detector
    checkpoint (detectron2 or this package's keys) replacing the entry's. An entry without a published
    detector (the C4 rows) gets its pre-trained backbone only, with a warning. ``pretrained=False``: random
    init. ``overrides``: ``KEY VALUE`` config overrides. A published folder (``hf://org/repo/<entry>``, or its
    copy on disk) gives its verified ``config.yaml`` and ``model.safetensors``.
    """
    from ..checkpoints.published import is_published_folder, resolve_published

    if isinstance(entry_or_config, (str, Path)) and is_published_folder(entry_or_config):
        folder = resolve_published(entry_or_config, weights=pretrained and weights is None)
        entry_or_config, weights = folder.config, weights if weights is not None else folder.weights
    cfg, entry = _resolve(entry_or_config, overrides)
    model = build_model(cfg)
    if weights is not None:
        path = _local_weights(weights)
        load_weights(model, _detector_state(path, model), str(path))
    elif pretrained and entry is not None:
        if entry.model is not None:
            from ..checkpoints.sources import fetch_entry_file

            path = fetch_entry_file(entry.name, "model")
            load_weights(model, _detector_state(path, model), f"{entry.name} ({path})")
        else:
            state = _pretrain_backbone(entry, model)
            what = (f"its pre-trained backbone ({entry.pretrain}) only" if state is not None
                    else "random initialisation (its pretrain is 'rand')")
            if state is not None:
                load_weights(model, state, f"pretrain {entry.pretrain}", strict=False)
            message = (f"{entry.name}: no detector weights were published for this row; the model has "
                       f"{what}, and its heads are untrained: train it first (pycontrast-zoo train)")
            warnings.warn(message, stacklevel=2)
            log.warning(message)
    return model.to(device).eval()
