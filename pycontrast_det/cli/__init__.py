"""The ``pycontrast-zoo`` command: one argparse parser, subcommands registered by topic modules.

Each topic module exposes ``register(subparsers)`` and must not import torch at module level, so that
``pycontrast-zoo list`` stays fast and light. The conventions the commands share (``KEY VALUE`` overrides,
``--device``, ENTRY|CHECKPOINT) are in :mod:`.options`; the run options of train, reproduce and finetune in
:mod:`.runs`.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

from ..errors import DownloadInterrupted, ZooError
from ..store.partials import terminate_as_interrupt
from ..zoo import manifests_in_use

_TOPICS = ("zoo_cmds", "convert_cmd", "predict_cmd", "eval_cmds", "train_cmds", "finetune_cmd", "publish_cmd",
           "export_cmd", "audit_cmd", "push_cmd")


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="pycontrast-zoo",
        description="PyContrast detection-transfer model zoo: list, fetch, convert, predict, evaluate, reproduce, "
                    "publish, export.",
    )
    parser.add_argument("--manifest", metavar="PATH", action="append", default=None,
                        help="use this manifest instead of (first one) or merged over the shipped zoo.yaml, for "
                             "every command; repeatable (also PYCONTRAST_ZOO_MANIFEST)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for topic in _TOPICS:
        try:
            module = importlib.import_module(f".{topic}", __name__)
        except ModuleNotFoundError as exc:  # a topic not yet present in this checkout
            if exc.name != f"{__name__}.{topic}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: parse, run the chosen subcommand, turn a ZooError into a one-line message and exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line as given (a SLURM job reruns it)
    try:  # SIGTERM (timeout, docker stop, SLURM) stops a command as Ctrl-C does: partial downloads are kept
        with manifests_in_use(args.manifest), terminate_as_interrupt():  # --manifest: see manifests_in_use
            code = args.func(args)
    except ZooError as exc:
        print(f"pycontrast-zoo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, DownloadInterrupted) else 0
        if signum:
            print(f"pycontrast-zoo {args.command}: {exc}: partial downloads are kept; run it again to resume",
                  file=sys.stderr)
            return 128 + signum
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early: not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
