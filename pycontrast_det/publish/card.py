"""Model cards (``README.md``) in the Hugging Face Hub's format: YAML front matter (library, license, tags,
dataset, pipeline, a ``model-index`` with the published COCO val2017 AP), then the entry's row, how it was trained,
how to load it, its files with sha256 and size, and the paper to cite. Deterministic: no dates. No torch here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import yaml

if TYPE_CHECKING:
    from ..config import CfgNode
    from ..zoo import DetectorEntry, PretrainEntry
    from .target import Target

LIBRARY = "pycontrast-det"
#: PyContrast's LICENSE (HobbitLong/PyContrast, pycontrast/LICENSE): BSD 2-Clause, Copyright (c) 2020 Yonglong Tian.
LICENSE = "bsd-2-clause"
SOURCE = {"name": "PyContrast detection transfer (pycontrast/detection/README.md)",
          "url": "https://github.com/HobbitLong/PyContrast"}
PAPER = "https://arxiv.org/abs/2005.10243"
#: As PyContrast's README asks to cite it.
CITATION = """@inproceedings{tian2020makes,
  title={What makes for good views for contrastive learning},
  author={Tian, Yonglong and Sun, Chen and Poole, Ben and Krishnan, Dilip and Schmid, Cordelia and Isola, Phillip},
  booktitle={NeurIPS},
  year={2020}
}"""
DEFAULT_GITHUB = "<owner>/pycontrast-det"


@dataclass(frozen=True)
class Row:
    """What a card shows of one detector entry (also built from a manifest record of an earlier publish)."""

    name: str
    detector: str
    schedule: str
    method: str
    box_ap: float
    mask_ap: float
    config: str
    published: bool

    @classmethod
    def of(cls, entry: "DetectorEntry", pretrain: "PretrainEntry") -> "Row":
        return cls(entry.name, entry.detector, entry.schedule, pretrain.method, entry.box_ap, entry.mask_ap,
                   entry.config, entry.published)


@dataclass(frozen=True)
class CardFile:
    """One file of a published folder as its card lists it."""

    name: str
    size_bytes: int
    sha256: str
    what: str


def _front_matter(data: Mapping[str, Any]) -> str:
    return "---\n" + yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=False, width=1000) + "---\n"


def _results(entry: Row) -> list[dict]:
    """The model-index results of an entry: box AP (object detection) and mask AP (instance segmentation)."""
    dataset = {"type": "coco", "name": "COCO val2017", "split": "validation"}
    out = []
    for task, name, metric, value in (("object-detection", "Object Detection", "box AP", entry.box_ap),
                                      ("instance-segmentation", "Instance Segmentation", "mask AP", entry.mask_ap)):
        out.append({"task": {"type": task, "name": name}, "dataset": dict(dataset),
                    "metrics": [{"type": "mAP", "name": metric, "value": value, "verified": False}],
                    "source": dict(SOURCE)})
    return out


def _method_tag(method: str) -> str:
    return method.lower().replace(" ", "-")


def _front(rows: Sequence[Row]) -> str:
    tags = ["object-detection", "instance-segmentation", "mask-rcnn", "detectron2", "pycontrast", "coco"]
    return _front_matter({
        "library_name": LIBRARY, "license": LICENSE, "pipeline_tag": "object-detection", "datasets": ["coco"],
        "tags": tags + sorted({_method_tag(r.method) for r in rows} - set(tags)),
        "model-index": [{"name": r.name, "results": _results(r)} for r in rows],
    })


def _row_table(rows: Sequence[Row], link: bool = False) -> str:
    lines = ["| entry | detector | schedule | pretrain | box AP | mask AP | config | weights |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = f"[`{r.name}`]({r.name}/README.md)" if link else f"`{r.name}`"
        weights = "published" if r.published else "not published (config only)"
        lines.append(f"| {name} | R50-{r.detector.upper()} | {r.schedule} | {r.method} | {r.box_ap:.1f} | "
                     f"{r.mask_ap:.1f} | `{r.config}` | {weights} |")
    return "\n".join(lines) + "\n"


def _files_table(files: Sequence[CardFile]) -> str:
    lines = ["| file | bytes | sha256 | what |", "|---|---|---|---|"]
    lines += [f"| `{f.name}` | {f.size_bytes} | `{f.sha256}` | {f.what} |" for f in files]
    return "\n".join(lines) + "\n"


def _pretrain_phrase(pretrain: "PretrainEntry") -> str:
    if pretrain.file is None:
        return f"{pretrain.method} (no pre-training: every weight starts from detectron2's random initialisation)"
    epochs = f", {pretrain.epochs} epochs" if pretrain.epochs else ""
    top1 = f", ImageNet linear top-1 {pretrain.imagenet_top1:.1f}%" if pretrain.imagenet_top1 is not None else ""
    return f"{pretrain.method} ResNet-50 (`{pretrain.name}`{epochs}{top1}; file `{pretrain.file.filename}`)"


def _training(entry: "DetectorEntry", pretrain: "PretrainEntry", cfg: "CfgNode") -> str:
    solver, inp = cfg.SOLVER, cfg.INPUT
    return (f"- Initialisation: {_pretrain_phrase(pretrain)}.\n"
            f"- Fine-tuning: {', '.join(cfg.DATASETS.TRAIN)}, schedule {entry.schedule} = {solver.MAX_ITER} "
            f"iterations (LR steps at {', '.join(str(s) for s in solver.STEPS)}), {solver.IMS_PER_BATCH} images "
            f"per step, base LR {solver.BASE_LR}, {cfg.MODEL.RESNETS.NORM} in the backbone, {inp.FORMAT} input, "
            f"shorter side {min(inp.MIN_SIZE_TRAIN)}..{max(inp.MIN_SIZE_TRAIN)} px.\n"
            f"- Config: `{entry.config}` (PyContrast's)"
            + (f" with the config fixes `{' '.join(entry.config_overrides)}`" if entry.config_fixes else "") +
            "; `config.yaml` here is the full effective config.\n"
            f"- Evaluation: {', '.join(cfg.DATASETS.TEST)}; the AP above is the published number, not measured here "
            f"(`pycontrast-zoo evaluate {entry.name}` measures it).\n")


def _loading(entry: "DetectorEntry", spec: Optional[str], github: str) -> str:
    folder = spec or "/path/to/this/folder"
    if not entry.published:
        return ("No detector weights were published for this row. `pcd.load(\"" + entry.name + "\")` builds the "
                "model on the converted pre-trained backbone (its RPN and ROI heads untrained, with a warning); "
                f"`pycontrast-zoo reproduce {entry.name}` trains it as the config says.\n\n"
                "```python\nimport pycontrast_det as pcd\n"
                f"model = pcd.load(\"{folder}\", pretrained=False)   # this folder's config.yaml, random init\n"
                f"model = pcd.load(\"{entry.name}\")                 # the zoo entry: pre-trained backbone\n```\n")
    c4 = (" C4 rows need MoCo's `Res5ROIHeadsExtraNorm` ROI head, which stock detectron2 lacks."
          if entry.detector == "c4" else "")
    return ("```python\nimport pycontrast_det as pcd                      # pip install pycontrast-det\n"
            f"model = pcd.load(\"{folder}\")   # config.yaml + model.safetensors, checked against SHA256SUMS\n"
            f"model = pcd.load(\"{entry.name}\")   # the same detector through the zoo manifest\n"
            "out = model.predict(\"image.jpg\")   # boxes, scores, labels, label_names, masks\n```\n\n"
            "torch.hub:\n\n```python\nimport torch\n"
            f"model = torch.hub.load(\"{github}\", \"{entry.name}\", pretrained=True)\n```\n\n"
            "detectron2: `model.safetensors` holds the weights only, under detectron2's key names, so a detectron2 "
            f"model built from PyContrast's `{entry.config}` takes them as they are.{c4}\n\n"
            "```python\nfrom safetensors.torch import load_file\n"
            "model.load_state_dict(load_file(\"model.safetensors\"))   # model: detectron2's build_model(cfg)\n```\n")


def entry_card(entry: "DetectorEntry", pretrain: "PretrainEntry", cfg: "CfgNode", files: Sequence[CardFile],
               target: "Target", github: str = DEFAULT_GITHUB) -> str:
    """The model card of one detector entry's folder."""
    where = ("PyContrast published the numbers and the config only" if not entry.published else
             "PyContrast published this detector and its training log on Dropbox; these are the same weights")
    note = f"\n> {entry.note}\n" if entry.note else ""
    note += "".join(f"\n> **Known issue:** {issue.text} ({issue.url})\n" for issue in entry.known_issues)
    return (_front([Row.of(entry, pretrain)]) +
            f"\n# {entry.name}\n\nMask R-CNN R50-{entry.detector.upper()}, {entry.schedule} schedule, fine-tuned on "
            f"COCO from {_pretrain_phrase(pretrain)}. {where}, from the PyContrast detection-transfer table "
            f"({SOURCE['url']}).\n{note}\n" + _row_table([Row.of(entry, pretrain)]) +
            "\nCOCO val2017 AP as published (box / mask).\n\n## How it was trained\n\n" +
            _training(entry, pretrain, cfg) + "\n## How to load it\n\n" +
            _loading(entry, target.folder_spec(entry.name), github) +
            "\n## Files\n\n" + _files_table(files) +
            "\n`SHA256SUMS` lists the same checksums (`sha256sum -c SHA256SUMS` checks a copy of this folder).\n" +
            _citation())


def pretrain_card(pretrain: "PretrainEntry", fmt: str, used_by: Sequence[str], files: Sequence[CardFile]) -> str:
    """The card of a pre-trained ResNet-50 folder (the file as PyContrast or MoCo released it, format ``fmt``)."""
    front = _front_matter({"library_name": LIBRARY, "license": LICENSE, "datasets": ["imagenet-1k"],
                           "tags": ["pycontrast", "resnet-50", _method_tag(pretrain.method)]})
    return (front + f"\n# {pretrain.name}\n\n{_pretrain_phrase(pretrain)}, as released (checkpoint format "
            f"`{fmt}`; pycontrast-det reads it without running code).\n\n"
            f"Detector entries fine-tuned from it: {', '.join(f'`{n}`' for n in used_by) or 'none'}.\n\n"
            "## Files\n\n" + _files_table(files) + _citation())


def index_card(rows: Sequence[Row]) -> str:
    """The card of the repository root (one folder per entry): every entry's row, linked to its folder."""
    return (_front(rows) +
            "\n# PyContrast detection-transfer zoo\n\nMask R-CNN detectors fine-tuned on COCO from ResNet-50s "
            f"pre-trained by InstDis, PIRL, MoCo, InfoMin, supervised ImageNet or random init ({SOURCE['url']}), "
            "one folder per entry (its model card, `config.yaml`, `model.safetensors`, training log, "
            "`SHA256SUMS`). `zoo.yaml` is the pycontrast-det manifest of this tree.\n\n" +
            _row_table(rows, link=True) + _citation())


def _citation() -> str:
    return f"\n## Citation\n\nPyContrast ({PAPER}):\n\n```bibtex\n{CITATION}\n```\n"
