"""Reproduce a row of the table: plan -> fetch and convert the pretrain -> effective config -> train ->
evaluate -> measured AP beside the published one.

``--dry-run`` prints the plan and the exact commands (ours and detectron2's ``tools/train_net.py``) and
touches neither the network nor the disk; a real run prints a short header and writes the full plan (every
override, both commands) to ``OUTPUT/plan.txt``. On COCO the entry's config is followed exactly. On the
built-in ``shapes`` dataset the *shapes protocol* (:data:`SHAPES_PROTOCOL`) shrinks inputs, RoI samples and
the schedule so that the whole pipeline runs on two CPU cores in about five minutes (quiet machine); its AP is a
check that the pipeline learns, not a number comparable to COCO's. ``seeds=N`` runs the protocol N times (SEED, SEED+1,
...) and prints each AP's mean and standard deviation, to tell noise from a real difference.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

from .. import atomic
from ..engine.output import claim_output_dir, removed_if_nothing_recorded
from ..engine.run_options import RunOptions
from ..errors import ConfigError, ZooError
from ..utils import comm
from ..utils.events import strict_json
from . import commands

if TYPE_CHECKING:
    from ..checkpoints import ConversionReport
    from ..config import CfgNode
    from ..engine.output import Claim
    from ..engine.train import TrainResult
    from ..evaluation import EvalResult
    from ..zoo import DetectorEntry, Zoo

ENGINES = ("native", "detectron2")
DEFAULT_OUTPUT_ROOT = Path("output")
COCO_RECIPE_GPUS = 8  # every published row: 8 GPUs x 2 images

# The shapes protocol: KEY VALUE overrides on the entry's config, with the reason for each. Everything not
# listed (architecture, norms, FREEZE_AT, init, optimizer, warmup shape, PreciseBN) stays as the entry has it:
# PreciseBN's 200 batches included (forward only, about a minute here), since with 20 the same trained weights
# scored anywhere between 47 and 59 mask AP, depending on which 40 images the statistics came from.
SHAPES_ITERS = 240
_SHAPES_WARMUP = 50  # iterations of warmup in SHAPES_ITERS; a shorter run (--max-iter) scales it
SHAPES_PROTOCOL: tuple[tuple[str, str, str], ...] = (
    ("INPUT.MIN_SIZE_TRAIN", "(96,)", "images are 128-160 px; 96 keeps every shape >= 24 px and is fast"),
    ("INPUT.MAX_SIZE_TRAIN", "200", "never binding at this size"),
    ("INPUT.MIN_SIZE_TEST", "96", "evaluate at the training scale"),
    ("INPUT.MAX_SIZE_TEST", "200", "never binding at this size"),
    ("SOLVER.IMS_PER_BATCH", "2", "two images per step on two CPU cores"),
    ("SOLVER.BASE_LR", "0.01", "a short schedule needs a high lr; warmup keeps it stable"),
    ("SOLVER.WARMUP_ITERS", "50", "the 1000-iteration warmup scaled to the short schedule"),
    ("SOLVER.CHECKPOINT_PERIOD", "100", "a resumable checkpoint every 100 iterations"),
    ("MODEL.RPN.BATCH_SIZE_PER_IMAGE", "64", "1-3 objects per image need few anchors"),
    ("MODEL.RPN.PRE_NMS_TOPK_TRAIN", "300", "few objects, small feature maps"),
    ("MODEL.RPN.POST_NMS_TOPK_TRAIN", "100", "few objects per image"),
    ("MODEL.RPN.PRE_NMS_TOPK_TEST", "300", "as in training"),
    ("MODEL.RPN.POST_NMS_TOPK_TEST", "100", "as in training"),
    ("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "the 4conv box head and mask head dominate CPU time"),
    ("DATALOADER.NUM_WORKERS", "0", "decoding 96 px PNGs is cheaper than worker processes"),
    ("SEED", "1", "a fixed seed: initial weights, data order, augmentation and RoI sampling all derive from it, "
                  "so the same command on the same machine gives bit-identical weights and the same AP; "
                  "--seeds N measures the spread between seeds"),
)


@dataclass(frozen=True)
class TableRow:
    """A published row beside which a measured result is shown."""

    name: str
    pretrain: str
    box_ap: float
    mask_ap: float


@dataclass(frozen=True)
class ReproducePlan:
    """Everything a reproduction will do, decided before anything is fetched or trained."""

    entry: str
    detector: str
    schedule: str
    engine: str
    config_path: Path
    pretrain: str                    # zoo pretrain name, or "user" for --pretrain
    pretrain_source: Optional[str]   # what is fetched or read ("" for random init)
    weights: str                     # MODEL.WEIGHTS the training uses (a file in output_dir, or "")
    detectron2_weights: str          # MODEL.WEIGHTS for stock detectron2
    dataset: str                     # "coco" (the published protocol) or the dataset given
    protocol_overrides: tuple[str, ...]  # KEY VALUE pairs: the entry's config_fixes, the dataset protocol, --max-iter
    user_overrides: tuple[str, ...]      # the user's KEY VALUE pairs, applied last
    options: RunOptions                  # where and how it runs (its output_dir absolute, never None)
    published: Optional[TableRow] = None
    table_rows: tuple[TableRow, ...] = ()
    notes: tuple[str, ...] = ()
    command_notes: tuple[str, ...] = ()  # about running the detectron2 command (plan.txt and --dry-run only)
    user_pretrain: Optional[Path] = None

    @property
    def output_dir(self) -> Path:
        assert self.options.output_dir is not None
        return self.options.output_dir

    @property
    def weights_source(self) -> str:
        """What ``weights`` is converted from: the user's pretrain file, else the zoo pretrain's name."""
        return str(self.user_pretrain) if self.user_pretrain is not None else self.pretrain

    def config(self) -> "CfgNode":
        """The effective config: ``config_path`` with ``overrides`` (then ``scale_to_batch``) applied, frozen."""
        return self._scaled()[0]

    def scaling_note(self) -> Optional[str]:
        """What the linear-scaling rule changed, or None when it was not asked for."""
        return self._scaled()[1]

    def _scaled(self) -> tuple["CfgNode", Optional[str]]:
        from ..config import load_config
        from .scaling import scale_to_batch

        cfg = load_config(self.config_path, self.overrides(self.weights))
        batch = self.options.scale_to_batch
        return scale_to_batch(cfg, batch) if batch else (cfg, None)

    def overrides(self, weights: str) -> list[str]:
        """All KEY VALUE pairs on top of ``config_path``: protocol, MODEL.WEIGHTS, OUTPUT_DIR, then the user's."""
        return [*self.protocol_overrides, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(self.output_dir),
                *self.user_overrides]

    def _native_words(self) -> tuple[list[str], list[str]]:
        """(program and options, KEY VALUE overrides) of the ``pycontrast-zoo train`` command."""
        return self.options.train_words(self.config_path), self.overrides(self.weights)

    def _detectron2_words(self) -> tuple[list[str], list[str]]:
        """(program and options, KEY VALUE overrides) of the stock detectron2 command."""
        processes = self.options.processes_per_machine
        gpus = processes if self.dataset != "coco" or processes > 1 else COCO_RECIPE_GPUS
        overrides = self.overrides(self.detectron2_weights)
        overrides[overrides.index("OUTPUT_DIR") + 1] = str(self.output_dir / "detectron2")
        words = ["python", "tools/train_net.py", "--num-gpus", str(gpus), "--config-file", str(self.config_path)]
        if self.options.resume:
            words.append("--resume")
        if self.options.scale_to_batch:  # detectron2 has no such flag: spell the scaled values out
            solver = self.config().SOLVER
            overrides += ["SOLVER.IMS_PER_BATCH", str(solver.IMS_PER_BATCH), "SOLVER.BASE_LR", f"{solver.BASE_LR:g}",
                          "SOLVER.MAX_ITER", str(solver.MAX_ITER), "SOLVER.STEPS", str(tuple(solver.STEPS)),
                          "SOLVER.WARMUP_ITERS", str(solver.WARMUP_ITERS),
                          "SOLVER.CHECKPOINT_PERIOD", str(solver.CHECKPOINT_PERIOD)]
        return words, overrides

    def native_command(self) -> str:
        """The equivalent ``pycontrast-zoo train`` command, on one line."""
        return commands.join(sum(self._native_words(), []))

    def detectron2_command(self) -> str:
        """The equivalent stock detectron2 command (8 GPUs for the COCO recipe), on one line."""
        return commands.join(sum(self._detectron2_words(), []))

    def header(self) -> str:
        """The short plan a run prints before it starts (no line longer than about 110 characters)."""
        from ..engine.optim import describe_schedule

        cfg = self.config()
        lines = [f"reproduce {self.entry} ({self.detector.upper()} {self.schedule}, engine {self.engine})",
                 f"  config:   {self.config_path}",
                 f"  pretrain: {self.pretrain}" + (f" <- {self.pretrain_source}" if self.pretrain_source else ""),
                 f"  weights:  {self.weights or '(random init)'}",
                 f"  dataset:  {self.dataset}",
                 f"  output:   {self.output_dir}",
                 f"  device:   {self.options.describe()}",
                 f"  lr:       {describe_schedule(cfg.SOLVER)}",
                 f"  seed:     {cfg.SEED}" + (" (a random one, printed when the run starts)" if int(cfg.SEED) < 0
                                              else "")]
        if self.published is not None:
            lines.append(f"  published: box AP {self.published.box_ap:.1f}, mask AP {self.published.mask_ap:.1f} "
                         "(COCO val2017)")
        notes = list(self.notes) + ([self.scaling_note() or ""] if self.options.scale_to_batch else [])
        lines += [textwrap.fill(note, commands.WIDTH, initial_indent="  note: ", subsequent_indent="        ")
                  for note in notes]
        return "\n".join(lines)

    def render(self) -> str:
        """The full plan: the header, every override, the notes on the detectron2 command and both commands,
        wrapped with shell line continuations (``--dry-run``'s output and ``plan.txt``)."""
        pairs = [*self.protocol_overrides, *self.user_overrides]
        lines = [self.header(), "  overrides:" + ("" if pairs else " (none)")]
        lines += [f"    {commands.quote(k)} {commands.quote(v)}" for k, v in zip(pairs[::2], pairs[1::2])]
        lines += [textwrap.fill(note, commands.WIDTH, initial_indent="  note: ", subsequent_indent="        ")
                  for note in self.command_notes]
        lines += ["commands:", commands.wrap(*self._native_words()), commands.wrap(*self._detectron2_words())]
        return "\n".join(lines)


@dataclass
class ReproduceResult:
    """A finished (or dry) reproduction: its plan, the measured metrics and the comparison text."""

    plan: ReproducePlan
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # with several seeds: the mean
    comparison: str = ""
    train_result: Optional["TrainResult"] = None
    dry_run: bool = False
    seeds: list[int] = field(default_factory=list)            # the seeds run (one, or --seeds N of them)
    runs: list[dict[str, dict[str, float]]] = field(default_factory=list)  # each seed's metrics, same order


def _entry_for_schedule(zoo: "Zoo", entry: "DetectorEntry", schedule: Optional[str]) -> "DetectorEntry":
    """The zoo entry with ``entry``'s detector and pretrain trained for ``schedule`` (None: ``entry``)."""
    if schedule is None or schedule == entry.schedule:
        return entry
    for other in zoo.entries.values():
        if (other.detector, other.pretrain, other.schedule) == (entry.detector, entry.pretrain, schedule):
            return other
    known = sorted({e.schedule for e in zoo.entries.values()
                    if (e.detector, e.pretrain) == (entry.detector, entry.pretrain)})
    raise ConfigError(f"--schedule {schedule}: the table has no {entry.detector.upper()} row for pretrain "
                      f"{entry.pretrain!r} with that schedule (it has: {', '.join(known)})")


def _self_supervised_config(entry: "DetectorEntry") -> Path:
    """The RGB / stride-in-3x3 config (``*_infomin``) PyContrast uses for every self-supervised row."""
    from ..config import resolve_config_path

    return resolve_config_path(f"R_50_{entry.detector.upper()}_{entry.schedule}_infomin")


def _dataset_overrides(dataset: Optional[str], max_iter: Optional[int]) -> tuple[list[str], str, list[str]]:
    """(overrides, dataset label, notes) for the data a run trains and evaluates on."""
    if dataset is None or dataset in ("coco", "coco_2017"):
        overrides = [] if max_iter is None else ["SOLVER.MAX_ITER", str(max_iter)]
        notes = [] if max_iter is None else [f"--max-iter {max_iter}: a shortened run; STEPS beyond it are ignored "
                                             "and its AP is not comparable with the published one"]
        return overrides, "coco", notes
    from ..data import SHAPES_CATEGORIES, resolve_dataset

    if dataset == "shapes":
        iters = SHAPES_ITERS if max_iter is None else int(max_iter)
        overrides = ["DATASETS.TRAIN", "('shapes_train',)", "DATASETS.TEST", "('shapes_val',)",
                     "MODEL.ROI_HEADS.NUM_CLASSES", str(len(SHAPES_CATEGORIES))]
        for key, value, _ in SHAPES_PROTOCOL:
            overrides += [key, value]
        # strictly increasing and inside the run: detectron2's scheduler refuses repeated milestones
        steps = sorted({s for s in (int(iters * 0.75), int(iters * 0.9)) if 0 < s < iters})
        overrides += ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", str(tuple(steps)),
                      "SOLVER.WARMUP_ITERS", str(round(_SHAPES_WARMUP * iters / SHAPES_ITERS))]
        notes = [f"shapes protocol: {iters} iterations, lr steps at 75% and 90%, warmup scaled with them, small "
                 "inputs and RPN/RoI samples (see SHAPES_PROTOCOL); architecture, norms and init as the entry. "
                 "A pipeline check: its AP is measured on synthetic shapes, not on COCO"]
        return overrides, "shapes", notes
    name = str(Path(dataset).resolve()) if Path(dataset).exists() else str(dataset)  # absolute for the commands
    from ..engine.train import evaluation_dataset

    train = resolve_dataset(name, split="train")
    val, warning = evaluation_dataset(name, (name,), train)
    overrides = ["DATASETS.TRAIN", f"({name!r},)", "DATASETS.TEST", f"({name!r},)",
                 "MODEL.ROI_HEADS.NUM_CLASSES", str(train.num_classes)]
    if max_iter is not None:
        overrides += ["SOLVER.MAX_ITER", str(max_iter)]
    notes = [f"custom dataset: trains on {train.name} ({train.num_classes} classes), evaluates on {val.name} "
             f"({val.json_file}); the entry's recipe otherwise"] + ([warning] if warning else [])
    return overrides, str(dataset), notes


def _pretrain_plan(zoo: "Zoo", entry: "DetectorEntry", pretrain_path: Optional[Union[str, os.PathLike]],
                   output_dir: Path) -> tuple[str, Optional[str], str, str, Optional[Path]]:
    """(pretrain label, source description, weights file, detectron2 weights, user path)."""
    if pretrain_path is not None:
        from ..checkpoints.names import split_choice, with_choice

        text, choice = split_choice(os.fspath(pretrain_path))  # FILE#key=... chooses the encoder
        path = Path(text).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"--pretrain {pretrain_path}: no such file")
        weights = str(output_dir / "pretrain_user.pkl")
        return "user", f"your checkpoint {path} (converted like PyContrast's convert_pretrained.py)", weights, \
            weights, Path(with_choice(str(path), choice))
    pretrain = zoo.pretrain(entry.pretrain)
    if pretrain.file is None:
        return pretrain.name, "", "", "", None
    weights = str(output_dir / f"pretrain_{pretrain.name}.pkl")
    published = pretrain.file.published_url or pretrain.file.urls[0]
    d2_weights = published if published.startswith("detectron2://") else weights
    return pretrain.name, f"{pretrain.method}: {pretrain.file.urls[0]}", weights, d2_weights, None


def plan_reproduction(entry: str, options: Optional[RunOptions] = None, *, engine: str = "native",
                      dataset: Optional[str] = None, max_iter: Optional[int] = None, overrides: Sequence[str] = (),
                      pretrain: Optional[Union[str, os.PathLike]] = None,
                      config: Optional[Union[str, os.PathLike]] = None, schedule: Optional[str] = None
                      ) -> ReproducePlan:
    """Decide everything :func:`reproduce` will do; reads the manifest and configs only. ``options``: where and
    how (default: ``RunOptions()``, output ``output/ENTRY[_user][_DATASET]``)."""
    from ..config import resolve_config_path
    from ..zoo import load_manifest

    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if len(overrides) % 2:
        raise ConfigError(f"overrides must be KEY VALUE pairs; got an odd number: {list(overrides)}")
    if max_iter is not None and int(max_iter) < 1:
        raise ConfigError(f"--max-iter must be >= 1, got {max_iter}")
    zoo = load_manifest()
    base = zoo.entry(entry)
    target = _entry_for_schedule(zoo, base, schedule)
    options = options or RunOptions()
    suffix = ("_user" if pretrain else "") + ("" if dataset in (None, "coco") else "_" + Path(str(dataset)).name)
    out = options.output(DEFAULT_OUTPUT_ROOT / f"{target.name}{suffix}")
    notes: list[str] = []
    if config is not None:
        config_path = resolve_config_path(os.fspath(config))
    elif pretrain is not None:
        config_path = _self_supervised_config(target)
        notes.append("--pretrain: the self-supervised protocol (RGB input, ImageNet mean/std, stride in the 3x3 "
                     "conv); for a caffe2/MSRA-style BGR network pass --config " + Path(target.config).stem.replace(
                         "_infomin", "").replace("_rand", ""))
    else:
        config_path = target.config_path
    label, source, weights, d2_weights, user_path = _pretrain_plan(zoo, target, pretrain, out)
    if user_path is not None:  # where its ResNet-50 was found, what is dropped, the input convention
        from ..checkpoints import describe_pretrain

        notes += describe_pretrain(user_path)
    data_overrides, data_label, data_notes = _dataset_overrides(dataset, max_iter)
    if config is None and pretrain is None:  # the entry's own config: its manifest config_fixes come first
        data_overrides = [*target.config_overrides, *data_overrides]
        if target.config_fixes:
            notes.append(f"config_fixes from the manifest: {commands.join(target.config_overrides)}")
    notes += [f"known issue ({issue.url}): `pycontrast-zoo info {target.name}` says what is established"
              for issue in target.known_issues]
    notes += data_notes
    command_notes: list[str] = []
    if data_label != "coco":
        command_notes.append("stock tools/train_net.py does not know this dataset's names: register them with "
                             "register_coco_instances first, as --engine detectron2 does")
    if target.detector == "c4":
        command_notes.append("stock detectron2 has no ROI head 'Res5ROIHeadsExtraNorm' (PyContrast issue 40): the "
                             "tools/train_net.py command needs it registered, as --engine detectron2 does")
    published = TableRow(target.name, target.pretrain, target.box_ap, target.mask_ap)
    rows = tuple(TableRow(e.name, zoo.pretrain(e.pretrain).method, e.box_ap, e.mask_ap)
                 for e in zoo.entries.values() if (e.detector, e.schedule) == (target.detector, target.schedule))
    plan = ReproducePlan(
        entry=target.name, detector=target.detector, schedule=target.schedule, engine=engine,
        config_path=config_path, pretrain=label, pretrain_source=source, weights=weights,
        detectron2_weights=d2_weights, dataset=data_label, protocol_overrides=tuple(data_overrides),
        user_overrides=tuple(str(o) for o in overrides), options=options.replace(output_dir=out),
        published=published, table_rows=rows if pretrain is not None else (), notes=tuple(notes),
        command_notes=tuple(command_notes), user_pretrain=user_path)
    solver = plan.config().SOLVER  # a bad override or config fails now, before anything is fetched
    if max_iter is not None and int(solver.WARMUP_ITERS) >= int(solver.MAX_ITER):
        raise ConfigError(f"the warmup of {solver.WARMUP_ITERS} iterations is longer than --max-iter {max_iter}: the "
                          f"lr would never reach SOLVER.BASE_LR; add SOLVER.WARMUP_ITERS {max(1, int(max_iter) // 10)} "
                          "(a tenth of the run) or a longer --max-iter")
    return plan


def prepare_weights(plan: ReproducePlan, *, quiet: bool = False) -> Optional["ConversionReport"]:
    """Fetch (through the store) and convert the pretrain into ``plan.weights``; returns the conversion report
    (None for random init). ConfigError when the weights' channel order does not match the config. Run on one
    process only."""
    if not plan.weights:
        return None
    from ..checkpoints import stage_backbone

    cfg = plan.config()
    return stage_backbone(plan.weights_source, plan.weights, input_format=cfg.INPUT.FORMAT,
                          stride_in_1x1=cfg.MODEL.RESNETS.STRIDE_IN_1X1, quiet=quiet,
                          hint=f" (config {plan.config_path.name}; pass a matching --config)")


def _generate_datasets(plan: ReproducePlan) -> None:
    """Resolve (and for shapes, generate into the cache) the train and test data once, on rank 0."""
    from ..data import resolve_dataset

    cfg = plan.config()
    resolve_dataset(cfg.DATASETS.TRAIN[0], split="train")
    for name in cfg.DATASETS.TEST:
        resolve_dataset(name)


def compare(plan: ReproducePlan, measured: Union["EvalResult", dict[str, dict[str, float]]]) -> str:
    """Measured AP (an EvalResult, or task -> metric -> value) beside the published row; with --pretrain also
    beside every published row of the same detector and schedule."""
    from ..evaluation import EvalResult
    from ..reports import compare_with_published

    label = "coco_2017_val" if plan.dataset == "coco" else plan.dataset
    text = compare_with_published(plan.entry, measured, dataset=label)
    if not plan.table_rows:
        return text
    metrics = measured.metrics if isinstance(measured, EvalResult) else measured
    lines = [text, f"{plan.detector.upper()} {plan.schedule} rows of the table (COCO val2017) and yours:",
             f"  {'pretrain':<16}{'box AP':>8}{'mask AP':>9}"]
    lines += [f"  {row.pretrain:<16}{row.box_ap:>8.1f}{row.mask_ap:>9.1f}" for row in plan.table_rows]
    box, mask = metrics.get("bbox", {}).get("AP"), metrics.get("segm", {}).get("AP")
    lines.append(f"  {'yours (' + plan.dataset + ')':<16}{_ap(box):>8}{_ap(mask):>9}")
    return "\n".join(lines)


def _ap(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def reproduce(plan: ReproducePlan, *, seeds: int = 1, dry_run: bool = False) -> ReproduceResult:
    """Fetch and convert, train, evaluate and compare ``plan``'s table row (see the module docstring); printed on
    stdout by the process of global rank 0 only.

    ``seeds`` > 1 runs the protocol with seeds SEED, SEED+1, ... into ``OUTPUT/seed_<s>/`` (each keeping only its
    final weights) and compares their mean (± std) with the published row, once. A non-empty output folder is
    refused unless ``plan.options`` resumes or overwrites; only global rank 0 claims and writes it, whichever
    launcher started the processes.
    """
    if int(seeds) < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if dry_run:
        print(plan.render(), flush=True)
        return ReproduceResult(plan=plan, dry_run=True)
    main = plan.options.starts_rank_0()
    if main:
        print(plan.header(), flush=True)
    if plan.engine == "detectron2":
        runs = _detectron2_runs(plan, int(seeds))
    else:
        reference = _cached_published_log(plan.entry) if main else None
        runs = plan.options.launch(_native_worker, plan, int(seeds), reference)
    if not runs:  # not the process of global rank 0
        return ReproduceResult(plan=plan)
    if runs[-1].interrupted:
        print(f"stopped by {runs[-1].interrupted} with a checkpoint in {runs[-1].output_dir}; --resume goes on "
              "from it", flush=True)
        return ReproduceResult(plan=plan, train_result=runs[-1].train_result)
    return _compared(plan, runs)


@dataclass
class _Run:
    """One seed's outcome, as either engine reports it."""

    seed: int
    metrics: dict[str, dict[str, float]]
    evaluation: Optional["EvalResult"] = None
    train_result: Optional["TrainResult"] = None
    output_dir: Optional[Path] = None
    interrupted: str = ""


def _for_seed(plan: ReproducePlan, seed: int) -> ReproducePlan:
    """``plan`` with SEED ``seed``, into ``OUTPUT/seed_<seed>``."""
    return dataclasses.replace(plan, options=plan.options.replace(output_dir=plan.output_dir / f"seed_{seed}"),
                               user_overrides=(*plan.user_overrides, "SEED", str(seed)))


def _seeds(plan: ReproducePlan, count: int) -> list[int]:
    """SEED (one run) or SEED, SEED+1, ... (a random base for SEED < 0, printed)."""
    base = int(plan.config().SEED)
    if count == 1:
        return [base]
    if base < 0:
        base = int.from_bytes(os.urandom(4), "little") & 0x3FFFFFFF
        print(f"SEED {plan.config().SEED}: seeds start at {base} (SEED {base} --seeds {count} repeats them)",
              flush=True)
    return [base + k for k in range(count)]


def _start(plan: ReproducePlan, *, weights: bool = True) -> "Claim":
    """Global rank 0, while the others wait: claim the output folder, write plan.txt, fetch and convert the
    pretrain (``weights``), generate the data; a failure removes the folder it made."""
    options = plan.options
    claim = claim_output_dir(plan.output_dir, resume=options.resume, overwrite=options.overwrite)
    with removed_if_nothing_recorded(claim):
        plan.output_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(plan.output_dir / "plan.txt", plan.render() + "\n")
        if weights:
            prepare_weights(plan)
        _generate_datasets(plan)
    print(f"  the full plan (every override, both commands): {plan.output_dir / 'plan.txt'}", flush=True)
    return claim


def _native_worker(plan: ReproducePlan, count: int, reference: Optional[Path]) -> list[_Run]:
    """One training process: rank 0 starts the run (:func:`_start`) while the others wait, then all train each
    seed in turn."""
    import contextlib

    from ..engine.train import train
    from ..reports.curves_hook import CurvesHook

    claim = comm.main_process_first(lambda: _start(plan))
    main = comm.is_main_process()
    seeds = comm.broadcast_object(_seeds(plan, count) if main else None)
    note = plan.scaling_note()
    runs: list[_Run] = []
    with removed_if_nothing_recorded(claim) if claim is not None else contextlib.nullcontext():
        for k, seed in enumerate(seeds):
            sub = plan if count == 1 else _for_seed(plan, seed)
            if count > 1 and main:
                print(f"--- seed {seed} ({k + 1} of {count}): {sub.output_dir}", flush=True)
            result = train(sub.config(), sub.options, notes=(note,) if note else (), output_checked=True,
                           hooks=[CurvesHook(reference)])
            runs.append(_Run(result.seed, dict(result.metrics), result.evaluation, result, sub.output_dir,
                             result.interrupted))
            if result.interrupted:
                break
            if count > 1 and main:
                _keep_final_weights(sub.output_dir)
    return runs


def _keep_final_weights(folder: Path) -> None:
    """Delete the periodic checkpoints of a finished seed (they serve a resume only; model_final.pth stays)."""
    from ..engine.checkpoint import FINAL_NAME

    for path in folder.glob("model_*.pth"):
        if path.name != f"{FINAL_NAME}.pth":
            path.unlink()


def _detectron2_runs(plan: ReproducePlan, count: int) -> Optional[list[_Run]]:
    """Each seed through detectron2's DefaultTrainer (it launches its own processes); None on other machines."""
    import contextlib

    from .d2_backend import require_detectron2, train_with_detectron2

    require_detectron2()
    claim = _start(plan, weights=False) if plan.options.machine_rank == 0 else None  # the backend converts them
    runs: list[_Run] = []
    with removed_if_nothing_recorded(claim) if claim is not None else contextlib.nullcontext():
        for seed in _seeds(plan, count):
            sub = plan if count == 1 else _for_seed(plan, seed)
            metrics = train_with_detectron2(sub)
            if metrics is None:
                return None
            runs.append(_Run(seed, dict(metrics), output_dir=sub.output_dir))
    return runs


def _compared(plan: ReproducePlan, runs: Sequence[_Run]) -> ReproduceResult:
    """The measured AP beside the published row, printed once (with several seeds: their mean ± std and each
    seed's AP, also written to ``OUTPUT/seeds.json``)."""
    seeds, metrics = [r.seed for r in runs], [r.metrics for r in runs]
    if len(runs) == 1:
        text = compare(plan, runs[0].evaluation or runs[0].metrics)
        print(text, flush=True)
        return ReproduceResult(plan=plan, metrics=metrics[0], comparison=text, train_result=runs[0].train_result,
                               seeds=seeds, runs=metrics)
    mean, std = _mean_std(metrics)
    first = runs[0].evaluation
    measured = dataclasses.replace(first, metrics=mean) if first is not None else mean
    text = "\n".join([f"mean of {len(runs)} seeds ({', '.join(map(str, seeds))}):", compare(plan, measured),
                      _seed_table(seeds, metrics, mean, std)])
    print(text, flush=True)
    atomic.write_text(plan.output_dir / "seeds.json",
                      strict_json({"seeds": seeds, "runs": metrics, "mean": mean, "std": std}) + "\n")
    return ReproduceResult(plan=plan, metrics=mean, comparison=text, seeds=seeds, runs=metrics)


def _cached_published_log(entry: str) -> Optional[Path]:
    """The entry's published training log when it is in the cache already (never downloaded for this)."""
    from ..checkpoints.sources import fetch_entry_file

    try:
        return fetch_entry_file(entry, "log", offline=True, quiet=True)
    except ZooError:
        return None


def _mean_std(runs: Sequence[dict[str, dict[str, float]]]
              ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Per task and metric: the mean and the sample standard deviation over ``runs`` (metrics all runs have)."""
    mean: dict[str, dict[str, float]] = {}
    std: dict[str, dict[str, float]] = {}
    for task in runs[0]:
        for metric in runs[0][task]:
            found = [r.get(task, {}).get(metric) for r in runs]
            values = [v for v in found if v is not None and v == v]
            if len(values) < len(found):  # missing, or NaN (no such objects)
                continue
            mean.setdefault(task, {})[metric] = statistics.fmean(values)
            std.setdefault(task, {})[metric] = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def _seed_table(seeds: Sequence[int], runs: Sequence[dict], mean: dict, std: dict) -> str:
    """AP per seed and mean ± std (sample), box and mask."""
    lines = [f"{'':8}{'mean ± std':>14}  " + "".join(f"{'seed ' + str(s):>11}" for s in seeds)]
    for task, label in (("bbox", "box AP"), ("segm", "mask AP")):
        if "AP" not in mean.get(task, {}):
            continue
        cells = "".join(f"{r[task]['AP']:>11.1f}" for r in runs)
        lines.append(f"{label:8}{mean[task]['AP']:>8.1f} ± {std[task]['AP']:<4.1f}  {cells}")
    return "\n".join(lines)


__all__ = ["ReproducePlan", "ReproduceResult", "SHAPES_PROTOCOL", "TableRow", "compare", "plan_reproduction",
           "prepare_weights", "reproduce"]
