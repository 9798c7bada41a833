"""The trainer's extension point: a hook is called before training, after every step and after training, in the
order :meth:`pycontrast_det.engine.train.Trainer.build_hooks` gives (detectron2's ``HookBase`` protocol).

A hook reads the trainer's state (``trainer.iter``, ``trainer.losses``, ``trainer.model``, ...) through
``self.trainer``, set when it is registered. ``train(cfg, options, hooks=[MyHook()])`` runs user hooks after the
built-in ones.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional

from ..utils import comm
from . import preempt
from .checkpoint import FINAL_NAME, periodic_name

if TYPE_CHECKING:
    from .train import Trainer


class HookBase:
    """Override any of the three calls; ``self.trainer`` is the running trainer."""

    trainer: "Trainer"

    def before_train(self) -> None:
        """Once, after the weights are loaded (or restored), before the first step."""

    def after_step(self) -> None:
        """After each step (``trainer.iter`` is the step just done)."""

    def after_train(self) -> None:
        """Once, after the loop (``trainer.interrupted`` says whether it stopped early)."""


def _at_period(trainer: "Trainer", period: int) -> bool:
    """True after a step that ends a period, the last step excepted (the after-train calls handle that one)."""
    return period > 0 and (trainer.iter + 1) % period == 0 and trainer.iter < trainer.max_iter - 1


class PeriodicWriter(HookBase):
    """log.txt lines and metrics.json rows every ``log_period`` iterations, after the last one and after a stop."""

    def __init__(self, log_period: int) -> None:
        self.log_period = log_period
        self._written = -1

    def after_step(self) -> None:
        t = self.trainer
        t.writer.put(t.losses, lr=t.lr, time=t.step_time, data_time=t.data_time)
        if (t.iter + 1) % self.log_period == 0 or t.iter == t.max_iter - 1:
            self._write()

    def after_train(self) -> None:
        if self.trainer.interrupted and self._written != self.trainer.iter:  # the steps before the stop count too
            self._write()

    def _write(self) -> None:
        self.trainer.writer.write(self.trainer.iter)
        self._written = self.trainer.iter


class PreciseBN(HookBase):
    """BatchNorm statistics recomputed on training batches before each evaluation and before the final save."""

    def __init__(self, eval_period: int) -> None:
        self.eval_period = eval_period

    def after_step(self) -> None:
        if _at_period(self.trainer, self.eval_period):
            self.trainer.precise_bn(self.trainer.iter)

    def after_train(self) -> None:
        if self.trainer.trained_to_the_end:
            self.trainer.precise_bn(self.trainer.max_iter - 1)


class PeriodicCheckpointer(HookBase):
    """``model_{iter:07d}.pth`` every SOLVER.CHECKPOINT_PERIOD; model_final.pth (and its detectron2 copy) at the
    end."""

    def __init__(self, period: int, export_detectron2: bool) -> None:
        self.period, self.export_detectron2 = period, export_detectron2

    def after_step(self) -> None:
        if _at_period(self.trainer, self.period):
            self.trainer.save(periodic_name(self.trainer.iter), self.trainer.iter)

    def after_train(self) -> None:
        t = self.trainer
        if t.trained_to_the_end:
            t.final_checkpoint = t.save(FINAL_NAME, t.max_iter - 1)
            if self.export_detectron2:
                t.detectron2_checkpoint = t.checkpointer.export_detectron2(FINAL_NAME)
        elif t.rank == 0 and not t.interrupted:  # resumed a finished run: its final checkpoint is there
            t.final_checkpoint = t.output_dir / f"{FINAL_NAME}.pth"
        comm.barrier()


class EvalHook(HookBase):
    """COCO evaluation every TEST.EVAL_PERIOD and, unless switched off, after training."""

    def __init__(self, period: int, at_end: bool) -> None:
        self.period, self.at_end = period, at_end

    def after_step(self) -> None:
        if _at_period(self.trainer, self.period):
            self.trainer.evaluate(self.trainer.iter)

    def after_train(self) -> None:
        if self.at_end and not self.trainer.interrupted:
            self.trainer.evaluation = self.trainer.evaluate(self.trainer.max_iter - 1)


class TensorboardWriter(HookBase):
    """TensorBoard event files in OUTPUT_DIR (losses and lr every ``log_period`` iterations, AP after each
    evaluation), rank 0, when the ``tensorboard`` package is installed (``pip install 'pycontrast-det[tensorboard]'``);
    ``tensorboard --logdir OUTPUT_DIR`` shows them."""

    def __init__(self, log_period: int) -> None:
        self.log_period = log_period
        self._writer: Optional[object] = None
        self._evaluated = -1

    @staticmethod
    def available() -> bool:
        import importlib.util

        return importlib.util.find_spec("tensorboard") is not None

    def before_train(self) -> None:
        if self.trainer.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.trainer.output_dir))

    def after_step(self) -> None:
        t = self.trainer
        writer = self._writer
        if writer is None:
            return
        if (t.iter + 1) % self.log_period == 0 or t.iter == t.max_iter - 1:
            for name, value in t.losses.items():
                writer.add_scalar(name, value, t.iter)  # type: ignore[attr-defined]
            writer.add_scalar("lr", t.lr, t.iter)  # type: ignore[attr-defined]
        self._write_eval()

    def after_train(self) -> None:
        self._write_eval()
        if self._writer is not None:
            self._writer.close()  # type: ignore[attr-defined]

    def _write_eval(self) -> None:
        t = self.trainer
        if self._writer is None or t.latest_eval is None or t.latest_eval[0] == self._evaluated:
            return
        self._evaluated, metrics = t.latest_eval
        for task, values in metrics.items():
            for name, value in values.items():
                if value == value:  # NaN: COCO could not compute it
                    self._writer.add_scalar(f"{task}/{name}", value, self._evaluated)  # type: ignore[attr-defined]


class Preemption(HookBase):
    """Stop after the step when a preemption signal or Ctrl-C arrived on any process, with a checkpoint."""

    def after_step(self) -> None:
        t = self.trainer
        if t.iter >= t.max_iter - 1 or not comm.any_process(preempt.requested()):
            return
        if t.saved_iter != t.iter:
            t.save(periodic_name(t.iter), t.iter)
        name = preempt.received() or "a signal"
        t.logger.warning(f"{name}: stopped after iteration {t.iter} with a checkpoint; --resume goes on from "
                         f"iteration {t.iter + 1}")
        preempt.mark_stopped()
        t.interrupted = name


class Timer(HookBase):
    """The wall time of the training loop (``trainer.seconds``)."""

    def before_train(self) -> None:
        self._started = time.perf_counter()

    def after_train(self) -> None:
        self.trainer.seconds = time.perf_counter() - self._started


__all__ = ["EvalHook", "HookBase", "PeriodicCheckpointer", "PeriodicWriter", "Preemption", "PreciseBN",
           "TensorboardWriter", "Timer"]
