"""The checkpoint formats this package reads, one row each, and the rule that says what a file holds.

A row says how to recognise the format from key names, where its encoder's keys start, how one of its keys
becomes detectron2's backbone name, and what the weights need from the config (stride placement, input
channel order). Adding a pretrain format is one row of :data:`TABLE` (its name also goes into
``refs.WEIGHT_FORMATS``, the one list of names a manifest may use; a test checks each row is there) plus a test.
Torch-free.

**What a file holds** (:func:`weights_kind`), decided from the names of its weights (inside ``model`` /
``state_dict`` / ``blobs`` when present, ``module.`` stripped), in this order:

1. a whole detector under this package's names when any key starts with ``backbone.body.``,
   ``backbone.fpn.`` or ``rpn.head.``;
2. a whole detector under detectron2's names when any key starts with ``proposal_generator.`` or
   ``roi_heads.`` (detector parts: ``backbone.*`` alone is how self-supervised codebases name their encoder);
3. otherwise a backbone pretrain. Where its ResNet-50 is and under which names is found by structure
   (:mod:`.encoders`); the first row of :data:`TABLE` that recognises the weights' container adds what it
   knows (MoCo's key encoder, PyContrast's EMA entry, caffe2's affine-only norms, the input convention).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from .keymap import rename, resnet_rules

DETECTOR_OURS = "detector (pycontrast-det names)"
DETECTOR_D2 = "detector (detectron2 names)"
BACKBONE = "backbone pretrain"

_OUR_PREFIXES = ("backbone.body.", "backbone.fpn.", "rpn.head.")
_D2_DETECTOR_PREFIXES = ("proposal_generator.", "roi_heads.")

Renamer = Callable[[str], tuple[Optional[str], str]]


@dataclass(frozen=True)
class CheckpointFormat:
    """One checkpoint layout.

    ``detect`` sees the weights' key names; ``prefixes`` are where the encoder's keys start (most specific
    first; ``("",)``: anywhere, found by structure); ``rename`` maps a key without its prefix to (detectron2
    backbone name, or None and why it is dropped); ``outside`` says why keys outside the prefix are dropped;
    ``stride_in_1x1`` / ``input_format`` are what MODEL.RESNETS.STRIDE_IN_1X1 / INPUT.FORMAT must be (None: the
    file does not say); ``affine_only_norms``: norms store no running statistics (filled with detectron2's
    identity values); ``ema_entry``: a top-level entry holding an EMA copy of the encoder; ``refusal``: why such
    a file cannot initialise an RGB ResNet-50 (the format is recognised only to say so).
    """

    name: str
    description: str
    detect: Callable[[list[str]], bool]
    prefixes: tuple[str, ...] = ("",)
    rename: Renamer = lambda name: (None, "this format cannot initialise a ResNet-50")
    outside: tuple[tuple[str, str], ...] = ()
    stride_in_1x1: Optional[bool] = None
    input_format: Optional[str] = None
    note: str = ""
    affine_only_norms: bool = False
    ema_entry: Optional[str] = None
    refusal: str = ""


def _has_prefix(*prefixes: str) -> Callable[[list[str]], bool]:
    return lambda keys: any(k.startswith(prefixes) for k in keys)


_TORCHVISION_NAMES = resnet_rules("", "")  # detectron2 backbone names <-> torchvision ResNet names


def torchvision_rename(name: str) -> tuple[Optional[str], str]:
    """detectron2's name for a torchvision ResNet key (``layer1.0.bn1.weight``), or None and why it is dropped."""
    if name.startswith("fc.") or name == "fc":
        return None, "classifier / projection fc"
    return rename(name, _TORCHVISION_NAMES, to_ours=False), "not a ResNet-50 backbone key"


# MSRA caffe2 blob names: layer part -> detectron2 module, parameter suffix -> parameter name
_C2_ANY = re.compile(r"(conv1_w|res_conv1_bn_[sb]|res\d+_\d+_branch\w+)\Z")
_C2_NORM = re.compile(r"(?P<layer>.+)_bn_(?P<p>s|b|rm|riv)\Z")
_C2_CONV = re.compile(r"(?P<layer>.+)_(?P<p>w|b)\Z")
_C2_PARAMS = {"w": "weight", "s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_C2_BLOCK = re.compile(r"res(?P<s>\d+)_(?P<b>\d+)_branch(?P<branch>1|2a|2b|2c)\Z")
_C2_BRANCH = {"1": "shortcut", "2a": "conv1", "2b": "conv2", "2c": "conv3"}


def c2_rename(name: str) -> tuple[Optional[str], str]:
    """detectron2's name for an MSRA caffe2 blob (as detectron2 renames them on load), or why it is dropped."""
    if name.endswith("_momentum"):
        return None, "SGD momentum blob"
    if name.startswith(("fc1000_", "pred_")):
        return None, "ImageNet classifier"
    m = _C2_NORM.match(name)
    norm = m is not None
    m = m or _C2_CONV.match(name)
    why = "not a ResNet-50 backbone blob"
    if m is None:
        return None, why
    layer, param = m.group("layer"), _C2_PARAMS[m.group("p")]
    if layer in ("conv1", "res_conv1"):
        module = "stem.conv1"
    else:
        block = _C2_BLOCK.match(layer)
        if block is None:
            return None, why
        module = f"res{block['s']}.{block['b']}.{_C2_BRANCH[block['branch']]}"
    return (f"{module}.norm.{param}" if norm else f"{module}.{param}"), why


def d2_backbone_rename(name: str) -> tuple[Optional[str], str]:
    """A detectron2 backbone key keeps its name; MoCo's converted projection MLP (``stem.fc.*``) is dropped."""
    if name.startswith("stem.fc."):
        return None, "classifier / projection fc (MoCo's converter keeps it as stem.fc)"
    return name, ""


_RGB_NOTE = ("torchvision-style ResNet (stride 2 in the 3x3 conv, RGB input normalised by ImageNet mean/std): "
             "use MODEL.RESNETS.STRIDE_IN_1X1 False and INPUT.FORMAT RGB (the *_infomin configs)")
_MSRA_NOTE = ("MSRA caffe2 ResNet (stride 2 in the 1x1 conv, BGR input minus mean, std 1): use "
              "MODEL.RESNETS.STRIDE_IN_1X1 True and INPUT.FORMAT BGR (the supervised configs); its norms are "
              "affine-only, so running_mean 0 / running_var 1 are filled in, which is what detectron2 itself "
              "uses for them")
_D2_NAME = re.compile(r"(module\.)?(stem\.|res\d\.|backbone\.|roi_heads\.|proposal_generator\.)")


def _rgb_resnet(name: str, description: str, detect: Callable[[list[str]], bool], prefixes: tuple[str, ...],
                outside: tuple[tuple[str, str], ...] = (), ema_entry: Optional[str] = None) -> CheckpointFormat:
    """A row for a torchvision-style RGB ResNet (torchvision names, stride in the 3x3 conv, ImageNet mean/std)."""
    return CheckpointFormat(name, description, detect, prefixes, torchvision_rename, outside, stride_in_1x1=False,
                            input_format="RGB", note=_RGB_NOTE, ema_entry=ema_entry)

#: Every format, in detection order (the first row whose ``detect`` accepts a file's keys is its format).
TABLE: tuple[CheckpointFormat, ...] = (
    CheckpointFormat(
        "pycontrast_cmc", "PyContrast CMC: {'model': {'module.encoder1.*', 'module.encoder2.*'}}",
        _has_prefix("module.encoder1.", "module.encoder2.", "encoder1.", "encoder2."),
        refusal="a CMC checkpoint (module.encoder1.* / module.encoder2.*): two half-width ResNets on the L and "
                "ab channels of Lab images, which cannot initialise an RGB ResNet-50; use another pretrain "
                "(InstDis, PIRL, MoCo, MoCov2, InfoMin)"),
    _rgb_resnet(
        "moco", "MoCo: {'state_dict': {'module.encoder_q.*', 'module.encoder_k.*', 'module.queue'}, ...}",
        _has_prefix("module.encoder_q."), prefixes=("module.encoder_q.",),
        outside=(("module.encoder_k.", "MoCo momentum (key) encoder"), ("module.queue", "MoCo negative queue"))),
    _rgb_resnet(
        "pycontrast", "PyContrast: {'model': {'module.encoder.*'}, ...}; with ema, {'model_ema': {'encoder.*'}}",
        _has_prefix("module.encoder.", "encoder."), prefixes=("module.encoder.", "encoder."),
        outside=(("module.head_jig.", "jigsaw projection head"), ("module.head.", "projection head"),
                 ("head.", "projection head"), ("encoder_k.", "momentum (key) encoder")),
        ema_entry="model_ema"),
    CheckpointFormat(
        "msra_c2", "MSRA caffe2 blobs as detectron2 ships them: conv1_w, res_conv1_bn_s, res2_0_branch2a_w, ...",
        lambda keys: any(_C2_ANY.match(k) for k in keys), rename=c2_rename, stride_in_1x1=True,
        input_format="BGR", note=_MSRA_NOTE, affine_only_norms=True),
    _rgb_resnet(
        "torchvision", "plain torchvision ResNet state dict: conv1, bn1, layer1..4, fc",
        lambda keys: "conv1.weight" in keys or "module.conv1.weight" in keys, prefixes=("",)),
    CheckpointFormat(
        "detectron2", "detectron2: {'model': {name: array}} (.pkl model zoo, .pth training checkpoints)",
        lambda keys: any(_D2_NAME.match(k) for k in keys), rename=d2_backbone_rename),
)
_BY_NAME = {f.name: f for f in TABLE}

#: The zoo manifest's names for the same layouts (None: the file type only, detect the layout).
ALIASES: dict[str, Optional[str]] = {"detectron2_pkl": "detectron2", "safetensors": None}
#: Formats that can be converted into a ResNet-50 backbone, with a line each (``convert --from``).
CONVERTIBLE: dict[str, str] = {f.name: f.description for f in TABLE if not f.refusal}


def canonical_name(name: str) -> Optional[str]:
    """A format name or manifest alias -> the table's name (None: detect it); KeyError when unknown."""
    if name in ALIASES:
        return ALIASES[name]
    if name not in _BY_NAME:
        raise KeyError(name)
    return name


def format_named(name: str) -> CheckpointFormat:
    """The row called ``name`` (a table name, not an alias)."""
    return _BY_NAME[name]


def detect_format(keys: Iterable[str]) -> Optional[CheckpointFormat]:
    """The first row whose rule accepts these key names, or None."""
    names = list(keys)
    return next((f for f in TABLE if f.detect(names)), None)


def weights_kind(keys: Iterable[str]) -> str:
    """What a file holds, from its weights' key names (the rule in the module docstring)."""
    names = [k[len("module."):] if k.startswith("module.") else k for k in keys]
    if any(k.startswith(_OUR_PREFIXES) for k in names):
        return DETECTOR_OURS
    if any(k.startswith(_D2_DETECTOR_PREFIXES) for k in names):
        return DETECTOR_D2
    return BACKBONE
