"""The command-line conventions every command that builds a model or runs shares: config overrides as trailing
``KEY VALUE`` words (detectron2's; ``--opts KEY VALUE ...`` is the same), one ``--device`` resolved one way, and
ENTRY|CHECKPOINT with ``--config`` / ``--weights`` turned into a model one way.

No torch at import (torch comes with the handlers that need it).
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

from ..config import AUTO_DEVICE, DEVICE_KEY, looks_like_key, requested_device
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..modeling import MaskRCNN

OPTS = "--opts"
EPILOG = ("Config overrides go last, detectron2 style: KEY VALUE ... (e.g. SOLVER.BASE_LR 0.01 INPUT.MIN_SIZE_TEST "
          "600; --opts KEY VALUE ... is the same). MODEL.DEVICE among them is the default for --device.")


class OverridesParser(argparse.ArgumentParser):
    """A subcommand parser that takes config overrides, wherever they stand: a word that is a config key
    (``SOLVER.BASE_LR``, ``SEED``) and the word after it are a ``KEY VALUE`` pair, and after ``--opts`` every word
    until the next option is. They are collected in order into ``opts``; the rest is parsed with positionals and
    options in any order (``predict ENTRY a.jpg --device cpu b.jpg``)."""

    _inner = False  # True while argparse's intermixed parsing calls back into parse_known_args

    def parse_known_args(  # type: ignore[override]  # argparse's overloads are generic in the namespace type
            self, args: Optional[Iterable[str]] = None, namespace: Optional[argparse.Namespace] = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._inner:
            return super().parse_known_args(args, namespace)
        words = list(sys.argv[1:] if args is None else args)
        rest: list[str] = []
        opts: list[str] = []
        index, after_opts = 0, False
        while index < len(words):
            word = words[index]
            if word == OPTS:
                after_opts = True
                index += 1
                continue
            if word.startswith("-"):  # an option: never a key (a value like -1 is taken with its key below)
                after_opts = False
            elif after_opts or looks_like_key(word):
                if index + 1 == len(words):
                    self.error(f"config override {word} has no value: overrides come as KEY VALUE pairs")
                opts += words[index:index + 2]
                index += 2
                continue
            rest.append(word)
            index += 1
        self._inner = True
        try:
            parsed, extras = self.parse_known_intermixed_args(rest, namespace)
        finally:
            self._inner = False
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        parsed.opts = opts
        return parsed, []


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` take trailing ``KEY VALUE`` overrides (and ``--opts``) into ``args.opts``."""
    parser.__class__ = OverridesParser
    parser.add_argument(OPTS, metavar="KEY VALUE", nargs="+", default=[],
                        help="config overrides (the same as KEY VALUE words at the end)")
    parser.epilog = EPILOG


def add_device(parser: argparse.ArgumentParser) -> None:
    """The ``--device`` option (None when not given: MODEL.DEVICE among the overrides, else auto)."""
    parser.add_argument("--device", metavar="D", default=None,
                        help="auto, cpu, cuda, cuda:1, ... (default: MODEL.DEVICE when given as an override, else "
                             "auto: cuda when available, else cpu)")


def add_trust(parser: argparse.ArgumentParser) -> None:
    """The ``--trust`` option of the commands that run an exported file (TorchScript runs code when loaded)."""
    parser.add_argument("--trust", action="store_true",
                        help="load an exported TorchScript file that was not exported on this machine (a "
                             "TorchScript archive runs code when it is loaded: only a file you trust; ONNX files "
                             "need no trust)")


def planned_device(args: argparse.Namespace) -> str:
    """The device a command asks for, unchecked (a plan may be for another machine): --device, else MODEL.DEVICE
    among the overrides, else auto."""
    return requested_device(args.device, args.opts, default=AUTO_DEVICE)


def run_device(args: argparse.Namespace) -> str:
    """The device a command runs on, checked against this machine (one ConfigError line otherwise): ``auto``
    becomes cuda or cpu; other names stay as given (``cuda`` is each process's own GPU)."""
    from ..modeling.device import resolve_device

    name = planned_device(args)
    device = resolve_device(name, what="--device" if name == args.device else DEVICE_KEY)
    return device.type if name == AUTO_DEVICE else name


def load_model(source: Optional[str], *, config: Optional[str], weights: Optional[str], device: str,
               overrides: Sequence[str], config_options: str = "--config CFG") -> "MaskRCNN":
    """The model of an ENTRY|CHECKPOINT argument (see ``modeling.resolve_source``) with ``--config`` /
    ``--weights``: SOURCE's config (printed) with --weights, else SOURCE's own weights; with ``--config``, that
    config and --weights, else SOURCE's weights (a zoo entry's published detector, a checkpoint, a published
    folder's detector). ``config_options`` names what the command offers to say which architecture a checkpoint
    without a config is."""
    from ..modeling import load, resolve_source

    if config is not None:
        return load(config, weights=weights if weights is not None else source, device=device,
                        overrides=list(overrides))
    assert source is not None
    resolved = resolve_source(source)
    if resolved.config is None:
        raise ConfigError(f"{source}: a checkpoint with no config in it or beside it (config.yaml); say which "
                          f"architecture it is with {config_options}")
    print(f"config: {resolved.origin}")
    return load(resolved, weights=weights, device=device, overrides=list(overrides))


__all__ = ["EPILOG", "OverridesParser", "add_device", "add_overrides", "add_trust", "load_model", "planned_device",
           "run_device"]
