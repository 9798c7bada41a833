"""SLURM through submitit: the exact submission (--dry-run), the errors, and a real submitit-local job of two CPU
ranks on gloo that is preempted (SIGTERM), checkpoints, requeues itself with --resume and finishes."""
from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from pycontrast_det.cli import main
from pycontrast_det.engine.checkpoint import load_training_checkpoint
from pycontrast_det.recipes.slurm import parse_slurm_args, parse_time, with_resume
from pycontrast_det.errors import ConfigError

submitit = pytest.importorskip("submitit",
                               reason="needs submitit, installed by the test extra: pip install -e '.[test]'")

from test_train import TINY, make_two_image_dataset  # noqa: E402  (after the skip: it imports torch models)


def test_slurm_dry_run_prints_the_exact_submission(tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["train", "--config", "R_50_FPN_1x_rand", "--launcher", "slurm", "--dry-run", "--nodes", "2",
            "--gpus-per-node", "8", "--partition", "gpu", "--time", "04:30", "--slurm-args",
            "account=proj,cpus-per-task=10", "--slurm-args", "qos=high", "--output", str(out), "SOLVER.BASE_LR", "0.01"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=gpu", "#SBATCH --time=270", "#SBATCH --signal=USR2@120",
                 "#SBATCH --account=proj", "#SBATCH --cpus-per-task=10", "#SBATCH --qos=high",
                 "#SBATCH --job-name=R_50_FPN_1x_rand", f"#SBATCH --output={out.resolve()}/slurm/%j/%j_0_log.out"):
        assert line in printed.splitlines(), line
    srun = next(line for line in printed.splitlines() if line.startswith("srun "))
    assert srun.endswith(f"{sys.executable} -u -m submitit.core._submit {out.resolve()}/slurm/%j")
    task = next(line for line in printed.splitlines() if line.startswith("each task runs: "))
    assert task.endswith("--output " + str(out) + " SOLVER.BASE_LR 0.01 --launcher local") and "--dry-run" not in task
    assert "--resume --launcher local" in printed
    assert not out.exists()  # nothing written, nothing submitted
    # CPU processes ask for no GPUs; the reproduce command prints its plan too
    assert main(["reproduce", "mask_rcnn_fpn_1x_rand", "--dataset", "shapes", "--launcher", "slurm", "--dry-run",
                 "--device", "cpu", "--gpus-per-node", "2", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "commands:" in printed and "#SBATCH --ntasks-per-node=2" in printed and "#SBATCH --gpus" not in printed


def test_launcher_options_and_errors(tmp_path, capsys, monkeypatch):
    assert (parse_time("04:30"), parse_time("1-00:00"), parse_time("90")) == (270, 1440, 90)
    with pytest.raises(ConfigError, match="--time '4h'"):
        parse_time("4h")
    assert parse_slurm_args(["--account=a, qos=b", "constraint=volta32gb"]) == {
        "account": "a", "qos": "b", "constraint": "volta32gb"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_slurm_args(["account"])
    assert with_resume(["train", "--overwrite", "X", "1"]) == ["train", "X", "1", "--resume"]
    base = ["train", "--config", "R_50_FPN_1x_rand", "--output", str(tmp_path / "o")]
    assert main(base + ["--dry-run"]) == 0  # the local launcher: what would run, nothing run
    assert "nothing was run" in capsys.readouterr().out and not (tmp_path / "o").exists()
    assert main(["reproduce", "mask_rcnn_fpn_1x_rand", "--engine", "detectron2", "--launcher", "slurm"]) == 2
    assert "runs the native engine" in capsys.readouterr().err
    assert main(base + ["--launcher", "slurm", "--dry-run", "--time", "soon"]) == 2
    assert "--time 'soon'" in capsys.readouterr().err
    if shutil.which("srun") is None:  # this machine has no SLURM: a clear error, nothing submitted
        assert main(base + ["--launcher", "slurm"]) == 2
        assert "srun" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if submitit were not installed
    assert main(base + ["--launcher", "slurm", "--dry-run"]) == 2
    assert "pip install 'pycontrast-det[slurm]'" in capsys.readouterr().err


def _controller_pid(folder: Path, timeout: float) -> int:
    """The local job's id (its controller's pid): the name of the folder submitit creates for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [p for p in folder.glob("*") if p.is_dir() and p.name.isdigit()]
        if jobs:
            return int(jobs[0].name)
        time.sleep(0.2)
    pytest.fail(f"no submitit job folder appeared in {folder}")


def _wait_for(path: Path, thread: threading.Thread, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail(f"{path} never appeared")
        time.sleep(0.2)


@pytest.mark.slow
def test_submitit_local_two_ranks_preempted_requeued_and_resumed(tmp_path, capsys):
    """``train --launcher submitit-local`` with two CPU ranks; SIGTERM (what SLURM sends on preemption) after the
    first checkpoint: the ranks stop together, rank 0 saves a checkpoint, the job requeues itself with --resume
    and finishes from that checkpoint."""
    data = make_two_image_dataset(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["train", "--config", "R_50_FPN_1x_rand", "--output", str(out), "--device", "cpu",
            "--launcher", "submitit-local", "--gpus-per-node", "2", "--time", "20", *TINY,
            "DATASETS.TRAIN", f"('{data}',)", "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "6",
            "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.STEPS", "(5,)"]
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(main(argv)), daemon=True)
    thread.start()
    pid = _controller_pid(out / "slurm", timeout=60)
    try:
        _wait_for(out / "model_0000001.pth", thread, timeout=240)
        os.kill(pid, signal.SIGTERM)  # the controller forwards it to both tasks, as SLURM signals every task
        thread.join(timeout=400)
    finally:
        if thread.is_alive():  # stop the job we started (submitit's cancel: SIGINT to its controller)
            os.kill(pid, signal.SIGINT)
            thread.join(timeout=30)
    assert codes == [0]
    printed = capsys.readouterr().out
    assert f"submitted job {pid} (submitit-local: 1 node(s) x 2 task(s)); log: " in printed
    assert f"job {pid} finished with exit code 0" in printed
    log = (out / "log.txt").read_text()
    stop = next(line for line in log.splitlines() if "SIGTERM: stopped after iteration" in line)
    stopped_at = int(stop.split("stopped after iteration ")[1].split()[0])
    assert 1 <= stopped_at < 5
    assert f"Resuming from {out / f'model_{stopped_at:07d}.pth'} at iteration {stopped_at + 1}" in log
    assert log.count("Training on data_train (2 process(es)") == 2  # the first run and the requeued one
    final = load_training_checkpoint(out / "model_final.pth")
    assert final["iteration"] == 5
    task0 = (out / "slurm" / str(pid) / f"{pid}_0_log.out").read_text()
    assert "Requeued job" in task0
