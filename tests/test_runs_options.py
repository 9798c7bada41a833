"""Run options and the trainer's hooks (issue 21): Ctrl-C saves a checkpoint and ``--resume`` continues
bit-identically, a shortened schedule scales its warmup and prints its final lr, the SLURM dry run says the
real process count with one ``--launcher``, a refused start prints no path of a removed folder, user hooks."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from pycontrast_det.cli import main
from pycontrast_det.engine import RunOptions, train
from pycontrast_det.engine.checkpoint import load_training_checkpoint
from pycontrast_det.engine.hooks import HookBase
from pycontrast_det.errors import ConfigError
from pycontrast_det.recipes import plan_reproduction

from test_train import tiny_cfg, two_images  # noqa: F401  (a fixture)


class _Recorder(HookBase):
    """Records the calls it gets; sends this process SIGINT (a Ctrl-C) after ``interrupt_after``."""

    def __init__(self, interrupt_after: int = -1) -> None:
        self.calls: list[str] = []
        self.interrupt_after = interrupt_after

    def before_train(self) -> None:
        self.calls.append(f"before_train {self.trainer.start_iter}")

    def after_step(self) -> None:
        self.calls.append(f"after_step {self.trainer.iter}")
        if self.trainer.iter == self.interrupt_after:
            os.kill(os.getpid(), signal.SIGINT)

    def after_train(self) -> None:
        self.calls.append("after_train")


def test_ctrl_c_saves_a_checkpoint_and_resume_is_bit_identical(two_images, tmp_path):  # noqa: F811
    cfg = tiny_cfg(two_images, "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(3,)", "SOLVER.CHECKPOINT_PERIOD", "0",
                   "DATASETS.TEST", "()")
    train(cfg, RunOptions(output_dir=tmp_path / "whole"), log_period=1)
    _check_tensorboard_events(tmp_path / "whole", steps=[0, 1, 2, 3])
    hook = _Recorder(interrupt_after=0)  # seen by the preemption hook at the next step (user hooks run last)
    stopped = train(cfg, RunOptions(output_dir=tmp_path / "cut"), log_period=1, hooks=[hook])
    assert stopped.interrupted and stopped.final_checkpoint is None
    assert hook.calls == ["before_train 0", "after_step 0", "after_step 1", "after_train"]
    assert load_training_checkpoint(tmp_path / "cut" / "model_0000001.pth")["iteration"] == 1
    assert "SIGINT: stopped after iteration 1" in (tmp_path / "cut" / "log.txt").read_text()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored after the run
    resumed = train(cfg, RunOptions(output_dir=tmp_path / "cut", resume=True), log_period=1)
    assert resumed.start_iter == 2 and not resumed.interrupted
    a, b = (load_training_checkpoint(p / "model_final.pth")["model"] for p in (tmp_path / "whole", tmp_path / "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _TwoCtrlC(HookBase):
    def after_step(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)


def test_a_second_ctrl_c_stops_at_once(two_images, tmp_path):  # noqa: F811
    cfg = tiny_cfg(two_images, "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "0", "DATASETS.TEST", "()")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, RunOptions(output_dir=tmp_path / "o"), hooks=[_TwoCtrlC()])
    assert not list((tmp_path / "o").glob("model_*.pth"))  # nothing saved
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _check_tensorboard_events(folder: Path, steps: list[int]) -> None:
    """The TensorBoard hook wrote the losses and the lr of every logged iteration (tensorboard: the test extra)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    assert {"total_loss", "loss_cls", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("total_loss")] == steps
    assert events.Scalars("lr")[0].value == pytest.approx(0.02 * 0.001)  # the first warmup step


def test_ctrl_c_in_the_train_command_exits_130(two_images, tmp_path, monkeypatch, capsys):  # noqa: F811
    from pycontrast_det.engine.train import Trainer

    real = Trainer.step

    def step(self, model, batch, iteration):
        losses = real(self, model, batch, iteration)
        if iteration == 0:
            os.kill(os.getpid(), signal.SIGINT)
        return losses

    monkeypatch.setattr(Trainer, "step", step)
    from test_train import TINY

    out = tmp_path / "o"
    code = main(["train", "--config", "R_50_FPN_1x_rand", "--output", str(out), *TINY, "DATASETS.TRAIN",
                 f"('{two_images}',)", "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "0"])
    assert code == 130
    assert "--resume goes on from iteration 1" in capsys.readouterr().err
    assert (out / "last_checkpoint").read_text() == "model_0000000.pth"
    assert " iter: 0 " in (out / "log.txt").read_text()  # the steps before the stop are logged


def test_a_shortened_schedule_scales_its_warmup_and_prints_the_final_lr(capsys):
    plan = plan_reproduction(ENTRY, dataset="shapes", max_iter=10, options=RunOptions(output_dir=Path("unused")))
    solver = plan.config().SOLVER
    assert (solver.MAX_ITER, tuple(solver.STEPS), solver.WARMUP_ITERS) == (10, (7, 9), 2)  # 50 of 240 scaled
    assert "lr:       0.01, warmup 2 iterations, x0.1 at 7, 9; 0.0001 at the last iteration" in plan.header()
    full = plan_reproduction(ENTRY, dataset="shapes", options=RunOptions(output_dir=Path("unused")))
    assert full.config().SOLVER.WARMUP_ITERS == 50
    assert "0.0001 at the last iteration" in full.header()
    with pytest.raises(ConfigError, match="warmup of 1000 iterations is longer than --max-iter 500"):
        plan_reproduction(ENTRY, max_iter=500, options=RunOptions(output_dir=Path("unused")))


ENTRY = "mask_rcnn_fpn_1x_rand"


def test_slurm_dry_run_says_the_process_count_and_one_launcher(tmp_path, capsys):
    pytest.importorskip("submitit")
    out = tmp_path / "o"
    assert main(["reproduce", ENTRY, "--dataset", "shapes", "--launcher", "slurm", "--dry-run", "--nodes", "2",
                 "--gpus-per-node", "8", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "  device:   auto x 8 process(es) x 2 machines" in printed.splitlines()
    task = next(line for line in printed.splitlines() if line.startswith("each task runs: "))
    assert task.count("--launcher") == 1 and task.endswith("--launcher local")
    assert "--kill-on-bad-exit=1" in printed  # srun ends every task when one fails
    assert not out.exists()


def test_a_refused_start_prints_no_path_of_a_removed_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "no_datasets"))
    out = tmp_path / "o"
    assert main(["reproduce", ENTRY, "--output", str(out)]) == 2  # COCO is not there
    printed = capsys.readouterr()
    assert "plan.txt" not in printed.out and "error:" in printed.err
    assert not out.exists()
