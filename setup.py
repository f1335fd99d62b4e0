"""Build hook: ship the top-level ``detectors/`` and ``configs/`` recipes inside the package.

They live at the top of the repository (where users of a source checkout edit them) and are copied into
``vlptm/_bundled/`` of the build, so an installed wheel finds the extractor variants (``vlptm extract
--extractor NAME``) and the demo's pretraining recipe too (see :mod:`vlptm.resources`). Everything else is
in ``setup.cfg``.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUNDLED = ("detectors", "configs")


class BuildPyWithRecipes(build_py):
    def run(self) -> None:
        super().run()
        for name in BUNDLED:
            target = Path(self.build_lib) / "vlptm" / "_bundled" / name
            if target.exists():
                shutil.rmtree(target)
            for source in sorted((ROOT / name).rglob("*.yaml")):
                destination = target / source.relative_to(ROOT / name)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, destination)


setup(cmdclass={"build_py": BuildPyWithRecipes})
