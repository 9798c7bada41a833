"""Every ``PYCONTRAST_ZOO_*`` setting in one place: its name, default and parser, read at each call (never cached,
so a test or a parent process can change them). A bad value is a one-line SettingsError naming the variable.

- ``PYCONTRAST_ZOO_HOME``: the cache root (default ``$XDG_CACHE_HOME/pycontrast-zoo``, else
  ``~/.cache/pycontrast-zoo``); must not be a file.
- ``PYCONTRAST_ZOO_MANIFEST``: user manifests, ``os.pathsep``-separated.
- ``PYCONTRAST_ZOO_OFFLINE`` (or ``HF_HUB_OFFLINE``): 1/true/yes/on: never touch the network.
- ``PYCONTRAST_ZOO_ENDPOINT``: a mirror (folder or URL of a tree made by ``pycontrast-zoo publish``).
- ``PYCONTRAST_ZOO_RETRIES`` (4): retries of transient failures; an integer >= 0.
- ``PYCONTRAST_ZOO_BACKOFF`` (1): first backoff in seconds, doubling; finite, >= 0.
- ``PYCONTRAST_ZOO_CONNECT_TIMEOUT`` (5) and ``PYCONTRAST_ZOO_TIMEOUT`` (10): seconds to connect, and of silence
  while reading; finite, > 0.
- ``PYCONTRAST_ZOO_MIN_SPEED`` (16384): bytes per second a download must average; with the timeouts it gives
  each download its overall bound (see :func:`pycontrast_det.store._http.time_bound`); finite, > 0.
- ``PYCONTRAST_ZOO_MAX_BYTES`` (34359738368, 32 GiB): the most bytes taken from a server that announces no size
  for a file whose size is not known either; an integer > 0.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Optional, TypeVar

from .errors import SettingsError

HOME = "PYCONTRAST_ZOO_HOME"
MANIFEST = "PYCONTRAST_ZOO_MANIFEST"
OFFLINE = "PYCONTRAST_ZOO_OFFLINE"
ENDPOINT = "PYCONTRAST_ZOO_ENDPOINT"
RETRIES = "PYCONTRAST_ZOO_RETRIES"
BACKOFF = "PYCONTRAST_ZOO_BACKOFF"
CONNECT_TIMEOUT = "PYCONTRAST_ZOO_CONNECT_TIMEOUT"
TIMEOUT = "PYCONTRAST_ZOO_TIMEOUT"
MIN_SPEED = "PYCONTRAST_ZOO_MIN_SPEED"
MAX_BYTES = "PYCONTRAST_ZOO_MAX_BYTES"

_TRUE = {"1", "true", "yes", "on"}
T = TypeVar("T")


def _raw(name: str) -> Optional[str]:
    value = os.environ.get(name, "").strip()
    return value or None


def _parsed(name: str, default: T, parse: Callable[[str], T], ok: Callable[[T], bool], wants: str) -> T:
    raw = _raw(name)
    if raw is None:
        return default
    try:
        value = parse(raw)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise SettingsError(f"{name}={raw!r}: expected {wants} (default {default}); fix or unset it")
    return value


def _seconds(name: str, default: float, zero_ok: bool) -> float:
    wants = "a finite number of seconds " + (">= 0" if zero_ok else "> 0")
    return _parsed(name, default, float, lambda v: math.isfinite(v) and (v >= 0 if zero_ok else v > 0), wants)


def retries() -> int:
    return _parsed(RETRIES, 4, int, lambda v: v >= 0, "an integer >= 0")


def backoff_s() -> float:
    return _seconds(BACKOFF, 1.0, zero_ok=True)


def connect_timeout_s() -> float:
    return _seconds(CONNECT_TIMEOUT, 5.0, zero_ok=False)


def read_timeout_s() -> float:
    return _seconds(TIMEOUT, 10.0, zero_ok=False)


def min_speed() -> float:
    """Bytes per second a download must average."""
    return _parsed(MIN_SPEED, 16384.0, float, lambda v: math.isfinite(v) and v > 0, "a finite number of bytes "
                   "per second > 0")


def max_bytes() -> int:
    return _parsed(MAX_BYTES, 32 << 30, int, lambda v: v > 0, "an integer number of bytes > 0")


def offline() -> bool:
    """Whether PYCONTRAST_ZOO_OFFLINE or HF_HUB_OFFLINE is set to a true value."""
    return any((_raw(var) or "").lower() in _TRUE for var in (OFFLINE, "HF_HUB_OFFLINE"))


def endpoint() -> Optional[str]:
    raw = _raw(ENDPOINT)
    return os.path.expanduser(raw) if raw else None


def manifest_paths() -> list[str]:
    """The user manifests named by PYCONTRAST_ZOO_MANIFEST (may be empty)."""
    return [p for p in (_raw(MANIFEST) or "").split(os.pathsep) if p.strip()]


def home() -> Path:
    """The cache root; SettingsError when PYCONTRAST_ZOO_HOME names something that is not a folder."""
    raw = _raw(HOME)
    if raw is None:
        xdg = _raw("XDG_CACHE_HOME")
        return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "pycontrast-zoo"
    path = Path(raw).expanduser()
    if path.exists() and not path.is_dir():
        raise SettingsError(f"{HOME}={raw!r}: not a folder; set it to a folder for the download cache")
    return path
