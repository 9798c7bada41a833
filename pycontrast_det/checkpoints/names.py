"""What a string names: the one parser every place that takes weights, a model or a pretrain goes through.

``pcd.load``, ``MODEL.WEIGHTS``, ``reproduce --pretrain``, ``finetune`` and ``convert`` all ask
:func:`parse_name`, which answers with a :class:`Name` of one :class:`Kind`, decided in this order (explicit
schemes first, then what is on disk, then what the zoo knows; nothing is fetched here):

1. ``file://PATH`` is a file; ``detectron2://NAME`` a name of detectron2's model zoo;
2. ``hf://org/repo[/folder]`` a published folder, unless it ends in a weights file's suffix (then a URL);
3. an existing file is a file (a config when it ends in ``.yaml`` / ``.yml``); an existing folder holding
   ``SHA256SUMS`` a published folder;
4. any other ``scheme://`` is a URL;
5. a path that does not exist (it has a weights suffix or a path separator) is a missing file;
6. a bare name is a zoo entry, else a zoo pretrain, else a config under ``configs/``, else unknown.

A file may end in ``#key=PATH.IN.FILE``, ``#prefix=STR`` and/or ``#ema`` (joined by ``&``): which encoder of a
pretrain to take when the file holds several (:class:`~.encoders.EncoderChoice`). Torch-free.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from ..errors import ConfigError
from .encoders import EncoderChoice
from .published import CHECKSUMS

if TYPE_CHECKING:
    from ..zoo import Zoo

WEIGHTS_SUFFIXES = (".pth", ".pkl", ".pt", ".tar", ".safetensors", ".pickle", ".bin", ".ckpt")
CONFIG_SUFFIXES = (".yaml", ".yml")
_CHOICE_WORDS = ("key", "prefix", "ema")


class Kind(str, Enum):
    """What a string names."""

    FILE = "file"
    MISSING_FILE = "missing file"
    URL = "URL"
    DETECTRON2 = "detectron2:// name"
    PUBLISHED = "published folder"
    ENTRY = "zoo entry"
    PRETRAIN = "zoo pretrain"
    CONFIG = "config"
    UNKNOWN = "unknown name"


@dataclass(frozen=True)
class Name:
    """A parsed string: ``text`` without the encoder choice; ``path`` for files, configs and folders on disk."""

    spec: str
    kind: Kind
    text: str
    path: Optional[Path] = None
    choice: EncoderChoice = EncoderChoice()


def split_choice(spec: str) -> tuple[str, EncoderChoice]:
    """``FILE#key=K&prefix=P&ema`` -> (``FILE``, the choice); a ``#`` followed by anything else stays in the name."""
    text, sep, fragment = spec.rpartition("#")
    parts = [p for p in fragment.split("&") if p]
    if not sep or not parts or not all(p.partition("=")[0] in _CHOICE_WORDS for p in parts):
        return spec, EncoderChoice()
    values: dict[str, str] = {}
    for part in parts:
        word, has_value, value = part.partition("=")
        if (word == "ema") == bool(has_value) or word in values:
            raise ConfigError(f"{spec}: the part after '#' is key=PATH.IN.FILE, prefix=STR and/or ema, each once "
                              f"(got {part!r})")
        values[word] = value
    return text, EncoderChoice(key=values.get("key"), prefix=values.get("prefix"), ema="ema" in values)


def with_choice(text: str, choice: EncoderChoice) -> str:
    """The inverse of :func:`split_choice`: ``text`` with ``choice`` appended (unchanged when there is none)."""
    parts = [f"key={choice.key}" if choice.key is not None else "",
             f"prefix={choice.prefix}" if choice.prefix is not None else "", "ema" if choice.ema else ""]
    fragment = "&".join(p for p in parts if p)
    return f"{text}#{fragment}" if fragment else text


def parse_name(spec: Union[str, os.PathLike], *, zoo: Optional["Zoo"] = None) -> Name:
    """What ``spec`` names (the order in the module docstring); reads the manifest only for a bare name."""
    given = os.fspath(spec)
    text, choice = split_choice(given)
    path = Path(text).expanduser()

    def named(kind: Kind, where: Optional[Path] = None) -> Name:
        return Name(given, kind, text, where, choice)

    if text.startswith("file://"):
        local = Path(text[len("file://"):])
        return named(Kind.FILE if local.is_file() else Kind.MISSING_FILE, local)
    if text.startswith("detectron2://"):
        return named(Kind.DETECTRON2)
    if text.startswith("hf://"):
        return named(Kind.URL if text.endswith(WEIGHTS_SUFFIXES) else Kind.PUBLISHED)
    if text and path.is_file():
        return named(Kind.CONFIG if path.suffix in CONFIG_SUFFIXES else Kind.FILE, path)
    if text and (path / CHECKSUMS).is_file():
        return named(Kind.PUBLISHED, path)
    if "://" in text:
        return named(Kind.URL)
    from ..resources import configs_dir

    if path.suffix in CONFIG_SUFFIXES and (configs_dir() / text).is_file():
        return named(Kind.CONFIG, configs_dir() / text)
    if not text or path.suffix in WEIGHTS_SUFFIXES + CONFIG_SUFFIXES or os.sep in text:
        return named(Kind.MISSING_FILE, path)
    from ..zoo import load_manifest

    zoo = zoo or load_manifest()
    if text in zoo.entries:
        return named(Kind.ENTRY)
    if text in zoo.pretrains:
        return named(Kind.PRETRAIN)
    if (configs_dir() / f"{text}.yaml").is_file():
        return named(Kind.CONFIG, configs_dir() / f"{text}.yaml")
    return named(Kind.UNKNOWN)


def known_names(zoo: "Zoo") -> list[str]:
    """Every bare name :func:`parse_name` knows (entries, pretrains, shipped configs), for close-match hints."""
    from ..resources import configs_dir

    return [*zoo.entries, *zoo.pretrains, *(p.stem for p in configs_dir().glob("*.yaml"))]
