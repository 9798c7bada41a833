"""The native trainer: detectron2's training protocol (SGD, warmup + steps, PreciseBN, periodic checkpoints and
evaluation, final evaluation) around our model, in one process or under :func:`~pycontrast_det.engine.launch.launch`.

Reproducible by construction, every random choice derived from SEED (a random one, logged, when SEED < 0):
the initial weights from ``(seed, init)``; the data order and each image's augmentation from the global
stream position (``data.loader``), so the global batch of iteration ``i`` is the same for any number of
processes; RPN/RoI sampling from torch's generator, reseeded before iteration ``i`` from ``(seed, rank, i)``;
each PreciseBN pass from ``(seed, iteration)``. A run resumed from a checkpoint ends with the same weights as an
uninterrupted one, and the same command twice gives bit-identical weights on one machine (README: what holds
across process counts and devices).
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence, Union

from .. import atomic
from ..checkpoints.weights import resolve_weights
from ..errors import ConfigError, DatasetError, NonFiniteLossError
from ..utils import comm
from ..utils.events import loss_order, progress, setup_logger
from . import preempt
from .checkpoint import LAST_CHECKPOINT, Checkpointer
from .config_check import check_engine_config
from .hooks import (EvalHook, HookBase, PeriodicCheckpointer, PeriodicWriter, Preemption, PreciseBN,
                    TensorboardWriter, Timer)
from .optim import build_lr_scheduler, build_optimizer, gradient_clipper
from .output import Claim, claim_output_dir, removed_if_nothing_recorded
from .precise_bn import update_bn_stats
from .run_options import RunOptions

if TYPE_CHECKING:
    import torch

    from ..config import CfgNode
    from ..data.catalog import DatasetSpec
    from ..evaluation import EvalResult
    from ..modeling.meta_arch import MaskRCNN


@dataclass
class TrainResult:
    """What a training run produced, as seen by one process (checkpoint paths: rank 0 only)."""

    output_dir: Path
    start_iter: int                      # first iteration this call ran (0, or where a resume continued)
    max_iter: int
    final_checkpoint: Optional[Path]     # model_final.pth (our keys)
    detectron2_checkpoint: Optional[Path]  # model_final_detectron2.pth (detectron2 keys) when asked for, rank 0
    last_losses: dict[str, float] = field(default_factory=dict)  # process-averaged, last iteration
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> metric -> value (percent)
    evaluation: Optional["EvalResult"] = None  # the final evaluation, None if not evaluated
    seconds: float = 0.0                 # wall time of the training loop
    model: Optional["MaskRCNN"] = field(default=None, repr=False)  # this process's trained model
    seed: int = 0                        # the seed the run used (SEED, or the one picked for SEED < 0)
    interrupted: str = ""                # the signal (SIGINT, SIGTERM, ...) that stopped it early with a checkpoint
    next_iter: int = 0                   # where --resume goes on (max_iter when finished)

    def __getstate__(self) -> dict[str, Any]:
        """Results only when sent between processes: the model stays in the process that trained it."""
        return {**self.__dict__, "model": None}


# what a seed is for: the initial weights, one iteration of one rank, one PreciseBN pass
_INIT, _ITERATION, _PRECISE_BN = 0, 1, 2


def derived_seed(seed: int, *key: int) -> int:
    """A 31-bit seed for one purpose (``key``) of a run seeded with ``seed``; independent across keys."""
    import numpy as np

    return int(np.random.SeedSequence(seed, spawn_key=key).generate_state(1)[0]) & 0x7FFFFFFF


def _seed_rngs(seed: int, *key: int) -> None:
    """Seed torch/numpy/random from SEED and what it is for: ``(_INIT,)`` before the model is built (the same
    initial weights on every rank), ``(_ITERATION, rank, iteration)`` before each step, so resumed == uninterrupted."""
    import numpy as np
    import torch

    state = np.random.SeedSequence(seed, spawn_key=key).generate_state(2)
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))
    np.random.seed(int(state[0]))
    random.seed(int(state[1]))


def _pick_seed(cfg: "CfgNode") -> int:
    """SEED, or for SEED < 0 a random one (the same on every process)."""
    seed = int(cfg.SEED)
    if seed < 0:
        seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    return int(comm.broadcast_object(seed))


def _use_amp(cfg: "CfgNode", amp: Optional[bool], device: "torch.device") -> bool:
    enabled = bool(cfg.SOLVER.AMP.ENABLED) if amp is None else bool(amp)
    if enabled and device.type != "cuda":
        raise ConfigError("mixed precision (SOLVER.AMP.ENABLED / --amp) needs a CUDA device; "
                          f"this run is on {device}. Drop --amp or run on CUDA")
    return enabled


def evaluation_dataset(name: str, train_names: Sequence[str],
                       train_spec: "DatasetSpec") -> tuple["DatasetSpec", Optional[str]]:
    """The split a run evaluates on for DATASETS.TEST ``name`` and, when that is the training data, a sentence
    saying so. A dataset that is also DATASETS.TRAIN (``--dataset PATH``) without a val split is evaluated on its
    train split."""
    from ..data import resolve_dataset

    try:
        spec = resolve_dataset(name)
    except DatasetError as exc:
        if name not in train_names:
            raise
        return train_spec, (f"{name} has no val split ({str(exc).split(';')[0]}): evaluating on its train split "
                      f"{train_spec.json_file}, the images the model trains on (AP on them overstates the model)")
    if spec.shares_images_with(train_spec):
        return spec, (f"evaluating on {spec.json_file}, the annotations the model trains on (a single COCO json "
                      "has no separate val split; AP on training images overstates the model)")
    return spec, None


def _datasets(cfg: "CfgNode") -> tuple["DatasetSpec", Optional["DatasetSpec"], Optional[str]]:
    """(train spec, test spec or None, a warning when the test images are the training images)."""
    from ..data import resolve_datasets

    train_spec = resolve_datasets(cfg.DATASETS.TRAIN, split="train")
    if not len(cfg.DATASETS.TEST):
        return train_spec, None, None
    return (train_spec, *evaluation_dataset(cfg.DATASETS.TEST[0], cfg.DATASETS.TRAIN, train_spec))


def _effective_config(cfg: "CfgNode", dataset: Optional[Union[str, os.PathLike]], device: "torch.device"
                      ) -> "CfgNode":
    """``cfg`` as this run uses it: DATASETS.TRAIN/TEST set to ``dataset`` when given, MODEL.DEVICE the device."""
    out = cfg.clone()
    out.defrost()
    if dataset is not None:
        name = str(Path(dataset).resolve()) if Path(dataset).exists() else str(dataset)
        out.DATASETS.TRAIN, out.DATASETS.TEST = (name,), (name,)
    out.MODEL.DEVICE = str(device)
    return out.freeze()


def _with_seed(cfg: "CfgNode", seed: int) -> "CfgNode":
    out = cfg.clone()
    out.defrost()
    out.SEED = int(seed)
    return out.freeze()


def _reduce_losses(loss_dict: Mapping[str, Any]) -> dict[str, float]:
    """Each loss averaged over processes (one all-reduce), plus ``total_loss``, as Python floats."""
    import torch

    names = sorted(loss_dict)
    values = torch.stack([loss_dict[k].detach().float() for k in names])
    comm.all_reduce_mean([values])
    out = dict(zip(names, values.tolist()))
    out["total_loss"] = float(sum(out.values()))
    return out


_ADVICE = "Lower SOLVER.BASE_LR, lengthen SOLVER.WARMUP_ITERS, or check the data"


def _check_finite(losses: Mapping[str, float], iteration: int) -> None:
    import math

    if not all(math.isfinite(v) for v in losses.values()):
        shown = ", ".join(f"{k}: {v}" for k, v in losses.items())
        raise NonFiniteLossError(f"Loss became infinite or NaN at iteration={iteration}! loss_dict = {{{shown}}}. "
                                 + _ADVICE)


class Trainer:
    """One process's share of a run: the model, its optimizer and the loop over steps, with hooks called before
    training, after each step and after training (:meth:`build_hooks`). :func:`train` builds and runs one."""

    def __init__(self, cfg: "CfgNode", output_dir: Path, device: "torch.device", amp: bool, logger: logging.Logger,
                 seed: int, train_spec: "DatasetSpec", test_spec: Optional["DatasetSpec"]) -> None:
        import torch

        from ..modeling import build_model
        from ..utils.events import MetricsWriter

        self.cfg, self.output_dir, self.device, self.amp, self.logger = cfg, output_dir, device, amp, logger
        self.train_spec, self.test_spec = train_spec, test_spec
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        self.max_iter = int(cfg.SOLVER.MAX_ITER)
        self.seed = seed
        _seed_rngs(seed, _INIT)
        self.model: "MaskRCNN" = build_model(cfg).to(device)
        if device.type == "cpu" and self.world_size > 1:
            _naive_sync_bn_on_cpu(self.model)  # before the optimizer sees the parameters
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_lr_scheduler(cfg, self.optimizer)
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp)
        self.clip = gradient_clipper(cfg)
        self.checkpointer = Checkpointer(self.model, output_dir, optimizer=self.optimizer, scheduler=self.scheduler,
                                         scaler=self.scaler, arch=self.model.arch,
                                         keep=int(cfg.SOLVER.CHECKPOINTS_KEPT))
        self.writer = MetricsWriter(logger, output_dir, self.max_iter, enabled=self.rank == 0)
        # the loop's state, read by the hooks
        self.start_iter = self.iter = 0
        self.losses: dict[str, float] = {}
        self.lr = self.step_time = self.data_time = self.seconds = 0.0
        self.saved_iter = -1                     # the iteration of the newest checkpoint this run saved
        self.interrupted = ""                    # the signal that stopped the loop early ("" if none)
        self.latest_eval: Optional[tuple[int, dict[str, dict[str, float]]]] = None  # (iteration, metrics)
        self.evaluation: Optional["EvalResult"] = None  # the final evaluation
        self.final_checkpoint: Optional[Path] = None
        self.detectron2_checkpoint: Optional[Path] = None
        self.hooks: list[HookBase] = []

    def build_hooks(self, *, log_period: int = 20, evaluate_at_end: bool = True,
                    export_detectron2: bool = False) -> list[HookBase]:
        """The built-in hooks, in the order they are called (detectron2's order; the reason for each place)."""
        cfg = self.cfg
        eval_period = int(cfg.TEST.EVAL_PERIOD)
        hooks: list[HookBase] = [
            Timer(),  # first: times the loop, not the hooks' setup
            PeriodicWriter(log_period),  # the step's losses are logged before anything else can fail
        ]
        if cfg.TEST.PRECISE_BN.ENABLED:
            hooks.append(PreciseBN(eval_period))  # before the checkpoint and evaluation, which use its statistics
        hooks.append(PeriodicCheckpointer(int(cfg.SOLVER.CHECKPOINT_PERIOD), export_detectron2))  # before the
        # evaluation: a crash in evaluation keeps the weights
        if self.test_spec is not None:
            hooks.append(EvalHook(eval_period, evaluate_at_end))  # after PreciseBN and the checkpoint
        if TensorboardWriter.available():
            hooks.append(TensorboardWriter(log_period))  # after the evaluation: writes its AP at the same step
        hooks.append(Preemption())  # last of the step: the checkpoint it may save holds every update of the step
        return hooks

    def register_hooks(self, hooks: Sequence[HookBase]) -> None:
        """Add ``hooks`` (called after those already registered)."""
        for hook in hooks:
            hook.trainer = self
        self.hooks.extend(hooks)

    @property
    def trained_to_the_end(self) -> bool:
        """True after a loop that ran steps and reached MAX_ITER (not stopped by a signal)."""
        return not self.interrupted and self.start_iter < self.max_iter

    def save(self, name: str, iteration: int) -> Optional[Path]:
        """A checkpoint after ``iteration`` with what a resume needs (seed) and the config that trained it."""
        self.saved_iter = iteration
        return self.checkpointer.save(name, iteration, seed=self.seed, config=self.cfg.dump())

    def precise_bn(self, iteration: int) -> None:
        """PreciseBN after ``iteration`` on a stream of its own (seeded from the iteration): training data
        unaffected."""
        from ..data import build_train_loader

        count = int(self.cfg.TEST.PRECISE_BN.NUM_ITER)
        started = time.perf_counter()
        _seed_rngs(self.seed, _PRECISE_BN, self.rank, iteration)  # the RoI sampling in the forward passes
        batches = build_train_loader(self.cfg, self.train_spec, rank=self.rank, world_size=self.world_size,
                                     seed=derived_seed(self.seed, _PRECISE_BN, iteration))
        used = update_bn_stats(self.model, progress(batches, count, "PreciseBN", self.logger), count)
        self.logger.info(f"PreciseBN: BatchNorm statistics recomputed over {used} batches per process, averaged "
                         f"across processes ({time.perf_counter() - started:.1f} s)")

    def evaluate(self, iteration: int) -> "EvalResult":
        """COCO metrics of the (bare) model on the test split after ``iteration``: every process infers on its
        share, rank 0 scores once; logged and written to metrics.json."""
        from ..evaluation import evaluate

        assert self.test_spec is not None
        spec = self.test_spec
        self.logger.info(f"Evaluating on {spec.name} ({spec.json_file})")
        result = evaluate(self.model, dataset=spec, output_dir=self.output_dir / "inference", rank=self.rank,
                          world_size=self.world_size, log=self.logger)
        self.writer.write_eval(iteration, result.metrics)
        self.latest_eval = (iteration, dict(result.metrics))
        return result

    def restore(self, resume: bool) -> tuple[int, int]:
        """(start iteration, seed): from the last checkpoint when resuming, else 0 and a fresh seed with the
        initial weights of MODEL.WEIGHTS loaded."""
        state = self.checkpointer.resume() if resume else None
        if state is not None:
            start = int(state["iteration"]) + 1
            self.logger.info(f"Resuming from {self.checkpointer.last_checkpoint()} at iteration {start}")
            self.seed = int(state.get("seed", self.seed))
            return start, self.seed
        if resume:
            self.logger.info(f"--resume: no checkpoint in {self.output_dir}; starting from iteration 0")
        self._load_initial_weights()
        return 0, self.seed

    def _load_initial_weights(self) -> None:
        from ..modeling import load_weights

        weights = str(self.cfg.MODEL.WEIGHTS)
        report = load_weights(self.model, weights) if weights else None  # rank 0 fetched it already: a cache hit
        if report is None:
            self.logger.info(f"MODEL.WEIGHTS {weights!r}: every weight starts from random initialisation")
            return
        for line in report.summary():
            (self.logger.warning if line in report.warnings() else self.logger.info)(f"Initial weights: {line}")

    def wrap(self) -> "torch.nn.Module":
        """The model as the training step calls it: DDP across processes, the bare model otherwise."""
        if self.world_size == 1:
            return self.model
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # buffers are never broadcast in forward: SyncBN keeps every rank's running statistics equal already
        parameters = inspect.signature(DistributedDataParallel).parameters
        sync = "forward_sync_buffers" if "forward_sync_buffers" in parameters else "broadcast_buffers"
        no_buffer_sync: dict[str, Any] = {sync: False}
        return DistributedDataParallel(self.model, device_ids=ids, **no_buffer_sync)

    def step(self, model: "torch.nn.Module", batch: Any, iteration: int) -> dict[str, float]:
        """Forward, loss check, backward, clip, SGD step, lr step; returns the process-averaged losses."""
        import torch

        try:
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                loss_dict = model(batch)
        except FloatingPointError as exc:  # the model found non-finite predictions (detectron2 does the same)
            raise NonFiniteLossError(f"Training diverged at iteration={iteration}: {exc}. {_ADVICE}") from exc
        losses = _reduce_losses(loss_dict)
        _check_finite(losses, iteration)
        total = sum(loss_dict.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.clip is not None:
            self.scaler.unscale_(self.optimizer)
            self.clip(self.optimizer)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return losses

    def run(self, start_iter: int) -> TrainResult:
        """The loop from ``start_iter`` to SOLVER.MAX_ITER (or a stop signal), with the hooks around it."""
        self.start_iter = start_iter
        model = self.wrap()
        model.train()
        batches = _train_stream(self.cfg, self.train_spec, self.seed, start_iter)
        for hook in self.hooks:
            hook.before_train()
        with preempt.ctrl_c_stops_after_the_step():
            for iteration in range(start_iter, self.max_iter):
                self.iter = iteration
                _seed_rngs(self.seed, _ITERATION, self.rank, self.iter)
                tick = time.perf_counter()
                batch = next(batches)
                self.data_time = time.perf_counter() - tick
                self.lr = self.optimizer.param_groups[0]["lr"]
                losses = self.step(model, batch, self.iter)
                self.losses = {k: losses[k] for k in loss_order(list(losses))}
                self.step_time = time.perf_counter() - tick
                for hook in self.hooks:
                    hook.after_step()
                if self.interrupted:
                    break
        for hook in self.hooks:
            hook.after_train()
        comm.barrier()
        return TrainResult(output_dir=self.output_dir, start_iter=start_iter, max_iter=self.max_iter,
                           final_checkpoint=self.final_checkpoint, detectron2_checkpoint=self.detectron2_checkpoint,
                           last_losses=self.losses, evaluation=self.evaluation,
                           metrics=dict(self.evaluation.metrics) if self.evaluation else {}, seconds=self.seconds,
                           model=self.model, seed=self.seed, interrupted=self.interrupted,
                           next_iter=self.iter + 1 if self.interrupted else self.max_iter)


def _naive_sync_bn_on_cpu(model: "torch.nn.Module") -> None:
    """Swap torch SyncBatchNorm layers for the modeling package's NaiveSyncBatchNorm (same parameters, buffers
    and, on CPU, the same all-reduce arithmetic): DistributedDataParallel refuses SyncBatchNorm on CPU."""
    import torch.nn as nn

    from ..modeling.norms import NaiveSyncBatchNorm

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.SyncBatchNorm):
                naive = NaiveSyncBatchNorm(child.num_features, eps=child.eps, momentum=child.momentum)
                naive.load_state_dict(child.state_dict())
                naive.train(child.training)
                setattr(parent, name, naive)


def _train_stream(cfg: "CfgNode", spec: "DatasetSpec", seed: int, start_iter: int) -> Iterator[Any]:
    """This rank's batches from iteration ``start_iter`` on (the stream is a function of seed and position, so a
    resumed run sees exactly the batches the interrupted one would have)."""
    from ..data import build_train_loader

    return build_train_loader(cfg, spec, rank=comm.get_rank(), world_size=comm.get_world_size(), seed=seed,
                              start_iter=start_iter)


def train(cfg: "CfgNode", options: Optional[RunOptions] = None, *, dataset: Optional[Union[str, os.PathLike]] = None,
          evaluate_at_end: bool = True, log_period: int = 20, notes: Sequence[str] = (),
          hooks: Sequence[HookBase] = (), output_checked: bool = False) -> TrainResult:
    """Train ``cfg``'s model as detectron2 would and evaluate it on DATASETS.TEST (or ``dataset``'s val split).

    Args:
        cfg: the config (a key the trainer does not implement is refused before anything runs).
        options: where and how (default ``RunOptions()``): ``output_dir`` (default cfg.OUTPUT_DIR) is refused when
            it holds anything, unless ``resume`` (continue from its ``last_checkpoint``) or ``overwrite`` (delete
            the previous run's files first); ``device``, ``amp`` (CUDA only; default SOLVER.AMP.ENABLED),
            ``export_detectron2`` (also write model_final_detectron2.pth, detectron2's names).
        dataset: train on this dataset's train split and evaluate on its val split (instead of DATASETS).
        evaluate_at_end: run the final evaluation (TEST.EVAL_PERIOD evaluations run regardless).
        log_period: iterations between log lines.
        notes: logged first (e.g. the linear-scaling rule applied to ``cfg``).
        hooks: called after the built-in ones (:class:`~pycontrast_det.engine.hooks.HookBase`).
        output_checked: the caller claimed the output folder already (``reproduce``, which writes its plan and
            the converted pretrain there first): the folder is not checked again.

    Call it in each process of a group (see :meth:`RunOptions.launch`) or alone. Files (rank 0): log.txt,
    metrics.json, config.yaml (with the seed used), ``model_{iter:07d}.pth`` every SOLVER.CHECKPOINT_PERIOD (the
    newest SOLVER.CHECKPOINTS_KEPT kept), model_final.pth, inference/, TensorBoard events when tensorboard is
    installed. A start that fails before anything was recorded leaves no folder behind. Ctrl-C stops after the
    step with a checkpoint (``interrupted`` "SIGINT"); a second Ctrl-C interrupts at once.
    """
    from ..modeling.device import resolve_device

    options = options or RunOptions()
    output_dir = Path(options.output_dir if options.output_dir is not None else cfg.OUTPUT_DIR)
    resume = options.resume
    rank, world_size = comm.get_rank(), comm.get_world_size()
    logger = setup_logger(None, rank)
    device = resolve_device(options.device)
    cfg = _effective_config(cfg, dataset, device)
    check_engine_config(cfg, world_size)
    use_amp = _use_amp(cfg, options.amp, device)
    if device.type == "cuda":
        import torch

        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)

    def start() -> Optional[Claim]:  # rank 0, while the others wait: nothing is written before this has passed
        claim = None if output_checked else claim_output_dir(output_dir, resume=resume, overwrite=options.overwrite)
        _datasets(cfg)  # generated (shapes) or checked now
        if cfg.MODEL.WEIGHTS and not (resume and (output_dir / LAST_CHECKPOINT).is_file()):
            resolve_weights(str(cfg.MODEL.WEIGHTS))
        return claim

    claim = comm.main_process_first(start)
    train_spec, test_spec, test_note = _datasets(cfg)
    guard = removed_if_nothing_recorded(claim) if claim is not None else contextlib.nullcontext()
    with guard:
        if rank == 0:
            output_dir.mkdir(parents=True, exist_ok=True)
        logger = setup_logger(output_dir, rank)
        for note in notes:
            logger.info(note)
        if test_note and (evaluate_at_end or int(cfg.TEST.EVAL_PERIOD) > 0):
            logger.warning(test_note)
        from ..data import check_num_classes

        check_num_classes(train_spec, cfg.MODEL.ROI_HEADS.NUM_CLASSES, model="the config")
        logger.info(f"{train_spec.num_classes} classes, from {train_spec.name}: "
                    f"{', '.join(train_spec.category_names)}")
        logger.info(f"Training on {train_spec.name} ({world_size} process(es), {device}, "
                    f"{cfg.SOLVER.IMS_PER_BATCH} images/iteration, AMP {'on' if use_amp else 'off'})")
        trainer = Trainer(cfg, output_dir, device, use_amp, logger, _pick_seed(cfg), train_spec, test_spec)
        trainer.model.classes = train_spec.categories  # stored in every checkpoint: the names travel with the weights
        start_iter, seed = trainer.restore(resume)
        if start_iter == 0 and int(cfg.SEED) < 0:
            logger.info(f"SEED {cfg.SEED}: this run uses seed {seed}; SEED {seed} repeats it")
        trainer.cfg = cfg = _with_seed(cfg, seed)
        if rank == 0:
            atomic.write_text(output_dir / "config.yaml", cfg.dump())
        trainer.register_hooks(trainer.build_hooks(log_period=log_period, evaluate_at_end=evaluate_at_end,
                                                   export_detectron2=options.export_detectron2))
        trainer.register_hooks(hooks)
        return trainer.run(start_iter)
