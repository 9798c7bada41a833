"""Checksums recorded on this machine (``pycontrast-zoo pin``), and which sha256 a cached file must have."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Optional

from .. import atomic
from ..errors import ZooError
from ..refs import FileRef
from .layout import CACHE_ELSEWHERE, pins_path, planted


@dataclass(frozen=True)
class Pin:
    """A checksum recorded on this machine by ``pycontrast-zoo pin`` (trust on first download)."""

    key: str
    filename: str
    sha256: str
    size_bytes: int
    url: str
    pinned_at: str


def load_pins() -> dict[str, Pin]:
    """The pin lock file (``<cache>/pins.json``) as key -> Pin; empty when there is none."""
    path = pins_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ZooError(f"{path}: unreadable pin lock file ({exc}); delete it and run `pycontrast-zoo pin`") from None
    try:
        return {key: Pin(key=key, **value) for key, value in data["pins"].items()}
    except (KeyError, TypeError, AttributeError) as exc:
        raise ZooError(f"{path}: malformed pin lock file ({exc}); delete it and run `pycontrast-zoo pin`") from None


def record_pin(pin: Pin) -> None:
    """Add or replace one pin in the lock file (under a file lock, written atomically)."""
    from filelock import FileLock

    path = pins_path()
    atomic.make_dirs(path.parent, CACHE_ELSEWHERE)
    planted(path.with_name(path.name + ".lock"))  # a planted symlink is removed, never opened (O_TRUNC)
    with atomic.guard(path, CACHE_ELSEWHERE), FileLock(str(path) + ".lock"):
        pins = load_pins()
        pins[pin.key] = pin
        body = {"version": 1, "pins": {k: {f: v for f, v in asdict(p).items() if f != "key"}
                                       for k, p in sorted(pins.items())}}
        atomic.write_text(path, json.dumps(body, indent=2) + "\n", elsewhere=CACHE_ELSEWHERE)


@dataclass(frozen=True)
class Expected:
    """What a file must be: its sha256 and size when known, and where that knowledge comes from."""

    sha256: Optional[str]
    size_bytes: Optional[int]
    source: str  # "manifest", "pin in <path>", or "none"


def expected(file: FileRef, key: str) -> Expected:
    """The manifest's sha256 and size, else this machine's pin for the same file name."""
    if file.sha256 is not None:
        return Expected(file.sha256, file.size_bytes, "manifest")
    pin = load_pins().get(key)
    if pin is not None and pin.filename == file.filename:
        return Expected(pin.sha256, pin.size_bytes, f"pin in {pins_path()}")
    return Expected(None, file.size_bytes, "none")


def checksum_status(file: FileRef, key: str) -> str:
    """One line: where the expected sha256 of this file comes from, or that there is none."""
    want = expected(file, key)
    if want.sha256 is None:
        return f"unverified: no published checksum; run `pycontrast-zoo pin {key.split('/')[0]}`"
    return f"sha256 {want.sha256} ({want.source})"
