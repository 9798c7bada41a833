"""detectron2 checkpoint keys <-> our model's torchvision-style keys (one rename table per layout, ``RULES``).

``d2_to_model`` is a pure rename plus a float32 cast; shape checks are the model's job (load_state_dict).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

from .arrays import as_float32_tensor
from .keymap import Rule, bottleneck_rules, rename, resnet_rules

ARCHS = ("fpn", "c4")

# detectron2 buffers that are not weights: recomputed by the model, dropped on load.
IGNORED_PREFIXES = ("proposal_generator.anchor_generator.cell_anchors.", "pixel_mean", "pixel_std")

# our layers whose shapes depend on the number of classes (box classifier and regressor, mask predictor)
CLASS_DEPENDENT = ("roi_heads.box_predictor.cls_score.", "roi_heads.box_predictor.bbox_pred.",
                   "roi_heads.mask_predictor.mask_fcn_logits.")

_HEADS = [
    Rule("proposal_generator.rpn_head.conv.{p}", "rpn.head.conv.0.0.{p}"),
    Rule("proposal_generator.rpn_head.objectness_logits.{p}", "rpn.head.cls_logits.{p}"),
    Rule("proposal_generator.rpn_head.anchor_deltas.{p}", "rpn.head.bbox_pred.{p}"),
    Rule("roi_heads.box_predictor.cls_score.{p}", "roi_heads.box_predictor.cls_score.{p}"),
    Rule("roi_heads.box_predictor.bbox_pred.{p}", "roi_heads.box_predictor.bbox_pred.{p}"),
    Rule("roi_heads.mask_head.deconv.{p}", "roi_heads.mask_predictor.conv5_mask.{p}"),
    Rule("roi_heads.mask_head.predictor.{p}", "roi_heads.mask_predictor.mask_fcn_logits.{p}"),
]

_FPN = [
    *resnet_rules("backbone.bottom_up.", "backbone.body."),
    Rule("backbone.fpn_lateral{k}.{p}", "backbone.fpn.inner_blocks.{k}.0.{p}", {"k": -2}),
    Rule("backbone.fpn_lateral{k}.norm.{p}", "backbone.fpn.inner_blocks.{k}.1.{p}", {"k": -2}),
    Rule("backbone.fpn_output{k}.{p}", "backbone.fpn.layer_blocks.{k}.0.{p}", {"k": -2}),
    Rule("backbone.fpn_output{k}.norm.{p}", "backbone.fpn.layer_blocks.{k}.1.{p}", {"k": -2}),
    *_HEADS,
    Rule("roi_heads.box_head.conv{i}.{p}", "roi_heads.box_head.{i}.0.{p}", {"i": -1}),
    Rule("roi_heads.box_head.conv{i}.norm.{p}", "roi_heads.box_head.{i}.1.{p}", {"i": -1}),
    Rule("roi_heads.box_head.fc1.{p}", "roi_heads.box_head.5.{p}"),  # index 4 is Flatten
    Rule("roi_heads.mask_head.mask_fcn{i}.{p}", "roi_heads.mask_head.{i}.0.{p}", {"i": -1}),
    Rule("roi_heads.mask_head.mask_fcn{i}.norm.{p}", "roi_heads.mask_head.{i}.1.{p}", {"i": -1}),
]

_C4 = [
    *resnet_rules("backbone.", "backbone.body."),
    *bottleneck_rules("roi_heads.res5.", "roi_heads.res5.", {}),
    Rule("roi_heads.res5.norm.{p}", "roi_heads.res5_norm.{p}"),
    *_HEADS,
]

RULES: dict[str, list[Rule]] = {"fpn": _FPN, "c4": _C4}


@dataclass(frozen=True)
class MappingReport:
    """What a rename kept out: ``unexpected`` (no rule or not in the model), ``dropped`` (ignored buffers),
    ``missing`` (model keys absent from the checkpoint; only known when ``expected_keys`` was given)."""

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    dropped: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected


def _rules(arch: str) -> list[Rule]:
    if arch not in RULES:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    return RULES[arch]


def d2_to_model(state: Mapping[str, Any], arch: str,
                expected_keys: Optional[Iterable[str]] = None) -> tuple[dict[str, Any], MappingReport]:
    """Rename a detectron2 state dict (tensors or numpy arrays) to our model's keys for ``arch`` ("fpn"|"c4").

    Floating values become float32 tensors. With ``expected_keys`` (the model's state_dict keys), keys the
    model lacks move to ``unexpected`` and model keys with no value are listed in ``missing``.
    """
    rules = _rules(arch)
    # saved from a DistributedDataParallel model: match without "module." (reports keep the file's names)
    strip = len("module.") if state and all(k.startswith("module.") for k in state) else 0
    out: dict[str, Any] = {}
    source: dict[str, str] = {}  # our key -> the checkpoint key it came from
    unexpected: list[str] = []
    dropped: list[str] = []
    for key, value in state.items():
        name = key[strip:]
        if name.startswith(IGNORED_PREFIXES):
            dropped.append(key)
            continue
        new = rename(name, rules)
        if new is None:
            unexpected.append(key)
        else:
            out[new] = as_float32_tensor(value)
            source[new] = key
    missing: list[str] = []
    if expected_keys is not None:
        expected = list(expected_keys)
        wanted = set(expected)
        for new in [k for k in out if k not in wanted]:
            unexpected.append(source[new])
            del out[new]
        missing = [k for k in expected if k not in out]
    return out, MappingReport(tuple(missing), tuple(unexpected), tuple(dropped))


def backbone_to_detector(state: Mapping[str, Any], arch: str) -> dict[str, Any]:
    """A converted R-50 backbone (``stem.*``, ``res2..5.*``, as PyContrast's converter writes it) under the
    detectron2 detector's names: FPN ``backbone.bottom_up.*``; C4 ``backbone.*`` with res5 in the ROI head."""
    _rules(arch)
    if arch == "fpn":
        return {f"backbone.bottom_up.{k}": v for k, v in state.items()}
    return {(f"roi_heads.{k}" if k.startswith("res5.") else f"backbone.{k}"): v for k, v in state.items()}


def model_to_d2_key(key: str, arch: str) -> Optional[str]:
    """The detectron2 name of one of our keys, or None when the table has no rule for it."""
    return rename(key, _rules(arch), to_ours=False)


def model_to_d2(state: Mapping[str, Any], arch: str) -> dict[str, Any]:
    """Inverse of :func:`d2_to_model`: our state dict -> detectron2 names (values untouched).

    A key without a detectron2 name raises CheckpointFormatError naming it (nothing is silently lost).
    """
    from ..errors import CheckpointFormatError

    out: dict[str, Any] = {}
    for key, value in state.items():
        new = model_to_d2_key(key, arch)
        if new is None:
            raise CheckpointFormatError(f"model key {key!r} has no detectron2 name for arch {arch!r}")
        out[new] = value
    return out
