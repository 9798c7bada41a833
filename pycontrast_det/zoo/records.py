"""The manifest's records: pretrains, detector entries (with their config fixes and known issues) and a loaded
zoo. Plain frozen data; parsing is :mod:`.validate`, reading files :mod:`.loading`. No torch here."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

from ..errors import UnknownEntryError
from ..refs import FileRef

SCHEMA_VERSION = 1
DETECTORS = ("fpn", "c4")

#: A config value a manifest may fix: a scalar or a list of scalars (``MODEL.PIXEL_MEAN``).
Scalar = Union[str, int, float, bool]
FixValue = Union[Scalar, tuple[Scalar, ...]]


@dataclass(frozen=True)
class KnownIssue:
    """Something established about an entry that its files do not say: a sentence and where it is shown."""

    text: str
    url: str


@dataclass(frozen=True)
class PretrainEntry:
    """A pre-trained ResNet-50 encoder (or 'rand'): its file, alternatives and ImageNet linear accuracy."""

    name: str
    method: str
    epochs: Optional[int]
    imagenet_top1: Optional[float]
    file: Optional[FileRef]
    source: Path                 # the manifest file that defined it
    alternatives: tuple[FileRef, ...] = ()
    can_init_r50: bool = True
    note: Optional[str] = None


@dataclass(frozen=True)
class DetectorEntry:
    """A Mask R-CNN row of the table: detector, schedule, pretrain, config, reported AP and its files."""

    name: str
    detector: str
    schedule: str
    pretrain: str
    config: str                  # as written in the manifest
    config_path: Path            # resolved, existing file
    box_ap: float
    mask_ap: float
    published: bool
    model: Optional[FileRef]
    log: Optional[FileRef]
    source: Path                 # the manifest file that defined it
    model_alternatives: tuple[FileRef, ...] = ()  # the same detector in other bytes (e.g. the original .pth)
    note: Optional[str] = None
    config_fixes: tuple[tuple[str, FixValue], ...] = ()  # (KEY, value) every use applies on top of ``config``
    known_issues: tuple[KnownIssue, ...] = ()

    @property
    def config_overrides(self) -> tuple[str, ...]:
        """``config_fixes`` as ``KEY VALUE`` words, as a command line and ``load_config`` take them."""
        return tuple(word for key, value in self.config_fixes for word in (key, fix_word(value)))


def fix_word(value: FixValue) -> str:
    """A fixed value as one command-line word (a string as it is, anything else as a Python literal)."""
    if isinstance(value, tuple):
        return repr(list(value))
    return value if isinstance(value, str) else repr(value)


@dataclass(frozen=True, eq=False)
class Zoo:
    """A loaded manifest: detector entries and pretrains by name (read-only, in manifest order) and the files
    they came from. Loaded manifests are cached (keyed by path and mtime), so never mutate one."""

    entries: Mapping[str, DetectorEntry]
    pretrains: Mapping[str, PretrainEntry]
    sources: tuple[Path, ...] = field(default=())
    schema_version: int = SCHEMA_VERSION

    def entry(self, name: str) -> DetectorEntry:
        """The detector entry called ``name``; UnknownEntryError with close matches otherwise."""
        try:
            return self.entries[name]
        except KeyError:
            raise UnknownEntryError(f"{unknown_message('detector entry', name, self.entries)} "
                                    f"(`pycontrast-zoo list` shows all)") from None

    def pretrain(self, name: str) -> PretrainEntry:
        """The pretrain called ``name``; UnknownEntryError with close matches otherwise."""
        try:
            return self.pretrains[name]
        except KeyError:
            known = ", ".join(self.pretrains)
            raise UnknownEntryError(f"{unknown_message('pretrain', name, self.pretrains)} "
                                    f"Known pretrains: {known}") from None

    def entries_for_pretrain(self, name: str) -> list[DetectorEntry]:
        """Detector entries fine-tuned from pretrain ``name`` (the pretrain -> downstream link)."""
        return [e for e in self.entries.values() if e.pretrain == name]


def unknown_message(kind: str, name: str, known: Iterable[str]) -> str:
    """``unknown KIND 'name'.`` with close matches, for an UnknownEntryError."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"unknown {kind} {name!r}.{hint}"
