"""A model's Hugging Face Hub side, as huggingface_hub's ``ModelHubMixin`` gives other libraries: ``save_pretrained``
writes a folder that ``pcd.load(FOLDER)`` and ``pcd.load("hf://ORG/NAME")`` read back (``model.safetensors`` under
detectron2's key names with the classes in its header, the effective ``config.yaml``, ``classes.json``, a model
card, extra files such as the training log, and ``SHA256SUMS``); ``upload_folder`` sends such a folder to a
repository. The token is huggingface_hub's (HF_TOKEN or ``hf auth login``): never read, written or printed here."""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Sequence, Union

from .. import atomic
from ..checkpoints import classes_entry
from ..checkpoints.published import CHECKSUMS, CONFIG, WEIGHTS, format_checksums
from ..checkpoints.readers import SAFETENSORS_METADATA_KEY
from ..errors import PublishError
from ..store import hash_file

if TYPE_CHECKING:
    from .meta_arch import MaskRCNN

CARD = "README.md"
CLASSES = "classes.json"
LIBRARY = "pycontrast-det"
FORMAT_VERSION = "1"
#: evaluation task (the evaluator's key) -> (model-index task type, task name, metric name)
_TASKS = {"bbox": ("object-detection", "Object Detection", "box AP"),
          "segm": ("instance-segmentation", "Instance Segmentation", "mask AP")}


@dataclass(frozen=True)
class CardInfo:
    """What a model card says beyond the model itself: ``evaluation`` (task -> metric -> value, as the evaluator
    writes it: ``{"bbox": {"AP": 41.2, "AP-person": ...}}``) measured on ``dataset``; ``base_model`` (the Hub
    repository it was fine-tuned from) and ``origin`` (the zoo entry, pretrain or file, in words); ``files`` copied
    into the folder as they are (the training log and metrics)."""

    evaluation: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    dataset: Optional[str] = None
    base_model: Optional[str] = None
    origin: Optional[str] = None
    files: Sequence[Path] = ()
    repo_id: Optional[str] = None  # where it is pushed (the card's loading example); None: a folder


def dataset_label(name: str) -> str:
    """A dataset as a card names it: a registered name as it is, a folder by its own name (no local paths)."""
    return Path(name).name if ("/" in name or os.sep in name) else name


def _weights(model: "MaskRCNN", dest: Path) -> None:
    from ..checkpoints import model_to_d2
    from ..checkpoints.writers import write_safetensors

    state = model_to_d2({k: v.detach().cpu() for k, v in model.state_dict().items()}, model.arch)
    header = {"format_version": FORMAT_VERSION, "arch": model.arch, **classes_entry(model.classes)}
    write_safetensors(state, dest, {SAFETENSORS_METADATA_KEY: json.dumps(header, sort_keys=True)})


def _results(evaluation: Mapping[str, Mapping[str, float]], dataset: str) -> list:
    """model-index results: AP per task, then per class (``AP-<name>``), skipping values that are not numbers."""
    from huggingface_hub import EvalResult

    out = []
    for task, metrics in evaluation.items():
        if task not in _TASKS:
            continue
        task_type, task_name, metric = _TASKS[task]
        for key, value in metrics.items():
            if (key != "AP" and not key.startswith("AP-")) or value is None or not math.isfinite(float(value)):
                continue
            name = metric if key == "AP" else f"{metric} ({key[3:]})"
            out.append(EvalResult(task_type=task_type, task_name=task_name, dataset_type=dataset,
                                  dataset_name=dataset, metric_type="mAP", metric_name=name,
                                  metric_value=round(float(value), 3), verified=False))
    return out


def _ap_table(model: "MaskRCNN", evaluation: Mapping[str, Mapping[str, float]]) -> str:
    tasks = [t for t in _TASKS if t in evaluation]
    if not tasks:
        return "Not evaluated: `pycontrast-zoo evaluate` measures it on a dataset.\n"

    def cell(task: str, key: str) -> str:
        value = evaluation[task].get(key)
        return "-" if value is None or not math.isfinite(float(value)) else f"{float(value):.1f}"

    lines = ["| class | id | " + " | ".join(_TASKS[t][2] for t in tasks) + " |", "|---|---|" + "---|" * len(tasks),
             "| **all** | | " + " | ".join(cell(t, "AP") for t in tasks) + " |"]
    lines += [f"| {name} | {cid} | " + " | ".join(cell(t, f"AP-{name}") for t in tasks) + " |"
              for cid, name in zip(model.classes.ids, model.classes.names)]
    return "\n".join(lines) + "\n"


def _training(model: "MaskRCNN", origin: str) -> str:
    cfg = model.cfg
    solver, inp = cfg.SOLVER, cfg.INPUT
    steps = ", ".join(str(s) for s in solver.STEPS) or "none"
    train, test = (", ".join(dataset_label(d) for d in names) or "-"
                   for names in (cfg.DATASETS.TRAIN, cfg.DATASETS.TEST))
    return (f"- Data: {train} (evaluated on {test}).\n"
            f"- Schedule: {solver.MAX_ITER} iterations of {solver.IMS_PER_BATCH} images, base LR {solver.BASE_LR}, "
            f"LR steps at {steps}, warmup {solver.WARMUP_ITERS} iterations.\n"
            f"- Input: shorter side {min(inp.MIN_SIZE_TRAIN)}..{max(inp.MIN_SIZE_TRAIN)} px in training, "
            f"{inp.MIN_SIZE_TEST} px in testing (at most {inp.MAX_SIZE_TEST}).\n"
            f"- Initial weights: {origin}.\n")


def model_card(model: "MaskRCNN", info: CardInfo, files: Sequence[str]) -> str:
    """The README.md of a saved model: front matter built with huggingface_hub's ModelCardData (``base_model``,
    ``model-index`` with the AP measured on the user's dataset, per class too), then what it is, its results,
    its schedule, how to load it and its files."""
    from huggingface_hub import ModelCard, ModelCardData

    name = (info.repo_id or "model").rsplit("/", 1)[-1]
    dataset = dataset_label(info.dataset or (model.cfg.DATASETS.TEST[0] if model.cfg.DATASETS.TEST else "custom"))
    results = _results(info.evaluation, dataset)
    data = ModelCardData(model_name=name, library_name=LIBRARY, base_model=info.base_model,
                         pipeline_tag="object-detection", eval_results=results or None,
                         tags=["object-detection", "instance-segmentation", "mask-rcnn", "pycontrast-det"])
    origin = f", fine-tuned from {info.origin}" if info.origin else ""
    spec = f"hf://{info.repo_id}" if info.repo_id else "/path/to/this/folder"
    body = (f"\n# {name}\n\nMask R-CNN R50-{model.arch.upper()}{origin}, detecting {len(model.classes.names)} "
            f"classes of {dataset}.\n\n## Results on {dataset}\n\nCOCO-style AP (IoU 0.50:0.95) measured after "
            f"training.\n\n" + _ap_table(model, info.evaluation) + "\n## Training\n\n" +
            _training(model, info.origin or "not recorded") +
            "\n## How to load it\n\n```python\nimport pycontrast_det as pcd   # pip install pycontrast-det\n"
            f"model = pcd.load(\"{spec}\")\nout = model.predict(\"image.jpg\")   # boxes, scores, labels, "
            "label_names, masks\n```\n\nor `pycontrast-zoo predict " + spec + " photos/`.\n\n## Files\n\n" +
            "".join(f"- `{f}`\n" for f in files))
    return str(ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n" + body).content)


def save_pretrained(model: "MaskRCNN", folder: Union[str, os.PathLike], info: Optional[CardInfo] = None) -> Path:
    """Write ``model`` as a folder ``pcd.load`` reads (see the module docstring); returns the folder. Files already
    there with these names are replaced; others are left alone."""
    info = info or CardInfo()
    out = Path(folder)
    atomic.make_dirs(out)
    _weights(model, out / WEIGHTS)
    atomic.write_text(out / CONFIG, model.cfg.dump())
    atomic.write_text(out / CLASSES, json.dumps(classes_entry(model.classes)["classes"], indent=1) + "\n")
    names = [WEIGHTS, CONFIG, CLASSES]
    for src in info.files:
        if src.name in names or src.name in (CARD, CHECKSUMS):
            raise PublishError(f"{src}: a file named {src.name} is already part of the saved model")
        with atomic.atomic_path(out / src.name) as tmp:
            shutil.copyfile(src, tmp)
        names.append(src.name)
    atomic.write_text(out / CARD, model_card(model, info, names + [CHECKSUMS]))
    names.append(CARD)
    atomic.write_text(out / CHECKSUMS, format_checksums((n, hash_file(out / n)[0]) for n in names))
    return out


def hub_api():  # -> huggingface_hub.HfApi
    """huggingface_hub's client on HF_ENDPOINT (its token from the usual places)."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or None)


def hub_failure(repo_id: str, exc: BaseException) -> PublishError:
    """A failed Hub call as one line naming the repository and what to check (never the token)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return PublishError(f"hf://{repo_id}: upload failed ({type(exc).__name__}: {text}); check HF_TOKEN or "
                        f"`hf auth login`, and write access to the repository")


def upload_folder(folder: Path, repo_id: str, *, private: bool = False, create_pr: bool = False,
                  revision: Optional[str] = None, message: str = "pycontrast-zoo push") -> str:
    """Create ``repo_id`` if needed (``private`` only applies to a new one), create branch ``revision`` if needed,
    then upload ``folder`` as one commit (or a pull request); returns the commit's URL (the PR's with
    ``create_pr``). PublishError when the Hub refuses."""
    api = hub_api()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision is not None and not create_pr:
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                 commit_message=message, revision=revision, create_pr=create_pr)
    except Exception as exc:  # huggingface_hub raises many kinds (HTTP, auth, validation): all end the upload
        raise hub_failure(repo_id, exc) from None
    return str(info.pr_url or info.commit_url)


def push_to_hub(model: "MaskRCNN", repo_id: str, *, info: Optional[CardInfo] = None, private: bool = False,
                create_pr: bool = False, revision: Optional[str] = None,
                message: str = "pycontrast-zoo push") -> str:
    """:func:`save_pretrained` into a temporary folder, then :func:`upload_folder`; returns the commit's URL."""
    import dataclasses
    import tempfile

    info = dataclasses.replace(info or CardInfo(), repo_id=repo_id)
    with tempfile.TemporaryDirectory(prefix="pycontrast-push-") as tmp:
        save_pretrained(model, tmp, info)
        return upload_folder(Path(tmp), repo_id, private=private, create_pr=create_pr, revision=revision,
                             message=message)
