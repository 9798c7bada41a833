"""Two CPU ranks on gloo through every launcher (local ``--num-gpus 2``, torchrun, submitit-local): ``reproduce``,
``reproduce --seeds 2`` and ``finetune`` each end with one output folder and the same final weights on every
launcher; a rank that raises ends the job within seconds with a non-zero exit and that rank's error; with
``--num-machines 2`` machine 0 alone writes the folder (issue 21)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pycontrast_det.engine.checkpoint import load_training_checkpoint

pytest.importorskip("submitit", reason="needs submitit, installed by the test extra: pip install -e '.[test]'")

from test_train import make_two_image_dataset  # noqa: E402

TESTS = Path(__file__).resolve().parent
ENTRY = "mask_rcnn_fpn_1x_rand"
LAUNCHERS = ("local", "torchrun", "submitit-local")
# the shapes protocol shrunk: 64 px images, stem and res2 frozen, no PreciseBN, evaluated on two val images
TINY = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "100", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "100", "MODEL.BACKBONE.FREEZE_AT", "2", "TEST.PRECISE_BN.ENABLED", "False",
        "TEST.DETECTIONS_PER_IMAGE", "10", "MODEL.RPN.POST_NMS_TOPK_TEST", "50"]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), str(TESTS), env.get("PYTHONPATH", "")])
    return env


def _command(launcher: str, argv: list[str], script: str = "") -> list[str]:
    """``pycontrast-zoo ARGV`` with two CPU ranks through ``launcher`` (``script``: a file run instead of the CLI)."""
    program = [script] if script else ["-m", "pycontrast_det"]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                *(program if script else ["-m", "pycontrast_det"]), *argv, "--device", "cpu"]
    ranks = ["--num-gpus", "2"] if launcher == "local" else ["--launcher", "submitit-local", "--gpus-per-node", "2"]
    return [sys.executable, *program, *argv, "--device", "cpu", *ranks]


def _run(launcher: str, argv: list[str], cwd: Path, script: str = "", timeout: float = 300
         ) -> subprocess.CompletedProcess:
    return subprocess.run(_command(launcher, argv, script), cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _printed(launcher: str, proc: subprocess.CompletedProcess, folder: Path) -> str:
    """What the command printed: with submitit-local, what task 0 (global rank 0) printed into its log too."""
    if launcher != "submitit-local":
        return proc.stdout
    return proc.stdout + "".join(p.read_text() for p in (folder / "slurm").glob("*/*_0_log.out"))


def _final(folder: Path) -> dict:
    return load_training_checkpoint(folder / "model_final.pth")["model"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_two_image_dataset(tmp_path_factory.mktemp("data") / "two", val=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data):
    """``runs(launcher)``: ``reproduce`` (local: ``--seeds 2``) and ``finetune`` of its result through ``launcher``,
    each in a folder of its own; run once per launcher, when first asked for."""
    root = tmp_path_factory.mktemp("launchers")
    done: dict = {}

    def run(launcher: str):
        if launcher not in done:
            work = root / launcher
            work.mkdir()
            seeds = ["--seeds", "2"] if launcher == "local" else []
            started = time.monotonic()
            rep = _run(launcher, ["reproduce", ENTRY, "--dataset", "shapes", "--max-iter", "2", "--output", "rep",
                                  *seeds, *TINY, "DATASETS.TEST", f"('{data}',)"], work)
            source = work / "rep" / ("seed_1" if seeds else "") / "model_final.pth"
            fin = _run(launcher, ["finetune", str(source), "--dataset", str(data), "--schedule", "2", "--output",
                                  "fin", *TINY], work)
            done[launcher] = (work, rep, fin, time.monotonic() - started)
        return done[launcher]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_reproduce_and_finetune_finish_with_one_folder(runs, launcher):
    work, rep, fin, _ = runs(launcher)
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert fin.returncode == 0, fin.stderr[-3000:]
    assert sorted(p.name for p in work.iterdir()) == ["fin", "rep"]  # nothing else created
    printed = _printed(launcher, rep, work / "rep")
    header = [line for line in printed.splitlines() if line.startswith(f"reproduce {ENTRY}")]
    assert len(header) == 1, printed  # printed by global rank 0 only
    assert "  device:   cpu x 2 process(es)" in printed.splitlines()
    assert printed.count("published: box AP") == 1
    run = work / "rep" / ("seed_1" if launcher == "local" else "")
    assert load_training_checkpoint(run / "model_final.pth")["iteration"] == 1
    assert "Training on shapes_train (2 process(es)" in (run / "log.txt").read_text()
    assert not list(run.glob("log.txt.rank*"))  # one log
    assert "fine-tuned to iteration 2" in _printed(launcher, fin, work / "fin")
    if launcher == "submitit-local":
        assert sorted(p.name for p in (work / "rep" / "slurm").iterdir()) == [rep.stdout.split()[2]]  # the job
    assert load_training_checkpoint(work / "fin" / "model_final.pth")["iteration"] == 1


@pytest.mark.slow
def test_every_launcher_gives_the_same_weights(runs):
    """The same command with the same seed and two ranks gives the same bits, whichever launcher started them."""
    done = {launcher: runs(launcher) for launcher in LAUNCHERS}
    if not all(r[1].returncode == 0 and r[2].returncode == 0 for r in done.values()):
        pytest.fail("a launcher run failed: " + "; ".join(f"{k}: {r[1].stderr[-500:]}{r[2].stderr[-500:]}"
                                                          for k, r in done.items()))
    local = done["local"][0]
    seed_1, seed_2 = _final(local / "rep" / "seed_1"), _final(local / "rep" / "seed_2")
    assert not _same(seed_1, seed_2)
    finetuned = _final(local / "fin")
    for launcher in LAUNCHERS[1:]:
        work = done[launcher][0]
        assert _same(_final(work / "rep"), seed_1), launcher
        assert _same(_final(work / "fin"), finetuned), launcher
    print({k: f"{r[3]:.0f} s" for k, r in done.items()})


@pytest.mark.slow
def test_seeds_print_their_table_once_and_keep_only_the_final_weights(runs):
    work, rep, _, _ = runs("local")
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert rep.stdout.count("mean ± std") == 1 and rep.stdout.count("published: box AP") == 1
    assert rep.stdout.count("box AP") == 3  # the header's published row, the comparison, the seed table
    for seed in (1, 2):
        run = work / "rep" / f"seed_{seed}"
        assert sorted(p.name for p in run.glob("*.pth")) == ["model_final.pth"]
    assert json.loads((work / "rep" / "seeds.json").read_text())["seeds"] == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_failing_rank_ends_the_job_with_its_error(launcher, data, tmp_path):
    """Rank 1 raises at its second step: the job ends within 60 s of it, exits non-zero and shows rank 1's error
    once; rank 0 waits for nothing."""
    proc = _run(launcher, ["train", "--config", "R_50_FPN_1x_rand", "--output", "out", *TINY,
                           "DATASETS.TRAIN", f"('{data}',)", "DATASETS.TEST", "()", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
                           "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(3,)"],
                tmp_path, script=str(TESTS / "runs_faults.py"), timeout=300)
    elapsed = time.time() - float((tmp_path / "raised_at").read_text())  # from rank 1's error to the job's end
    assert proc.returncode != 0 and elapsed < 60, (proc.returncode, elapsed, proc.stderr[-3000:])
    shown = [line for line in proc.stderr.splitlines() if "error:" in line and "injected failure on rank 1" in line]
    assert len(shown) == 1 and "rank 1" in shown[0], proc.stderr[-3000:]


@pytest.mark.slow
def test_two_machines_one_folder_written_by_machine_0(data, tmp_path):
    """``--num-machines 2`` (both "machines" here, one process each): machine 0 alone claims, writes and prints;
    machine 1 joins, trains and prints nothing. (The weights differ in the last bits from the two-process runs
    above: one process per machine computes with both cores' threads.)"""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    argv = ["reproduce", ENTRY, "--dataset", "shapes", "--max-iter", "2", "--output", "rep", *TINY,
            "DATASETS.TEST", f"('{data}',)", "--device", "cpu", "--num-machines", "2", "--dist-url", url]
    procs = [subprocess.Popen([sys.executable, "-m", "pycontrast_det", *argv, "--machine-rank", str(rank)],
                              cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    (out0, err0), (out1, err1) = (p.communicate(timeout=300) for p in procs)
    assert [p.returncode for p in procs] == [0, 0], err0[-2000:] + err1[-2000:]
    assert out0.count(f"reproduce {ENTRY}") == 1 and "box AP" in out0 and out1 == ""
    assert "  device:   cpu x 1 process(es) x 2 machines" in out0.splitlines()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]
    assert load_training_checkpoint(tmp_path / "rep" / "model_final.pth")["iteration"] == 1
    assert "Training on shapes_train (2 process(es)" in (tmp_path / "rep" / "log.txt").read_text()
