"""The build step pyproject.toml cannot say: copy the repository's zoo.yaml and configs/ into the built package
(``pycontrast_det/_shipped``), where ``pycontrast_det.resources`` finds them in an installed wheel. A source checkout
(and an editable install) reads the repository's own files, so there is one copy of each in git."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = ("zoo.yaml", "configs")


class BuildWithShippedData(build_py):
    """build_py, then the shipped data copied into the build's package folder."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "pycontrast_det" / "_shipped"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        shutil.copy2(ROOT / "zoo.yaml", target / "zoo.yaml")
        shutil.copytree(ROOT / "configs", target / "configs", ignore=shutil.ignore_patterns("*.pyc", "__pycache__"))


setup(cmdclass={"build_py": BuildWithShippedData})
