"""detectron2 log.txt / metrics.json parsing, the curves plot, and the ``logs`` command."""
from __future__ import annotations

import json
import logging
import math
import textwrap

import pytest
from PIL import Image

from pycontrast_det.cli import main
from pycontrast_det.reports import parse_log, plot_curves
from pycontrast_det.errors import LogFormatError

# Written in the format of detectron2's log.txt of June 2020 (PyContrast's published logs), including a
# resumed run (iteration 39 logged twice: the later value counts), a coloured line and the final evaluation.
LOG_TXT = textwrap.dedent("""\
    [06/14 10:00:01 detectron2]: Rank of current process: 0. World size: 8
    [06/14 10:00:05 d2.engine.train_loop]: Starting training from iteration 0
    [06/14 10:00:30 d2.utils.events]:  eta: 11:08:46  iter: 19  total_loss: 2.136  loss_cls: 0.6245  loss_box_reg: 0.0612  loss_mask: 0.6931  loss_rpn_cls: 0.6102  loss_rpn_loc: 0.1441  time: 0.4357  data_time: 0.0112  lr: 0.000400  max_mem: 2989M
    [06/14 10:00:39 d2.utils.events]:  eta: 1 day, 2:03:04  iter: 39  total_loss: 1.987  loss_cls: 0.5512  loss_box_reg: 0.0934  loss_mask: 0.6844  loss_rpn_cls: 0.5201  loss_rpn_loc: 0.1382  time: 0.4401  data_time: 0.0098  lr: 0.000799  max_mem: 3120M
    [06/14 10:05:00 d2.engine.train_loop]: Starting training from iteration 20
    \x1b[32m[06/14 10:05:10 d2.utils.events]: \x1b[0m eta: 11:07:01  iter: 39  total_loss: 1.95  loss_cls: 0.54  loss_box_reg: 0.09  loss_mask: 0.68  loss_rpn_cls: 0.51  loss_rpn_loc: 0.13  time: 0.4400  data_time: 0.0100  lr: 0.000799  max_mem: 3120M
    [06/14 21:59:50 d2.utils.events]:  eta: 0:00:00  iter: 89999  total_loss: 0.5123  loss_cls: 0.1301  loss_box_reg: 0.1822  loss_mask: 0.1712  loss_rpn_cls: 0.0101  loss_rpn_loc: 0.0187  time: 0.4456  data_time: 0.0087  lr: 0.000200  max_mem: 5012M
    [06/14 22:00:00 d2.engine.hooks]: Overall training speed: 89998 iterations in 11:08:46 (0.4457 s / it)
    [06/14 22:10:00 d2.evaluation.coco_evaluation]: Evaluation results for bbox:
    |   AP   |  AP50  |  AP75  |  APs   |  APm   |  APl   |
    |:------:|:------:|:------:|:------:|:------:|:------:|
    | 40.612 | 60.301 | 44.215 | 24.112 | 43.921 | 52.803 |
    [06/14 22:10:00 d2.evaluation.testing]: copypaste: Task: bbox
    [06/14 22:10:00 d2.evaluation.testing]: copypaste: AP,AP50,AP75,APs,APm,APl
    [06/14 22:10:00 d2.evaluation.testing]: copypaste: 40.6123,60.3011,44.2150,24.1120,43.9210,52.8030
    [06/14 22:10:00 d2.evaluation.testing]: copypaste: Task: segm
    [06/14 22:10:00 d2.evaluation.testing]: copypaste: AP,AP50,AP75,APs,APm,APl
    [06/14 22:10:00 d2.evaluation.testing]: copypaste: 36.7012,57.6402,39.2310,nan,39.4400,53.3012
    """)

METRICS_JSON = "\n".join(json.dumps(row) for row in [
    {"data_time": 0.01, "eta_seconds": 100.0, "fast_rcnn/cls_accuracy": 0.8, "iteration": 19, "loss_box_reg": 0.2,
     "loss_cls": 0.7, "loss_mask": 0.69, "loss_rpn_cls": 0.6, "loss_rpn_loc": 0.1, "lr": 0.0004, "total_loss": 2.29},
    {"iteration": 39, "loss_box_reg": 0.2, "loss_cls": 0.5, "lr": 0.0008, "total_loss": 1.5},
    {"bbox/AP": 12.5, "bbox/AP50": 30.0, "bbox/AP-circle": 20.0, "iteration": 39, "segm/AP": 11.0},
]) + "\n"


def test_log_txt(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text(LOG_TXT)
    summary = parse_log(path)
    assert [p.iteration for p in summary.losses] == [19, 39, 89999]
    assert [p.total_loss for p in summary.losses] == [2.136, 1.95, 0.5123]  # the resumed value of 39
    first = summary.losses[0]
    assert first.losses == {"loss_cls": 0.6245, "loss_box_reg": 0.0612, "loss_mask": 0.6931,
                            "loss_rpn_cls": 0.6102, "loss_rpn_loc": 0.1441}
    assert first.lr == 0.0004 and summary.last_iteration == 89999
    assert summary.final_bbox_ap == 40.6123 and summary.final_segm_ap == 36.7012
    assert summary.final("bbox") == {"AP": 40.6123, "AP50": 60.3011, "AP75": 44.215, "APs": 24.112, "APm": 43.921,
                                     "APl": 52.803}
    assert math.isnan(summary.final("segm")["APs"])
    assert summary.evals[0][0] == 89999 and len(summary.evals) == 1
    assert summary.loss_at(30).iteration == 39 and summary.label == "log.txt"


def test_metrics_json(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(METRICS_JSON)
    summary = parse_log(path, label="ours")
    assert [(p.iteration, p.total_loss, p.lr) for p in summary.losses] == [(19, 2.29, 0.0004), (39, 1.5, 0.0008)]
    assert summary.losses[0].losses["loss_rpn_loc"] == 0.1 and "fast_rcnn/cls_accuracy" not in summary.losses[0].losses
    assert summary.evals == [(39, {"bbox": {"AP": 12.5, "AP50": 30.0, "AP-circle": 20.0}, "segm": {"AP": 11.0}})]
    assert summary.final_bbox_ap == 12.5 and summary.label == "ours"
    assert parse_log(tmp_path).source == path  # a run folder: its metrics.json


def test_our_trainer_files_parse(tmp_path):
    """What our trainer's writer produces (log.txt and metrics.json) reads back the same way."""
    from pycontrast_det.utils.events import MetricsWriter, setup_logger

    logger = setup_logger(tmp_path, rank=0, name="test_logs_writer")
    writer = MetricsWriter(logger, tmp_path, max_iter=4, window=2)
    for it in range(4):
        writer.put({"total_loss": 3.0 - it, "loss_cls": 1.0 - it / 4}, lr=0.01 * (it + 1), time=0.1, data_time=0.01)
        if it % 2 == 1:
            writer.write(it)
    writer.write_eval(3, {"bbox": {"AP": 1.25, "AP50": 5.5}, "segm": {"AP": 0.75, "AP50": 2.0}})
    for handler in logger.handlers:
        handler.flush()
    for name in ("log.txt", "metrics.json"):
        summary = parse_log(tmp_path / name)
        assert [p.iteration for p in summary.losses] == [1, 3], name
        assert summary.losses[-1].lr == pytest.approx(0.04), name
        assert summary.final("bbox") == {"AP": 1.25, "AP50": 5.5} and summary.final_segm_ap == 0.75, name
    logging.getLogger("test_logs_writer").handlers.clear()


def test_bad_logs(tmp_path):
    with pytest.raises(LogFormatError, match="log file not found: .*nope.txt"):
        parse_log(tmp_path / "nope.txt")
    with pytest.raises(LogFormatError, match="log file not found: .*metrics.json"):
        parse_log(tmp_path)
    html = tmp_path / "page.txt"
    html.write_text("<!DOCTYPE html><html><body>quota exceeded</body></html>\n")
    with pytest.raises(LogFormatError, match="page.txt: no training iterations or evaluation results"):
        parse_log(html)
    broken = tmp_path / "metrics.json"
    broken.write_text('{"iteration": 1, "total_loss": 1.0}\n{"iteration": 2, "total_\n')
    with pytest.raises(LogFormatError, match="metrics.json:2: not a JSON object"):
        parse_log(broken)
    short = tmp_path / "short.txt"
    short.write_text("[x d2.evaluation.testing]: copypaste: Task: bbox\n"
                     "[x d2.evaluation.testing]: copypaste: AP,AP50\n[x d2.evaluation.testing]: copypaste: 1.0\n")
    with pytest.raises(LogFormatError, match="do not match the header"):
        parse_log(short)


def _legends(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]


def test_plot_curves_writes_png_with_each_curve_labelled_by_source(tmp_path):
    from pycontrast_det.reports.curves import curves_figure

    (tmp_path / "log.txt").write_text(LOG_TXT)
    (tmp_path / "metrics.json").write_text(METRICS_JSON)
    ours, published = parse_log(tmp_path / "metrics.json", label="ours"), parse_log(tmp_path / "log.txt",
                                                                                 label="published")
    out = plot_curves([ours, published], tmp_path / "plots" / "curves.png", title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as img:
        assert img.size == (1500, 450)
    fig = curves_figure([ours, published])
    labels = _legends(fig)
    assert {"ours: total_loss", "ours: loss_cls", "ours: lr", "ours: box AP", "ours: mask AP",
            "published: total_loss", "published: lr", "published: box AP", "published: mask AP"} <= set(labels)
    assert not any(label.startswith("published: loss_") for label in labels)  # components of the first run only
    # 39 vs 89999 iterations: the published log gets its own iteration axis on each panel
    assert [ax.get_xlabel() for ax in fig.axes[3:]] == ["iteration (published)"] * 3
    alone = curves_figure([ours])
    assert len(alone.axes) == 3 and all(label.startswith("ours: ") for label in _legends(alone))


def test_metrics_files_are_strict_json(tmp_path):
    from pycontrast_det.utils.events import MetricsWriter, setup_logger

    logger = setup_logger(None, rank=0, name="test_logs_strict")
    writer = MetricsWriter(logger, tmp_path, max_iter=1)
    writer.write_eval(0, {"bbox": {"AP": 50.0, "APl": float("nan"), "APs": float("inf")}})
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    row = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in metrics.json"))
    assert row == {"iteration": 0, "bbox/AP": 50.0, "bbox/APl": None, "bbox/APs": None}
    assert parse_log(tmp_path / "metrics.json").final("bbox") == {"AP": 50.0}  # null: not computed
    logging.getLogger("test_logs_strict").handlers.clear()


def _manifest_with_log(tmp_path, log_url: str) -> str:
    """A user manifest (merged over the shipped one) whose 1x InfoMin entry's log comes from ``log_url``."""
    text = textwrap.dedent(f"""\
        schema_version: 1
        merge: true
        entries:
          mask_rcnn_fpn_1x_infomin:
            detector: fpn
            schedule: 1x
            pretrain: infomin
            config: configs/R_50_FPN_1x_infomin.yaml
            box_ap: 40.6
            mask_ap: 36.7
            published: true
            model:  # never fetched here
              urls: ["{log_url.rsplit('/', 2)[0]}/model/model_final.pth"]
              sha256: null
              size_bytes: null
              format: detectron2
            log:
              urls: ["{log_url}"]
              sha256: null
              size_bytes: null
              format: text
        """)
    path = tmp_path / "user.yaml"
    path.write_text(text)
    return str(path)


def test_logs_command_downloads_compares_and_plots(tmp_path, capsys):
    from http_server import FileServer

    ours = tmp_path / "metrics.json"
    ours.write_text(METRICS_JSON)
    with FileServer() as server:
        url = server.add("/s/g78b0awygmmnohd/log.txt", LOG_TXT.encode())
        manifest = _manifest_with_log(tmp_path, url)
        code = main(["--manifest", manifest, "logs", "mask_rcnn_fpn_1x_infomin", "--ours", str(ours),
                     "--plot", str(tmp_path / "cmp.png")])
        again = main(["--manifest", manifest, "logs", "mask_rcnn_fpn_1x_infomin"])
        hits = len(server.requests)
    captured = capsys.readouterr()
    out = captured.out
    assert (code, again, hits) == (0, 0, 1), captured.err  # the second run reads the cached log
    assert "box AP: 40.61 in the log, agrees with the manifest's 40.6" in out
    assert "mask AP: 36.70 in the log, agrees with the manifest's 36.7" in out
    assert "3 loss points, iterations 19..89999; total_loss 2.136 -> 0.512" in out
    assert "box AP: ours 12.50, published 40.61 (-28.11)" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("19 ", "39 "))]
    assert rows == [["19", "2.290", "2.136"], ["39", "1.500", "1.950"]]
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"


def test_logs_command_plots_our_run_alone(tmp_path, capsys, monkeypatch):
    """A run folder needs no published log (offline, empty cache); an entry's --ours run is plotted alone when
    the published log is not at hand."""
    monkeypatch.setenv("PYCONTRAST_ZOO_OFFLINE", "1")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(METRICS_JSON)
    assert main(["logs", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"our run: {run / 'metrics.json'}" in out and f"plot: {run / 'curves.png'}" in out
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["logs", "mask_rcnn_fpn_1x_infomin", "--ours", str(run), "--plot", str(tmp_path / "o.png")]) == 0
    out = capsys.readouterr().out
    assert "published log of mask_rcnn_fpn_1x_infomin: not at hand" in out and "our run alone" in out
    assert (tmp_path / "o.png").is_file()
    assert main(["logs", "mask_rcnn_fpn_1x_infomin"]) == 2  # nothing to show without the published log
    assert "offline" in capsys.readouterr().err.lower()


def test_logs_command_flags_a_log_that_disagrees(tmp_path, capsys):
    log = tmp_path / "log.txt"
    log.write_text(LOG_TXT.replace("40.6123,", "39.1000,"))
    assert main(["logs", "mask_rcnn_fpn_1x_infomin", "--file", str(log)]) == 0
    assert "box AP: 39.10 in the log, DIFFERS from the manifest's 40.6" in capsys.readouterr().out
    assert main(["logs", "mask_rcnn_fpn_1x_infomin", "--file", str(tmp_path / "missing.txt")]) == 2
    assert "log file not found" in capsys.readouterr().err
