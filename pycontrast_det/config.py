"""detectron2-format configs: YAML files with ``_BASE_`` inheritance, merged onto detectron2's defaults,
then ``KEY VALUE`` overrides as on detectron2's command line.

The key set is closed: a key that detectron2's defaults do not have is a :class:`ConfigError` naming it,
so a typo never silently trains the wrong model. No torch import.
"""
from __future__ import annotations

import ast
import copy
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence, Union

import yaml

from .errors import ConfigError, yaml_problem
from .resources import configs_dir

if TYPE_CHECKING:
    import torch  # annotations only: this module never imports torch

_DEFAULTS_FILE = Path(__file__).with_name("config_defaults.yaml")
_BASE_KEY = "_BASE_"
_MAX_BASE_DEPTH = 10


class CfgNode(dict[str, Any]):
    """A nested dict with attribute access and a freeze switch, detectron2's ``CfgNode`` in spirit."""

    def __init__(self, init: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__()
        object.__setattr__(self, "_frozen", False)
        for key, value in (init or {}).items():
            super().__setitem__(key, CfgNode(value) if isinstance(value, Mapping) else value)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __setitem__(self, key: str, value: Any) -> None:
        if self._frozen:
            raise ConfigError(f"config is frozen; cannot set {key!r} (call .defrost() on a clone first)")
        super().__setitem__(key, CfgNode(value) if isinstance(value, Mapping) and not isinstance(value, CfgNode)
                            else value)

    def __deepcopy__(self, memo: dict[int, Any]) -> "CfgNode":
        return CfgNode({k: copy.deepcopy(v, memo) for k, v in self.items()})

    def freeze(self) -> "CfgNode":
        """Make this node and every child read-only; returns self."""
        self._set_frozen(True)
        return self

    def defrost(self) -> "CfgNode":
        """Make this node and every child writable again; returns self."""
        self._set_frozen(False)
        return self

    def is_frozen(self) -> bool:
        return bool(self._frozen)

    def _set_frozen(self, flag: bool) -> None:
        object.__setattr__(self, "_frozen", flag)
        for value in self.values():
            if isinstance(value, CfgNode):
                value._set_frozen(flag)

    def clone(self) -> "CfgNode":
        """A deep, writable copy."""
        return copy.deepcopy(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts and lists (tuples become lists), e.g. for YAML or JSON."""
        def plain(value: Any) -> Any:
            if isinstance(value, Mapping):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return value
        return plain(self)

    def dump(self) -> str:
        """The full config as YAML, loadable again by :func:`load_config`."""
        return yaml.safe_dump(self.to_dict(), sort_keys=True, default_flow_style=None, width=100)

    def merge_from_dict(self, other: Mapping[str, Any], *, source: str = "<dict>") -> None:
        """Merge nested values onto this node; unknown keys and incompatible types are errors."""
        _merge(self, other, prefix="", source=source)

    def merge_from_list(self, overrides: Sequence[str], *, source: str = "command line") -> None:
        """Apply ``[KEY, VALUE, KEY, VALUE, ...]`` as detectron2's ``opts`` (``SOLVER.BASE_LR 0.01``)."""
        items = list(overrides)
        if len(items) % 2:
            raise ConfigError(f"overrides from {source} must be KEY VALUE pairs; got an odd count: {items}")
        for key, raw in zip(items[0::2], items[1::2]):
            node: CfgNode = self
            parts = key.split(".")
            for depth, part in enumerate(parts[:-1]):
                child = node.get(part)
                if not isinstance(child, CfgNode):
                    raise ConfigError(f"unknown config key {key!r} (from {source}): "
                                      f"{'.'.join(parts[:depth + 1])!r} is not a section")
                node = child
            leaf = parts[-1]
            if leaf not in node:
                raise ConfigError(f"unknown config key {key!r} (from {source})" + _suggest(key, self))
            node[leaf] = _coerce(node[leaf], _decode(raw), key, source)


def _decode(value: Any) -> Any:
    """Strings that spell Python literals become those values, as detectron2 does ("(640, 672)")."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _coerce(default: Any, value: Any, key: str, source: str) -> Any:
    """Check the new value's type against the default's; allow list<->tuple and int->float."""
    if default is None or value is None:
        return value
    if isinstance(default, CfgNode):
        raise ConfigError(f"config key {key!r} (from {source}) is a section; set its sub-keys instead")
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(default, bool) or isinstance(value, bool):
        if isinstance(default, bool) and isinstance(value, bool):
            return value
    elif isinstance(default, float) and isinstance(value, (int, float)):
        return float(value)
    elif isinstance(default, int) and isinstance(value, int):
        return value
    elif isinstance(default, str) and isinstance(value, str):
        return value
    raise ConfigError(f"config key {key!r} (from {source}) expects {type(default).__name__} like "
                      f"{default!r}, got {type(value).__name__} {value!r}")


def _merge(node: CfgNode, other: Mapping[str, Any], *, prefix: str, source: str) -> None:
    for key, value in other.items():
        full = f"{prefix}{key}"
        if key not in node:
            raise ConfigError(f"unknown config key {full!r} in {source}" + _suggest(full, _defaults()))
        if isinstance(node[key], CfgNode):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {full!r} in {source} is a section; got {value!r}")
            _merge(node[key], value, prefix=f"{full}.", source=source)
        else:
            node[key] = _coerce(node[key], _decode(value), full, source)


def _flat_keys(node: Mapping[str, Any], prefix: str = "") -> Iterable[str]:
    for key, value in node.items():
        yield f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flat_keys(value, f"{prefix}{key}.")


def _suggest(key: str, root: Mapping[str, Any]) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(_flat_keys(root)), n=3, cutoff=0.75)
    return f"; did you mean {', '.join(close)}?" if close else ""


_DEFAULTS_CACHE: Optional[CfgNode] = None


def _defaults() -> CfgNode:
    global _DEFAULTS_CACHE
    if _DEFAULTS_CACHE is None:
        with open(_DEFAULTS_FILE, encoding="utf-8") as fh:
            _DEFAULTS_CACHE = CfgNode(yaml.safe_load(fh)).freeze()
    return _DEFAULTS_CACHE


def get_cfg() -> CfgNode:
    """detectron2's default config, writable."""
    return _defaults().clone()


def resolve_config_path(config: Union[str, os.PathLike[str]]) -> Path:
    """A config given as a path, or as a name under ``configs/`` with or without ``.yaml``."""
    path = Path(config)
    if path.is_file():
        return path.resolve()
    for candidate in (configs_dir() / path, configs_dir() / f"{path}.yaml",
                      configs_dir() / path.name, configs_dir() / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate.resolve()
    shipped = sorted(p.stem for p in configs_dir().glob("*.yaml"))
    raise ConfigError(f"config {str(config)!r} not found as a file or under {configs_dir()}; "
                      f"shipped configs: {', '.join(shipped) or 'none'}")


def _read_yaml_chain(path: Path, depth: int = 0) -> list[tuple[Path, dict[str, Any]]]:
    """The file and its ``_BASE_`` ancestors, base first."""
    if depth > _MAX_BASE_DEPTH:
        raise ConfigError(f"{path}: _BASE_ chain deeper than {_MAX_BASE_DEPTH} (a cycle?)")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {yaml_problem(path, exc)}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping of sections, got {type(data).__name__}")
    base = data.pop(_BASE_KEY, None)
    chain: list[tuple[Path, dict[str, Any]]] = []
    if base:
        base_path = (path.parent / str(base)) if not Path(str(base)).is_absolute() else Path(str(base))
        if not base_path.is_file():
            raise ConfigError(f"{path}: _BASE_ {base!r} not found (looked for {base_path})")
        chain.extend(_read_yaml_chain(base_path.resolve(), depth + 1))
    chain.append((path, data))
    return chain


_KEY_SHAPE = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)*$")
DEVICE_KEY = "MODEL.DEVICE"
AUTO_DEVICE = "auto"  # cuda when available, else cpu


def looks_like_key(word: str) -> bool:
    """Whether a command-line word is a config key (``SOLVER.BASE_LR``, ``SEED``): upper case, dotted, under a
    top-level key of the defaults, and not the name of an existing file (``TEST.PNG``)."""
    return (bool(_KEY_SHAPE.match(word)) and word.split(".", 1)[0] in _defaults()
            and not Path(word).exists())


def override_value(overrides: Sequence[str], key: str) -> Optional[str]:
    """The last value ``overrides`` (``KEY VALUE ...``) give ``key``, or None."""
    values = [v for k, v in zip(overrides[0::2], overrides[1::2]) if k == key]
    return str(values[-1]) if values else None


def requested_device(device: Union[str, torch.device, None], overrides: Sequence[str], default: str) -> str:
    """The device asked for: ``device`` (a --device flag), else MODEL.DEVICE among ``overrides``, else
    ``default``; ``auto`` (cuda when available, else cpu) gives way to the other. MODEL.DEVICE in a config file
    is a record of where that config ran and asks for nothing. ConfigError when the flag and the override name
    different devices."""
    given = override_value(overrides, DEVICE_KEY)
    named = [str(d) for d in (device, given) if d is not None and str(d) != AUTO_DEVICE]
    if len(set(named)) > 1:
        raise ConfigError(f"--device {device} and {DEVICE_KEY} {given} name different devices; give one of them")
    return named[0] if named else str(device if device is not None else given if given is not None else default)


def load_config(config: Union[str, Path, Mapping[str, Any]], overrides: Sequence[str] = (),
                *, freeze: bool = True) -> CfgNode:
    """defaults <- config file (with its ``_BASE_`` chain) <- ``KEY VALUE`` overrides; frozen by default.

    ``config`` may be a path, a name under ``configs/`` (``"R_50_FPN_2x_infomin"``), or a mapping of
    sections (already-parsed YAML, e.g. a dumped effective config).
    """
    cfg = get_cfg()
    if isinstance(config, Mapping):
        cfg.merge_from_dict(config, source="<mapping>")
    else:
        for path, data in _read_yaml_chain(resolve_config_path(config)):
            cfg.merge_from_dict(data, source=str(path))
    cfg.merge_from_list(list(overrides))
    return cfg.freeze() if freeze else cfg
