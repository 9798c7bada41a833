"""The package's surface: every public name resolves, and importing it (or listing the zoo) stays torch-free."""
from __future__ import annotations

import subprocess
import sys

import pycontrast_det
from pycontrast_det.cli import build_parser

from conftest import REPO_ROOT


def test_every_public_name_resolves() -> None:
    for name in pycontrast_det.__all__:
        assert getattr(pycontrast_det, name) is not None, name


def test_import_does_not_import_torch() -> None:
    code = "import sys, pycontrast_det; pycontrast_det.list_entries(); assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_cli_offers_every_documented_command() -> None:
    choices = set(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001 (argparse has no API)
    readme = (REPO_ROOT / "README.md").read_text()
    documented = {line.split()[1] for line in readme.splitlines() if line.startswith("pycontrast-zoo ")}
    assert documented <= choices
    assert {"list", "info", "download", "verify", "convert", "predict", "evaluate", "reproduce", "pin", "cache",
            "table", "logs", "train"} <= choices


def test_unknown_entry_is_one_line_and_exit_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "pycontrast_det", "info", "mask_rcnn_fpn_2x_infomim"],
                          capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "mask_rcnn_fpn_2x_infomin" in proc.stderr  # did you mean
