"""The built wheel: zoo.yaml, configs/ and the config defaults inside the package, found with importlib.resources
wherever pip put it (``--target``, ``--prefix``), with no source checkout on the path."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "zoo.yaml", "configs", "pycontrast_det")
ENTRY = "mask_rcnn_fpn_1x_infomin"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built (offline, no build isolation) from a copy of this checkout's sources."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(base / "dist"), str(src)], check=True, timeout=600, capture_output=True)
    (built,) = (base / "dist").glob("pycontrast_det-*.whl")
    return built


def _install(wheel: Path, where: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", *where, str(wheel)],
                   check=True, timeout=600, capture_output=True)


def _run(path: Path, cwd: Path, *args: str) -> str:
    """``python -m pycontrast_det ARGS`` with only ``path`` (and the venv: torch) importable, from ``cwd``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYCONTRAST_ZOO"))}
    env.update(PYTHONPATH=str(path), PYCONTRAST_ZOO_HOME=str(cwd / "home"))
    done = subprocess.run([sys.executable, "-m", "pycontrast_det", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_wheel_holds_the_shipped_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"pycontrast_det/_shipped/zoo.yaml", "pycontrast_det/config_defaults.yaml",
            "pycontrast_det/_shipped/configs/R_50_FPN_1x_infomin.yaml"} <= names
    shipped = {p.name for p in (REPO / "configs").glob("*.yaml")}
    assert {n.rsplit("/", 1)[1] for n in names if n.startswith("pycontrast_det/_shipped/configs/")} == shipped
    assert not any(n.startswith(("share/", "pycontrast_det-0.1.0.data/")) for n in names)


def test_install_with_target_lists_informs_and_plans(wheel, tmp_path):
    target = tmp_path / "target"
    _install(wheel, ["--target", str(target)])
    work = tmp_path / "work"  # no zoo.yaml, no configs/ here or above: only the installed copies can be read
    work.mkdir()
    shipped = target / "pycontrast_det" / "_shipped"
    listed = _run(target, work, "list")
    assert ENTRY in listed and sum(line.startswith("mask_rcnn_") for line in listed.splitlines()) == 22
    info = _run(target, work, "info", ENTRY)
    assert f"manifest: {shipped / 'zoo.yaml'}" in info
    assert str(shipped / "configs" / "R_50_FPN_1x_infomin.yaml") in info
    plan = _run(target, work, "reproduce", ENTRY, "--dry-run")
    assert f"--config {shipped / 'configs' / 'R_50_FPN_1x_infomin.yaml'}" in plan.replace("\\\n      ", "")
    assert not (work / "output").exists() and not (work / "home").exists()


def test_install_with_prefix_finds_its_data(wheel, tmp_path):
    prefix = tmp_path / "prefix"
    _install(wheel, ["--prefix", str(prefix), "--ignore-installed"])  # never uninstall the running environment's copy
    (site,) = prefix.glob("lib/python*/site-packages")
    work = tmp_path / "work"
    work.mkdir()
    assert f"manifest: {site / 'pycontrast_det' / '_shipped' / 'zoo.yaml'}" in _run(site, work, "info", ENTRY)
