"""Shared test settings: where detectron2's reference fixtures live (one setting, never copied in)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Under pytest-xdist, split the cores between the workers (set before torch is imported): two workers
# each running two OpenMP threads on two cores spend their time waiting for each other.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))
    os.environ.setdefault("MKL_NUM_THREADS", str(_share))


def fixtures_dir() -> Path:
    """``PYCONTRAST_FIXTURES``, else ``../shared/fixtures`` beside the checkout."""
    return Path(os.environ.get("PYCONTRAST_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures")).resolve()


@pytest.fixture(scope="session")
def d2_fixtures() -> Path:
    """The detectron2 parity fixtures folder; a test that needs it fails loudly if it is absent."""
    path = fixtures_dir() / "d2-parity"
    if not path.is_dir():
        pytest.fail(f"detectron2 fixtures not found at {path}; set PYCONTRAST_FIXTURES")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own cache root and no user manifest, so tests never touch ~/.cache."""
    home = tmp_path_factory.mktemp("zoo-home")
    monkeypatch.setenv("PYCONTRAST_ZOO_HOME", str(home))
    monkeypatch.delenv("PYCONTRAST_ZOO_MANIFEST", raising=False)
    monkeypatch.delenv("PYCONTRAST_ZOO_ENDPOINT", raising=False)
    monkeypatch.delenv("PYCONTRAST_ZOO_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield home
