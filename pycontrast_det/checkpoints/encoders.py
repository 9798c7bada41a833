"""Find the ResNet-50 inside any checkpoint by its structure, and choose the one its method evaluates.

The file is walked as a tree: every mapping reached through its keys (any depth) is a *container*, and the
arrays directly in it are one set of tensors. In each set, a *candidate* is a prefix under which tensors form a
ResNet under one of :data:`SCHEMES` (torchvision, detectron2, MSRA caffe2, or the child indices of
``nn.Sequential(*resnet.children())``): its stem conv and first bottleneck are there. Its block counts say which
ResNet it is; a ResNet-50 is complete when every tensor is there (shapes are confirmed on conversion).

Several complete ResNet-50s (:func:`locate`): ``key`` / ``prefix`` of :class:`EncoderChoice` filter them; EMA
copies (a path part ``ema``) are taken only with ``ema``; then the network the method evaluates wins
(:data:`CHOICE_RULE`). A tie left is an error listing the candidates. Torch-free.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional

from ..errors import ArchitectureMismatchError, CheckpointFormatError
from .formats import (
    BACKBONE, CheckpointFormat, Renamer, c2_rename, d2_backbone_rename, detect_format, format_named,
    torchvision_rename, weights_kind,
)
from .r50 import BLOCKS, r50_d2_shapes

CHOICE_RULE = ("the network each method evaluates: teacher over student; base / query / online encoder over "
               "momentum / key / target; an EMA copy only with --ema")
_PRIMARY = frozenset({"teacher", "base", "query", "online", "q"})
_SECONDARY = frozenset({"student", "momentum", "key", "target", "k"})
_EMA = "ema"
_BLOCK = re.compile(r"res(?P<s>[2-5])\.(?P<b>\d+)\.conv(?P<i>\d)\.weight\Z")
# (blocks per stage..., bottleneck) -> depth, to name a ResNet that is not a ResNet-50
_OTHER_DEPTHS: dict[tuple[object, ...], int] = {(2, 2, 2, 2, False): 18, (3, 4, 6, 3, False): 34,
                                                (3, 4, 23, 3, True): 101, (3, 8, 36, 3, True): 152}
# why a group of tensors outside the encoder is there, by a word of its name (first match)
_GROUP_REASONS = (
    ("ema", "EMA copy of a network"), ("optimizer", "optimizer state"), ("loss", "loss state"),
    ("predictor", "predictor"), ("prototypes", "prototypes"), ("queue", "negative queue"), ("neck", "projection neck"),
    ("projector", "projection head"), ("projection", "projection head"), ("head", "projection head"),
    ("heads", "heads"), ("contrast", "memory bank"), ("memory", "memory bank"), ("fc", "classifier"),
)


@dataclass(frozen=True)
class EncoderChoice:
    """Which encoder to take when a file holds several: ``key`` (a dotted path into the file: a container,
    or a container and the start of a prefix), ``prefix`` (the encoder's key prefix), ``ema`` (an EMA copy)."""

    key: Optional[str] = None
    prefix: Optional[str] = None
    ema: bool = False

    @property
    def by_hand(self) -> bool:
        return self.key is not None or self.prefix is not None

    def options(self) -> str:
        """The same choice as command-line options, for messages."""
        parts = [f"--key {self.key}" if self.key is not None else "",
                 f"--prefix {self.prefix}" if self.prefix is not None else "", "--ema" if self.ema else ""]
        return " ".join(p for p in parts if p)


def _sequential_rename(name: str) -> tuple[Optional[str], str]:
    """``nn.Sequential(*resnet.children())`` index names: 0 conv1, 1 bn1, 4..7 layer1..4 (9: the fc)."""
    head, _, rest = name.partition(".")
    children = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
    if head == "9":
        return None, "classifier fc"
    if head not in children:
        return None, "not a ResNet-50 backbone key"
    return torchvision_rename(f"{children[head]}.{rest}")


@dataclass(frozen=True)
class Scheme:
    """One way of naming a ResNet's tensors: its name for the stem conv, how a key becomes detectron2's name, and
    the format rows that share these names (the last one is the default)."""

    name: str
    stem: str
    rename: Renamer
    rows: tuple[str, ...]


SCHEMES: tuple[Scheme, ...] = (
    Scheme("torchvision", "conv1.weight", torchvision_rename,
           ("moco", "pycontrast", "torchvision")),
    Scheme("nn.Sequential children", "0.weight", _sequential_rename, ("torchvision",)),
    Scheme("detectron2", "stem.conv1.weight", d2_backbone_rename, ("detectron2",)),
    Scheme("MSRA caffe2", "conv1_w", c2_rename, ("msra_c2",)),
)


@dataclass(frozen=True)
class Candidate:
    """A ResNet found in one container under one prefix: ``names`` maps detectron2 names to the file's keys."""

    container: tuple[str, ...]
    prefix: str
    scheme: Scheme
    names: Mapping[str, str]
    blocks: tuple[int, ...]
    bottleneck: bool

    @property
    def location(self) -> str:
        """Where it is, as a dotted path into the file (``--key`` takes any start of it)."""
        return ".".join([*self.container, self.prefix.rstrip(".")]).strip(".")

    def describe(self) -> str:
        where = ".".join(self.container) or "the top level"
        return f"{where} under prefix {self.prefix!r} ({self.scheme.name} names)"

    @property
    def is_r50(self) -> bool:
        """Bottleneck blocks, no stage deeper than a ResNet-50's (a missing block is a partial ResNet-50)."""
        return self.bottleneck and all(b <= r for b, r in zip(self.blocks, BLOCKS))

    def architecture(self) -> str:
        """What it is when it is no ResNet-50, e.g. ``a ResNet-18 (basic blocks 2, 2, 2, 2 in its 4 stages)``."""
        depth = _OTHER_DEPTHS.get((*self.blocks, self.bottleneck))
        kind = "bottleneck" if self.bottleneck else "basic"
        name = f"a ResNet-{depth}" if depth else "a ResNet"
        return f"{name} ({kind} blocks {', '.join(map(str, self.blocks))} in its 4 stages)"

    def missing(self, affine_only: bool) -> list[str]:
        """ResNet-50 tensors (detectron2 names) it lacks; counters, and running stats of affine-only norms, aside."""
        skip = ("num_batches_tracked", "running_mean", "running_var") if affine_only else ("num_batches_tracked",)
        return [k for k in r50_d2_shapes() if k not in self.names and not k.endswith(skip)]

    def rank(self) -> tuple[int, int]:
        """Smaller is preferred: no training-companion word, then an evaluated-network word (:data:`CHOICE_RULE`)."""
        words = _words(self.location)
        return (bool(words & _SECONDARY), not words & _PRIMARY)


def _words(location: str) -> set[str]:
    return {w for w in re.split(r"[._]", location.lower()) if w}


def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def containers(obj: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """(path, {key: array}) of every mapping in ``obj`` that holds arrays, shallowest first."""
    if not isinstance(obj, Mapping):
        return
    arrays = {str(k): v for k, v in obj.items() if _is_array(v)}
    if arrays:
        yield path, arrays
    for key, value in obj.items():
        if isinstance(value, Mapping):
            yield from containers(value, (*path, str(key)))


def candidates(path: tuple[str, ...], arrays: Mapping[str, Any]) -> list[Candidate]:
    """Every ResNet (a stem conv and a residual block's conv) in one container, under any prefix and scheme."""
    found = []
    for scheme in SCHEMES:
        for key in arrays:
            prefix = key[:-len(scheme.stem)]
            if key.endswith(scheme.stem) and (not prefix or prefix.endswith(".")):
                candidate = _candidate(path, prefix, scheme, arrays)
                if any(candidate.blocks):
                    found.append(candidate)
    return found


def _candidate(path: tuple[str, ...], prefix: str, scheme: Scheme, arrays: Mapping[str, Any]) -> Candidate:
    names: dict[str, str] = {}
    blocks = [0, 0, 0, 0]
    bottleneck = False
    for key in arrays:
        if not key.startswith(prefix):
            continue
        name = scheme.rename(key[len(prefix):])[0]
        if name is None:
            continue
        names[name] = key
        m = _BLOCK.match(name)
        if m is not None:
            stage = int(m["s"]) - 2
            blocks[stage] = max(blocks[stage], int(m["b"]) + 1)
            bottleneck = bottleneck or m["i"] == "3"
    return Candidate(path, prefix, scheme, names, tuple(blocks), bottleneck)


@dataclass(frozen=True)
class Located:
    """The encoder chosen in a file: its candidate, its container's tensors, the format row that adds what it
    knows, the other complete ResNet-50s, the file's top-level object and why this one was taken."""

    source: str
    chosen: Candidate
    state: Mapping[str, Any]
    row: CheckpointFormat
    others: tuple[Candidate, ...]
    root: Mapping[str, Any]
    reason: str


def _vit_problem(arrays: Mapping[str, Any]) -> Optional[str]:
    blocks = {int(m.group(1)) for k in arrays for m in [re.search(r"(?:^|\.)blocks\.(\d+)\.", k)] if m}
    if blocks and any(re.search(r"(?:^|\.)(patch_embed|cls_token|pos_embed)", k) for k in arrays):
        return (f"a Vision Transformer (patch_embed, blocks.0-{max(blocks)}), not a ResNet-50: the zoo's detectors "
                "are Mask R-CNN R50-FPN/C4")
    return None


def _refusal(source: str, tree: list[tuple[tuple[str, ...], dict[str, Any]]], found: list[Candidate]) -> str:
    """The one line that says why no ResNet-50 was found."""
    other = next((c for c in found if not c.is_r50), None)
    if other is not None:
        return (f"{source}: {other.describe()} is {other.architecture()}, not a ResNet-50 (bottleneck blocks "
                f"{', '.join(map(str, BLOCKS))}): the zoo's detectors are ResNet-50s")
    vit = next((p for _, arrays in tree for p in [_vit_problem(arrays)] if p), None)
    if vit is not None:
        return f"{source}: {vit}"
    first = next(iter(tree), ((), {}))
    where = ".".join(first[0]) or "the top level"
    return (f"{source}: unknown checkpoint layout: no ResNet-50 (torchvision, detectron2, MSRA caffe2 or "
            f"nn.Sequential names) in any of its {len(tree)} tensor sets (first: {where}, keys {list(first[1])[:4]})")


def _matches(c: Candidate, choice: EncoderChoice) -> bool:
    if choice.key is not None:
        key = choice.key.strip(".")
        if not (c.location == key or c.location.startswith(key + ".") or ".".join(c.container) == key):
            return False
    return choice.prefix is None or c.prefix.rstrip(".") == choice.prefix.rstrip(".")


def _listing(found: list[Candidate]) -> str:
    return "; ".join(f"--key {c.location} ({c.describe()})" for c in found)


def _choose(source: str, resnets: list[Candidate], choice: EncoderChoice) -> Candidate:
    """The ResNet-50 taken: ``choice``'s filters, EMA copies only with ``ema``, complete over partial, then
    :data:`CHOICE_RULE`; an error listing the candidates when they still tie."""
    pool = [c for c in resnets if _matches(c, choice)]
    if not pool:
        raise CheckpointFormatError(f"{source}: {choice.options()} matches none of its ResNet-50s: {_listing(resnets)}")
    if not choice.by_hand:
        ema = [c for c in pool if _EMA in _words(c.location)]
        if choice.ema and not ema:
            raise CheckpointFormatError(f"{source}: --ema asked for, but the file has no EMA copy of the encoder "
                                        f"(no 'ema' in any of: {', '.join(c.location for c in pool)})")
        pool = ema if choice.ema else [c for c in pool if c not in ema] or pool
    complete = sorted([c for c in pool if not c.missing(_affine_only(c))] or pool, key=Candidate.rank)
    tied = [c for c in complete if c.rank() == complete[0].rank()]
    if len(tied) > 1:
        raise CheckpointFormatError(f"{source}: {len(tied)} ResNet-50s and no rule to choose; pick one with --key "
                                    f"or --prefix (or FILE#key=...): {_listing(tied)}")
    return complete[0]


def locate(root: Mapping[str, Any], source: str, choice: EncoderChoice = EncoderChoice(),
           row: Optional[CheckpointFormat] = None) -> Located:
    """The ResNet-50 encoder of a file's top-level object (see the module docstring); ``row`` (a format named by
    the user or the manifest) keeps only candidates under its names and prefixes.

    CheckpointFormatError / ArchitectureMismatchError, in one line, when there is none, when the one chosen is
    partial (naming what is missing), or when the choice is still ambiguous (listing the candidates).
    """
    tree = list(containers(root))
    refused = next((r for _, arrays in tree for r in [detect_format(arrays)] if r is not None and r.refusal), None)
    if refused is not None:
        raise CheckpointFormatError(f"{source}: this is {refused.refusal}")
    found = [c for path, arrays in tree for c in candidates(path, arrays)]
    if row is not None:
        found = [c for c in found if row.name in c.scheme.rows
                 and (row.prefixes == ("",) or c.prefix in row.prefixes)]
        if not found:
            raise CheckpointFormatError(
                f"{source}: no ResNet-50 backbone weights found as format {row.name!r} (prefixes {list(row.prefixes)}"
                f"); leave the format out to find the encoder by structure")
    resnets = [c for c in found if c.is_r50]
    if not resnets:
        raise (ArchitectureMismatchError if found else CheckpointFormatError)(_refusal(source, tree, found))
    chosen = _choose(source, resnets, choice)
    missing = chosen.missing(_affine_only(chosen))
    if missing:
        raise CheckpointFormatError(f"{source}: the ResNet-50 at {chosen.describe()} is partial: {len(missing)} "
                                    f"tensors missing ({', '.join(group_counts(missing))})")
    arrays = dict(tree)[chosen.container]
    detected = detect_format(arrays)
    fmt = row or (detected if detected is not None and detected.name in chosen.scheme.rows
                  else format_named(chosen.scheme.rows[-1]))
    others = tuple(c for c in resnets if c is not chosen)
    reason = ("chosen by hand" if choice.by_hand else "the only ResNet-50" if not others
              else f"chosen by the rule: {CHOICE_RULE}")
    return Located(source, chosen, arrays, fmt, others, root, reason)


def _affine_only(c: Candidate) -> bool:
    return "msra_c2" in c.scheme.rows


def group_counts(names: list[str]) -> list[str]:
    """``res5.2.* (15 tensors)``-style counts of detectron2 names by block."""
    counts: dict[str, int] = {}
    for name in names:
        parts = name.split(".")
        group = ".".join(parts[:2]) if parts[0].startswith("res") else parts[0]
        counts[group] = counts.get(group, 0) + 1
    return [f"{g}.* ({tensor_count(n)})" for g, n in counts.items()]


def tensor_count(n: int) -> str:
    """``1 tensor``, ``3 tensors``."""
    return f"{n} tensor{'' if n == 1 else 's'}"


def group_of(key: str, beside: str = "") -> str:
    """A key's group for a report: the names it shares with the prefix ``beside``, then one more
    (``module.predictor.0.weight`` beside ``module.base_encoder.`` -> ``module.predictor.*``); a caffe2 blob
    name, which has no dots, by its first ``_`` part (``fc1000_w`` -> ``fc1000_*``)."""
    sep = "." if "." in key else "_"
    parts, near = key.split(sep), beside.rstrip(".").split(".") if beside else []
    shared = 0
    while shared < min(len(near), len(parts) - 1) and parts[shared] == near[shared]:
        shared += 1
    return sep.join(parts[:shared + 1]) + sep + "*" if len(parts) > shared + 1 else key


def group_reason(group: str, others: tuple[Candidate, ...], container: tuple[str, ...] = ()) -> str:
    """Why a group (of the tensor set at ``container``) outside the encoder is there: another ResNet-50 it
    holds, else a word of its name."""
    stem = ".".join([*container, group.rstrip("*").rstrip(".")])
    held = [c for c in others if c.location == stem or c.location.startswith(stem + ".")]
    if held:
        role = sorted(_words(held[0].location) & (_PRIMARY | _SECONDARY | {_EMA}))
        return f"another ResNet-50{' (' + ', '.join(role) + ')' if role else ''}, not the evaluated one"
    words = _words(stem)
    return next((why for word, why in _GROUP_REASONS if word in words), "not part of the encoder")


def is_detector(root: Mapping[str, Any]) -> Optional[tuple[tuple[str, ...], dict[str, Any], str]]:
    """(path, tensors, kind) of the first tensor set holding detector parts (:func:`~.formats.weights_kind`)."""
    for path, arrays in containers(root):
        kind = weights_kind(arrays)
        if kind != BACKBONE:
            return path, arrays, kind
    return None


__all__ = ["CHOICE_RULE", "Candidate", "EncoderChoice", "Located", "SCHEMES", "Scheme", "candidates", "containers",
           "group_counts", "group_of", "group_reason", "is_detector", "locate", "tensor_count"]
