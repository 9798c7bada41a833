"""What a pretrain conversion did, key by key: the record the CLI prints and the cache stores."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass
class ConversionReport:
    """``kept``: output (detectron2) keys; ``renamed``: source key -> output key where the name changed;
    ``dropped``: source key or top-level entry -> why; ``missing``: ResNet-50 keys the source lacks;
    ``filled``: keys set to neutral values the source format does not store (see ``convention``). Where the encoder
    was found: ``container`` (dotted path of the tensor set in the file), ``prefix``, ``names`` (the naming
    scheme), ``chosen`` (why this encoder), ``also`` (the other complete ResNet-50s); ``groups``: what was
    dropped, by group with counts; ``convention``: the input convention the weights need."""

    source: str
    format: str
    ema: bool
    kept: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)
    stride_in_1x1: Optional[bool] = None  # what MODEL.RESNETS.STRIDE_IN_1X1 must be; None: unknown
    input_format: Optional[str] = None  # "RGB" or "BGR": the channel order the weights were trained on
    container: str = ""
    prefix: str = ""
    names: str = ""
    chosen: str = ""
    also: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    convention: str = ""

    @property
    def ok(self) -> bool:
        """True when every ResNet-50 backbone key is present."""
        return not self.missing

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "ConversionReport":
        return cls(**data)

    def found(self) -> list[str]:
        """Where the encoder was found, which one was taken, what was dropped, and the input convention."""
        lines = [f"found: a ResNet-50 ({self.names} names) in {self.container or 'the top level'} under prefix "
                 f"{self.prefix!r}: {self.chosen}"]
        lines += [f"also there: {other}" for other in self.also]
        lines += [f"dropped: {group}" for group in self.groups]
        if self.convention:
            lines.append(f"input convention: {self.convention}")
        return lines

    def summary(self, verbose: bool = True) -> str:
        """Human-readable counts, then names (all of them when ``verbose``)."""
        lines = [
            f"source: {self.source}",
            f"format: {self.format}{' (ema)' if self.ema else ''}",
            f"kept: {len(self.kept)}  renamed: {len(self.renamed)}  dropped: {len(self.dropped)}  "
            f"missing: {len(self.missing)}  filled: {len(self.filled)}",
        ]
        if self.stride_in_1x1 is not None:
            lines.append(f"use MODEL.RESNETS.STRIDE_IN_1X1 {self.stride_in_1x1}, INPUT.FORMAT {self.input_format}")
        lines += self.found()
        if verbose:
            lines += [f"renamed: {src} -> {dst}" for src, dst in self.renamed.items()]
            lines += [f"dropped: {src} ({why})" for src, why in self.dropped.items()]
            lines += [f"filled: {k}" for k in self.filled]
        lines += [f"MISSING: {k}" for k in self.missing]
        return "\n".join(lines)
