"""Two-way key renaming by templates: the one place that spells out detectron2 <-> torchvision-style names.

A rule pairs a detectron2 template with ours, e.g. ``res{s}.{b}.conv{i}.norm.{p}`` <->
``layer{s}.{b}.bn{i}.{p}`` with ``s`` shifted by -1. Numeric fields match digits, ``{p}`` matches one
dotted-free parameter name (weight, running_mean, ...), so a rule never swallows a deeper key.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

_FIELD = re.compile(r"\{(\w+)\}")


def _compile(template: str) -> re.Pattern[str]:
    parts = []
    pos = 0
    for m in _FIELD.finditer(template):
        parts.append(re.escape(template[pos:m.start()]))
        name = m.group(1)
        parts.append(f"(?P<{name}>[A-Za-z_]+)" if name == "p" else f"(?P<{name}>\\d+)")
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts) + r"\Z")


@dataclass(frozen=True)
class Rule:
    """detectron2 template <-> our template; ``shift[field]`` is added going detectron2 -> ours."""

    d2: str
    ours: str
    shift: Mapping[str, int] = field(default_factory=dict)
    _d2_re: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _ours_re: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:  # frozen: set the compiled patterns once
        object.__setattr__(self, "_d2_re", _compile(self.d2))
        object.__setattr__(self, "_ours_re", _compile(self.ours))

    def to_ours(self, key: str) -> Optional[str]:
        m = self._d2_re.match(key)
        return None if m is None else self._format(self.ours, m.groupdict(), +1)

    def to_d2(self, key: str) -> Optional[str]:
        m = self._ours_re.match(key)
        return None if m is None else self._format(self.d2, m.groupdict(), -1)

    def _format(self, template: str, groups: dict[str, str], sign: int) -> str:
        values = {k: (str(int(v) + sign * self.shift[k]) if k in self.shift else v) for k, v in groups.items()}
        return template.format(**values)


def resnet_rules(d2_prefix: str, ours_prefix: str) -> list[Rule]:
    """ResNet stem and bottleneck blocks: ``stem.conv1`` <-> ``conv1``, ``res{s}`` <-> ``layer{s-1}``, norms."""
    d, o = d2_prefix, ours_prefix
    return [
        Rule(f"{d}stem.conv1.{{p}}", f"{o}conv1.{{p}}"),
        Rule(f"{d}stem.conv1.norm.{{p}}", f"{o}bn1.{{p}}"),
        *bottleneck_rules(f"{d}res{{s}}.", f"{o}layer{{s}}.", {"s": -1}),
    ]


def bottleneck_rules(d2_prefix: str, ours_prefix: str, shift: Mapping[str, int]) -> list[Rule]:
    """Bottleneck blocks under a prefix: conv{i}, conv{i}.norm <-> bn{i}, shortcut(.norm) <-> downsample.0/1."""
    d, o = d2_prefix, ours_prefix
    return [
        Rule(f"{d}{{b}}.conv{{i}}.{{p}}", f"{o}{{b}}.conv{{i}}.{{p}}", shift),
        Rule(f"{d}{{b}}.conv{{i}}.norm.{{p}}", f"{o}{{b}}.bn{{i}}.{{p}}", shift),
        Rule(f"{d}{{b}}.shortcut.{{p}}", f"{o}{{b}}.downsample.0.{{p}}", shift),
        Rule(f"{d}{{b}}.shortcut.norm.{{p}}", f"{o}{{b}}.downsample.1.{{p}}", shift),
    ]


def rename(key: str, rules: Sequence[Rule], to_ours: bool = True) -> Optional[str]:
    """The key renamed by the first rule that matches it, or None when none does."""
    for rule in rules:
        new = rule.to_ours(key) if to_ours else rule.to_d2(key)
        if new is not None:
            return new
    return None
