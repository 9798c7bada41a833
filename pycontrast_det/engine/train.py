"""The native trainer: detectron2's training protocol (SGD, warmup + steps, PreciseBN, checkpoints, final
evaluation) around our model, in one process or under :func:`~pycontrast_det.engine.launch.launch`.

Reproducible by construction: before iteration ``i`` every process reseeds torch/numpy/random from
``(seed, rank, i)``, and the data stream of each rank is a function of ``(seed, rank, position)``, so a run
resumed from a checkpoint ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

from .. import atomic
from ..checkpoints.weights import resolve_weights
from ..errors import ConfigError, NonFiniteLossError
from . import comm
from .checkpoint import FINAL_NAME, Checkpointer, periodic_name
from .events import MetricsWriter, loss_order, setup_logger
from .optim import build_lr_scheduler, build_optimizer, gradient_clipper
from .precise_bn import update_bn_stats


@dataclass
class TrainResult:
    """What a training run produced, as seen by one process (checkpoint paths: rank 0 only)."""

    output_dir: Path
    start_iter: int                      # first iteration this call ran (0, or where a resume continued)
    max_iter: int
    final_checkpoint: Optional[Path]     # model_final.pth (our keys)
    detectron2_checkpoint: Optional[Path]  # model_final_detectron2.pth (detectron2 keys), rank 0
    last_losses: dict[str, float] = field(default_factory=dict)  # process-averaged, last iteration
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> metric -> value (percent)
    evaluation: Any = None               # the final EvalResult (engine.evaluation), None if not evaluated
    seconds: float = 0.0                 # wall time of the training loop
    model: Any = field(default=None, repr=False)  # the trained model (this process's copy; not sent between processes)


_INIT, _ITERATION = 0, 1  # what a seed is for: the initial weights, or one iteration of one rank


def _seed_rngs(seed: int, *key: int) -> None:
    """Seed torch/numpy/random from SEED and what it is for: ``(_INIT,)`` before the model is built (the same
    initial weights on every rank), ``(_ITERATION, rank, iteration)`` before each step, so resumed == uninterrupted."""
    import numpy as np
    import torch

    state = np.random.SeedSequence(seed, spawn_key=key).generate_state(2)
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))
    np.random.seed(int(state[0]))
    random.seed(int(state[1]))


def _pick_seed(cfg: Any) -> int:
    seed = int(cfg.SEED)
    if seed < 0:
        seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    return int(comm.broadcast_object(seed))


def _resolve_device(device: Union[str, Any]) -> Any:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' asked for but CUDA is not available here; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def _use_amp(cfg: Any, amp: Optional[bool], device: Any) -> bool:
    enabled = bool(cfg.SOLVER.AMP.ENABLED) if amp is None else bool(amp)
    if enabled and device.type != "cuda":
        raise ConfigError("mixed precision (SOLVER.AMP.ENABLED / --amp) needs a CUDA device; "
                          f"this run is on {device}. Drop --amp or run on CUDA")
    return enabled


def _datasets(cfg: Any, dataset: Optional[Union[str, os.PathLike]]) -> tuple[Any, Optional[Any]]:
    """(train spec, test spec or None): ``dataset`` (train and val splits of it) or DATASETS.TRAIN/TEST."""
    from ..data import resolve_dataset

    if dataset is not None:
        return resolve_dataset(dataset, split="train"), resolve_dataset(dataset, split="val")
    if len(cfg.DATASETS.TRAIN) != 1:
        raise ConfigError(f"DATASETS.TRAIN must name exactly one dataset, got {list(cfg.DATASETS.TRAIN)}")
    test = resolve_dataset(cfg.DATASETS.TEST[0]) if len(cfg.DATASETS.TEST) else None
    return resolve_dataset(cfg.DATASETS.TRAIN[0], split="train"), test


def _check_cfg(cfg: Any, world_size: int) -> None:
    batch = int(cfg.SOLVER.IMS_PER_BATCH)
    if batch < world_size or batch % world_size:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH {batch} is not a positive multiple of the {world_size} "
                          "processes; change it (or --scale-to-batch) or the number of processes")
    if int(cfg.SOLVER.MAX_ITER) < 1:
        raise ConfigError(f"SOLVER.MAX_ITER must be >= 1, got {cfg.SOLVER.MAX_ITER}")


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


class _Trainer:
    """One process's share of a run; :func:`train` drives it."""

    def __init__(self, cfg: Any, output_dir: Path, device: Any, amp: bool, logger: logging.Logger,
                 seed: int) -> None:
        import torch

        from ..modeling import build_model

        self.cfg, self.output_dir, self.device, self.amp, self.logger = cfg, output_dir, device, amp, logger
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        self.max_iter = int(cfg.SOLVER.MAX_ITER)
        self.seed = seed
        _seed_rngs(seed, _INIT)
        self.model = build_model(cfg).to(device)
        if device.type == "cpu" and self.world_size > 1:
            _naive_sync_bn_on_cpu(self.model)  # before the optimizer sees the parameters
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_lr_scheduler(cfg, self.optimizer)
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp)
        self.clip = gradient_clipper(cfg)
        self.checkpointer = Checkpointer(self.model, output_dir, optimizer=self.optimizer, scheduler=self.scheduler,
                                         scaler=self.scaler, arch=self.model.arch)

    def restore(self, resume: bool) -> tuple[int, int]:
        """(start iteration, seed): from the last checkpoint when resuming, else 0 and a fresh seed with the
        initial weights of MODEL.WEIGHTS loaded."""
        state = self.checkpointer.resume() if resume else None
        if state is not None:
            start = int(state["iteration"]) + 1
            self.logger.info(f"Resuming from {self.checkpointer.last_checkpoint()} at iteration {start}")
            return start, int(state.get("seed", self.seed))
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

    def wrap(self) -> Any:
        """The model as the training step calls it: DDP across processes, the bare model otherwise."""
        if self.world_size == 1:
            return self.model
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # buffers are never broadcast in forward: SyncBN keeps every rank's running statistics equal already
        sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                else "broadcast_buffers")
        return DistributedDataParallel(self.model, device_ids=ids, **{sync: False})

    def step(self, model: Any, batch: Any, iteration: int) -> dict[str, float]:
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


def _naive_sync_bn_on_cpu(model: Any) -> None:
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


def _train_stream(cfg: Any, spec: Any, seed: int, start_iter: int) -> Iterator[Any]:
    """This rank's batches, positioned at ``start_iter`` (the stream is a function of seed and position, so
    replaying the first ``start_iter`` batches puts a resumed run exactly where the interrupted one was)."""
    from ..data import build_train_loader

    batches = build_train_loader(cfg, spec, rank=comm.get_rank(), world_size=comm.get_world_size(), seed=seed)
    for _ in range(start_iter):
        next(batches)
    return batches


def train(cfg: Any, *, output_dir: Union[str, os.PathLike], resume: bool = False,
          dataset: Optional[Union[str, os.PathLike]] = None, device: Union[str, Any] = "cpu",
          amp: Optional[bool] = None, evaluate_at_end: bool = True, log_period: int = 20,
          notes: Sequence[str] = ()) -> TrainResult:
    """Train ``cfg``'s model as detectron2 would and evaluate it on DATASETS.TEST (or ``dataset``'s val split).

    Call it in each process of a group (see :func:`launch`) or alone. ``resume`` continues from
    ``output_dir/last_checkpoint``. Files (rank 0): log.txt, metrics.json, config.yaml,
    ``model_{iter:07d}.pth`` every SOLVER.CHECKPOINT_PERIOD, model_final.pth, model_final_detectron2.pth.
    ``notes`` are logged first (e.g. the linear-scaling rule applied to ``cfg``).
    """
    output_dir = Path(output_dir)
    rank, world_size = comm.get_rank(), comm.get_world_size()
    logger = setup_logger(output_dir, rank)
    _check_cfg(cfg, world_size)
    device = _resolve_device(device)
    use_amp = _use_amp(cfg, amp, device)
    for note in notes:
        logger.info(note)
    if rank == 0:  # the first process writes, generates and downloads while the others wait
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(output_dir / "config.yaml", cfg.dump())
        train_spec, test_spec = _datasets(cfg, dataset)
        if cfg.MODEL.WEIGHTS and not (resume and (output_dir / "last_checkpoint").is_file()):
            resolve_weights(str(cfg.MODEL.WEIGHTS))
    comm.barrier()
    if rank != 0:
        train_spec, test_spec = _datasets(cfg, dataset)
    from ..data import check_num_classes

    check_num_classes(train_spec, cfg.MODEL.ROI_HEADS.NUM_CLASSES, model="the config")
    logger.info(f"{train_spec.num_classes} classes, from {train_spec.name}: {', '.join(train_spec.category_names)}")
    logger.info(f"Training on {train_spec.name} ({world_size} process(es), {device}, "
                f"{cfg.SOLVER.IMS_PER_BATCH} images/iteration, AMP {'on' if use_amp else 'off'})")

    trainer = _Trainer(cfg, output_dir, device, use_amp, logger, _pick_seed(cfg))
    trainer.model.classes = train_spec.categories  # stored in every checkpoint: the names travel with the weights
    start_iter, seed = trainer.restore(resume)
    model = trainer.wrap()
    model.train()
    writer = MetricsWriter(logger, output_dir, trainer.max_iter, enabled=rank == 0)
    batches = _train_stream(cfg, train_spec, seed, start_iter)
    period = int(cfg.SOLVER.CHECKPOINT_PERIOD)
    losses: dict[str, float] = {}
    started = time.perf_counter()
    for iteration in range(start_iter, trainer.max_iter):
        _seed_rngs(seed, _ITERATION, rank, iteration)
        tick = time.perf_counter()
        batch = next(batches)
        data_time = time.perf_counter() - tick
        lr = trainer.optimizer.param_groups[0]["lr"]
        losses = trainer.step(model, batch, iteration)
        writer.put({k: losses[k] for k in loss_order(losses)}, lr=lr, time=time.perf_counter() - tick,
                   data_time=data_time)
        last = iteration == trainer.max_iter - 1
        if (iteration + 1) % log_period == 0 or last:
            writer.write(iteration)
        if period > 0 and (iteration + 1) % period == 0 and not last:
            trainer.checkpointer.save(periodic_name(iteration), iteration, seed=seed)
    seconds = time.perf_counter() - started

    final = d2_final = None
    if start_iter < trainer.max_iter:
        if cfg.TEST.PRECISE_BN.ENABLED:
            used = update_bn_stats(trainer.model, batches, int(cfg.TEST.PRECISE_BN.NUM_ITER))
            logger.info(f"PreciseBN: BatchNorm statistics recomputed over {used} batches per process, "
                        "averaged across processes")
        final = trainer.checkpointer.save(FINAL_NAME, trainer.max_iter - 1, seed=seed)
        d2_final = trainer.checkpointer.export_detectron2(FINAL_NAME)
    elif rank == 0:
        final = output_dir / f"{FINAL_NAME}.pth"
    comm.barrier()

    evaluation = None
    if evaluate_at_end and test_spec is not None:
        evaluation = _final_evaluation(trainer.model, test_spec, output_dir, logger)
        writer.write_eval(trainer.max_iter - 1, evaluation.metrics)
    comm.barrier()
    return TrainResult(output_dir=output_dir, start_iter=start_iter, max_iter=trainer.max_iter,
                       final_checkpoint=final, detectron2_checkpoint=d2_final, last_losses=losses,
                       metrics=dict(evaluation.metrics) if evaluation else {}, evaluation=evaluation,
                       seconds=seconds, model=trainer.model)


def _final_evaluation(model: Any, spec: Any, output_dir: Path, logger: logging.Logger) -> Any:
    """COCO metrics of the trained (bare) model on ``spec``: every rank infers on its share, rank 0 scores."""
    from .evaluation import evaluate

    logger.info(f"Evaluating on {spec.name} ({spec.json_file})")
    return evaluate(model, dataset=spec, output_dir=output_dir / "inference")
