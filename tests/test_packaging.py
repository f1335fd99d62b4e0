"""The wheel carries what an installed vlptm needs beyond its modules: extractor variants and recipes."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out)], check=True, cwd=out)
    (path,) = out.glob("vlptm-*.whl")
    return path


def test_wheel_bundles_every_detector_variant_and_recipe(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"vlptm/_bundled/{p.relative_to(REPO).as_posix()}"
                for folder in ("detectors", "configs") for p in (REPO / folder).rglob("*.yaml")}
    assert expected and expected <= names, sorted(expected - names)
    assert "vlptm/serve/static/index.html" in names


def test_installed_copy_finds_variants_and_demo_recipe_without_a_checkout(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    script = (
        "import vlptm, vlptm.resources as r\n"
        "from vlptm.detection.extractor import VARIANTS_DIR, variant_config\n"
        "from vlptm.commands import demo\n"
        f"assert vlptm.__file__.startswith({str(tmp_path)!r}), vlptm.__file__\n"
        "assert VARIANTS_DIR == r.resource_dir('detectors') and '_bundled' in str(VARIANTS_DIR)\n"
        "variant_config('grid-effnet-lite0')\n"
        "assert demo._RECIPE.is_file(), demo._RECIPE\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env={"PYTHONPATH": str(tmp_path / "site"), "PATH": ""},
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
