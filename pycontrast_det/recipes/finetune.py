"""Fine-tune a zoo detector, a checkpoint or a pretrain on your own COCO-format dataset.

:func:`plan_finetune` decides everything first (printed by ``pycontrast-zoo finetune``), :func:`finetune` runs
it with the native trainer. What fine-tuning changes on top of the source's config:

- MODEL.ROI_HEADS.NUM_CLASSES becomes the number of the dataset's categories (an explicit other value is an
  error), and the dataset's names and ids are stored with every checkpoint;
- MODEL.WEIGHTS is the source: the loading path re-initialises the class-dependent layers (box classifier and
  regressor, mask predictor) when their shapes differ, with a warning, and loads every other weight;
- DATASETS.TRAIN / DATASETS.TEST are the dataset(s) and the validation set (:mod:`.finetune_data`: ``--val``, the
  dataset's val split, or a held-out fraction of its images); a box-only dataset makes the run a Faster R-CNN
  (MODEL.MASK_ON False), one with RLE masks uses INPUT.MASK_FORMAT bitmask;
- the schedule (:func:`finetune_schedule`), printed in the plan; any ``SOLVER.*`` override given wins.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

from ..config import override_value
from ..engine.run_options import RunOptions
from ..errors import ConfigError
from . import commands
from .finetune_data import DataChoice, absolute_name, choose_data, class_overrides

if TYPE_CHECKING:
    from ..coco_classes import CategoryMap
    from ..config import CfgNode
    from ..engine.train import TrainResult

DEFAULT_OUTPUT_ROOT = Path("output")
#: Named schedules in epochs of the training images. detectron2's 1x is 90k iterations of 16 images, about
#: 12 epochs of COCO train2017; ``short`` is a third of it, plenty to adapt a detector's heads to new classes.
SCHEDULES: dict[str, float] = {"1x": 12.0, "short": 4.0}
DEFAULT_SCHEDULE = "short"
IMAGES_PER_PROCESS = 2  # the recipe's 2 images per GPU
_STEPS = (2 / 3, 8 / 9)  # where 1x lowers the lr (60k and 80k of 90k iterations)
_WARMUP_FRACTION, _MAX_WARMUP = 0.1, 1000  # detectron2 warms up for 1000 iterations; a short run for a tenth


@dataclass(frozen=True)
class Schedule:
    """A fine-tuning schedule: iterations, batch, lr, warmup and lr steps, and how each was chosen."""

    name: str
    images: int
    ims_per_batch: int
    max_iter: int
    base_lr: float
    warmup_iters: int
    steps: tuple[int, ...]
    reasons: tuple[str, ...]

    def overrides(self) -> list[str]:
        """The SOLVER KEY VALUE pairs."""
        return ["SOLVER.IMS_PER_BATCH", str(self.ims_per_batch), "SOLVER.BASE_LR", f"{self.base_lr:g}",
                "SOLVER.MAX_ITER", str(self.max_iter), "SOLVER.WARMUP_ITERS", str(self.warmup_iters),
                "SOLVER.STEPS", str(self.steps)]

    def describe(self) -> str:
        return (f"{self.max_iter} iterations of {self.ims_per_batch} images, BASE_LR {self.base_lr:g}, warmup "
                f"{self.warmup_iters}, lr x0.1 at {', '.join(map(str, self.steps)) or 'no step'} ("
                + "; ".join(self.reasons) + ")")


def finetune_schedule(schedule: Union[str, int], images: int, cfg: "CfgNode", processes: int = 1,
                      overrides: Sequence[str] = (), batch: Optional[int] = None) -> Schedule:
    """The schedule for ``images`` training images: ``1x`` / ``short`` (epochs, :data:`SCHEDULES`) or a number of
    iterations; the batch is ``batch`` images (``--scale-to-batch``), else 2 per process, and the lr the config's
    scaled linearly to it; SOLVER values in ``overrides`` are kept and the rest derived from them."""
    given = {key: override_value(overrides, f"SOLVER.{key}") for key in
             ("IMS_PER_BATCH", "BASE_LR", "MAX_ITER", "WARMUP_ITERS", "STEPS")}
    if batch is not None and given["IMS_PER_BATCH"] is not None:
        raise ConfigError(f"--scale-to-batch {batch} and SOLVER.IMS_PER_BATCH {given['IMS_PER_BATCH']} both set the "
                          "batch; give one of them")
    if batch is not None and int(batch) < 1:
        raise ConfigError(f"--scale-to-batch must be >= 1, got {batch}")
    if given["IMS_PER_BATCH"]:
        batch, why = int(given["IMS_PER_BATCH"]), "SOLVER.IMS_PER_BATCH given"
    elif batch is not None:
        batch, why = int(batch), "--scale-to-batch"
    else:
        batch, why = IMAGES_PER_PROCESS * processes, f"{IMAGES_PER_PROCESS} per process"
    reasons = [f"{batch} images: {why}"]
    name = str(schedule)
    if given["MAX_ITER"]:
        max_iter = int(given["MAX_ITER"])
        reasons.append("SOLVER.MAX_ITER given")
    elif name in SCHEDULES:
        max_iter = max(1, math.ceil(SCHEDULES[name] * images / batch))
        reasons.append(f"{name}: {SCHEDULES[name]:g} epochs of {images} images")
    elif name.isdigit() and int(name) > 0:
        max_iter = int(name)
        reasons.append(f"{max_iter} iterations asked for")
    else:
        raise ConfigError(f"--schedule {schedule!r}: use {', '.join(SCHEDULES)} or a number of iterations")
    recipe_lr, recipe_batch = float(cfg.SOLVER.BASE_LR), int(cfg.SOLVER.IMS_PER_BATCH)
    base_lr = float(given["BASE_LR"]) if given["BASE_LR"] else recipe_lr * batch / recipe_batch
    reasons.append("SOLVER.BASE_LR given" if given["BASE_LR"] else
                   f"lr: the config's {recipe_lr:g} for {recipe_batch} images, scaled linearly")
    warmup = (int(given["WARMUP_ITERS"]) if given["WARMUP_ITERS"]
              else min(_MAX_WARMUP, int(max_iter * _WARMUP_FRACTION)))
    steps = (tuple(int(s) for s in _literal(given["STEPS"])) if given["STEPS"] else
             tuple(sorted({int(max_iter * f) for f in _STEPS if 0 < int(max_iter * f) < max_iter})))
    return Schedule(name if not given["MAX_ITER"] else "given", images, batch, max_iter, base_lr, warmup, steps,
                    tuple(reasons))


def _literal(text: str) -> Any:
    import ast

    value = ast.literal_eval(text)
    return value if isinstance(value, (list, tuple)) else (value,)


def dataset_classes(dataset: Union[str, os.PathLike], overrides: Sequence[str] = ()) -> tuple[Any, list[str], str]:
    """(train split, the NUM_CLASSES override it implies, the sentence for the log); ConfigError when
    ``overrides`` set another number of classes."""
    from ..data import resolve_dataset

    spec = resolve_dataset(dataset, split="train")
    return (spec, *class_overrides(spec, overrides))


@dataclass(frozen=True)
class FinetunePlan:
    """Everything a fine-tuning run will do, decided before anything is trained."""

    source: str                     # the entry, checkpoint or pretrain as given
    config: Union[Path, Mapping]    # the config file, or a config stored in the checkpoint
    config_origin: str
    dataset: str
    data: DataChoice
    categories: "CategoryMap"
    schedule: Schedule
    overrides: tuple[str, ...]      # everything on top of ``config``, the user's last
    options: RunOptions             # where and how it runs (its output_dir absolute, never None)
    notes: tuple[str, ...] = ()

    @property
    def output_dir(self) -> Path:
        assert self.options.output_dir is not None
        return self.options.output_dir

    def cfg(self) -> "CfgNode":
        """The effective config, frozen."""
        from ..config import load_config

        return load_config(self.config, list(self.overrides))

    def command(self) -> Optional[str]:
        """The equivalent ``pycontrast-zoo train`` command (None when the config lives in a checkpoint)."""
        if not isinstance(self.config, Path):
            return None
        return commands.join([*self.options.replace(scale_to_batch=None).train_words(self.config), *self.overrides])

    def render(self) -> str:
        """The plan as ``pycontrast-zoo finetune`` prints it."""
        names = ", ".join(self.categories.names)
        lines = [f"fine-tune {self.source} on {self.dataset} ({len(self.categories)} classes: {names})",
                 f"  config:   {self.config_origin}",
                 f"  weights:  {self.source} (class-dependent layers re-initialised when their shapes differ)",
                 f"  schedule: {self.schedule.describe()}",
                 f"  output:   {self.output_dir}",
                 f"  device:   {self.options.describe()}",
                 f"  overrides: {commands.join(self.overrides)}"]
        lines += [f"  note: {note}" for note in self.notes]
        lines += ["dataset:", *(f"  {line}" for line in self.data.lines())]
        command = self.command()
        if command is not None:
            lines += ["command:", f"  {command}"]
        return "\n".join(lines)


def _source_config(source: str, config: Optional[Union[str, os.PathLike]]
                   ) -> tuple[Union[Path, Mapping], str, tuple[str, ...]]:
    """The config to fine-tune ``source`` with, where it comes from and the KEY VALUE fixes that come with it:
    ``config``, else the one that comes with the source (a zoo entry's with its config_fixes, a published folder's,
    the one stored with a checkpoint; see ``modeling.resolve_source``)."""
    from ..checkpoints.names import Kind, parse_name
    from ..config import resolve_config_path
    from ..modeling import resolve_source

    if config is not None:
        path = resolve_config_path(os.fspath(config))
        return path, str(path), ()
    kind = parse_name(source).kind  # what the string names, decided in one place
    if kind in (Kind.URL, Kind.DETECTRON2, Kind.PRETRAIN):
        raise ConfigError(f"{source}: a {kind.value}, so no config comes with it; give one with --config")
    resolved = resolve_source(source)
    if resolved.weights is None:
        raise ConfigError(f"{source} is a config, not weights: give it as --config and the weights as SOURCE")
    if resolved.config is None:
        raise ConfigError(f"{source}: no config is stored with these weights (nor a config.yaml beside them); "
                          "give one with --config")
    return resolved.config, resolved.origin, resolved.fixes


def plan_finetune(source: Union[str, os.PathLike],
                  dataset: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
                  options: Optional[RunOptions] = None, *, val: Optional[Union[str, os.PathLike]] = None,
                  holdout: Optional[float] = None, schedule: Union[str, int, None] = None,
                  config: Optional[Union[str, os.PathLike]] = None, overrides: Sequence[str] = ()) -> FinetunePlan:
    """Decide a fine-tuning run; reads the manifest, the dataset's annotations and the source's config only.

    Args:
        source: a zoo entry (its published detector, or for a row without one its pretrain), a checkpoint file
            (detectron2's or ours; its config is the stored one or the config.yaml beside it) or any other
            weights spec (a pretrain, a URL: then give ``config``).
        dataset: a dataset (a folder in a layout of ``data.layouts``, ``annotations.json[:images]``, or a built-in
            name), or several trained on as one (one class list, same names merged).
        val: the validation dataset; default the first dataset's val split, else ``holdout`` (default 0.1) of its
            train images, chosen by SEED.
        schedule: ``short`` (default), ``1x``, or a number of iterations.
        config: a config instead of the source's.
        overrides: ``KEY VALUE`` pairs applied last (SOLVER values replace the schedule's).
        options: where and how, as for ``train`` (output default ``output/finetune_<source>_<dataset>``); its
            ``scale_to_batch`` is the batch (default 2 images per process), the lr scaled linearly to it.
    """
    options = options or RunOptions()
    if len(overrides) % 2:
        raise ConfigError(f"overrides must be KEY VALUE pairs; got an odd number: {list(overrides)}")
    source, user = os.fspath(source), [str(o) for o in overrides]
    if Path(source).exists():  # a checkpoint, a published folder on disk
        source = str(Path(source).resolve())  # the printed command works from any folder
    config_path, origin, fixes = _source_config(source, config)
    from ..config import load_config

    base = load_config(config_path, [*fixes, *user])
    datasets = [dataset] if isinstance(dataset, (str, os.PathLike)) else list(dataset)
    data = choose_data(datasets, base, user, val=val, holdout=holdout)
    sched = finetune_schedule(schedule or DEFAULT_SCHEDULE, data.images, base, options.world_size, user,
                              batch=options.scale_to_batch)
    name = " + ".join(absolute_name(d) for d in datasets)
    out = options.output(DEFAULT_OUTPUT_ROOT / f"finetune_{Path(source).stem}_{Path(absolute_name(datasets[0])).name}")
    ours = [*fixes, *data.overrides, "MODEL.WEIGHTS", source, "DATASETS.TRAIN", repr(data.train_names),
            "DATASETS.TEST", repr((data.test_name,)), *sched.overrides(), "OUTPUT_DIR", str(out)]
    plan = FinetunePlan(source=source, config=config_path, config_origin=origin, dataset=name, data=data,
                        categories=data.train.categories, schedule=sched, overrides=tuple(ours + user),
                        options=options.replace(output_dir=out), notes=data.notes)
    plan.cfg()  # a bad override fails now, before anything is trained
    return plan


def _worker(plan: FinetunePlan, log_period: int, evaluate_at_end: bool) -> "TrainResult":
    """One training process of a fine-tuning run (module level: spawned processes import it)."""
    from ..engine.train import train
    from ..reports.curves_hook import CurvesHook

    return train(plan.cfg(), plan.options,
                 notes=(f"fine-tuning {plan.source}: {plan.schedule.describe()}", *plan.data.lines()),
                 log_period=log_period, evaluate_at_end=evaluate_at_end, hooks=[CurvesHook()])


def finetune(plan: FinetunePlan, *, log_period: int = 20, evaluate_at_end: bool = True,
             stream: Optional[IO[str]] = None) -> Optional["TrainResult"]:
    """Print ``plan`` to ``stream`` (default stdout; global rank 0 only) and train it; rank 0's result (None in
    the other processes)."""
    if plan.options.starts_rank_0():
        print(plan.render(), file=stream or sys.stdout, flush=True)
    return plan.options.launch(_worker, plan, log_period, evaluate_at_end)


__all__ = ["FinetunePlan", "SCHEDULES", "Schedule", "dataset_classes", "finetune", "finetune_schedule",
           "plan_finetune"]
