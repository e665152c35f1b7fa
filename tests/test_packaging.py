"""The wheel: built from the repository, installed into a fresh virtual environment, used from a
folder that is not the clone (and holds decoy recipes/ and adapters/ packages)."""

import re
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import energy_guidance

ROOT = Path(__file__).resolve().parents[1]
# repository folder -> where the wheel installs it (pyproject.toml's package-dir)
INSTALLED_AS = {
    "energy_guidance": "energy_guidance",
    "adapters": "energy_guidance/adapters",
    "recipes": "energy_guidance/recipes",
}


def _run(*args, cwd, timeout=120) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of what the wheel is made of (so the clone gets no build/ folder), with
    the running environment's setuptools and no network."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    for folder in INSTALLED_AS:
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        out,
        source,
        cwd=tmp_path,
    )
    (wheel,) = out.glob("energy_guidance-*.whl")
    return wheel


@pytest.mark.slow
def test_the_wheel_installs_under_the_namespace_and_its_commands_run_outside_the_clone(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    # Every module of the three folders, under energy_guidance/ and nothing else at the top level.
    for folder, installed in INSTALLED_AS.items():
        for path in (ROOT / folder).rglob("*.py"):
            wanted = f"{installed}/{path.relative_to(ROOT / folder).as_posix()}"
            assert wanted in names, (
                f"{path} is not in the wheel: list its package in pyproject.toml's packages"
            )
    assert "energy_guidance/py.typed" in names
    assert {n.split("/")[0] for n in names} == {"energy_guidance", wheel.name.split("-py3")[0] + ".dist-info"}
    assert any(re.search(r"\.dist-info/licenses/LICENSE$", n) for n in names)

    # A fresh environment holding only the wheel; the heavy dependencies (torch, diffusers, ...)
    # come from the running environment's site-packages, appended after its own.
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    own = Path(_run(python, "-c", purelib, cwd=tmp_path).stdout.strip())
    (own / "parent.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--no-deps",
        "--no-index",
        "-q",
        wheel,
        cwd=tmp_path,
    )

    # A user's folder with its own recipes/ and adapters/ packages shadows nothing.
    user = tmp_path / "user"
    for decoy in ("recipes", "adapters", "critics"):
        (user / decoy).mkdir(parents=True)
        (user / decoy / "__init__.py").write_text("raise ImportError('the decoy was imported')\n")
    code = (
        "import energy_guidance, energy_guidance.recipes.aepo, energy_guidance.adapters, importlib.metadata;"
        "print(energy_guidance.__file__, energy_guidance.recipes.aepo.__file__,"
        " energy_guidance.adapters.__file__);"
        "print(energy_guidance.__version__, importlib.metadata.version('energy-guidance'))"
    )
    files, versions = _run(python, "-c", code, cwd=user).stdout.strip().splitlines()
    assert all(Path(f).is_relative_to(own) for f in files.split()), files
    assert versions == f"{energy_guidance.__version__} {energy_guidance.__version__}"
    help_text = _run(python, "-m", "energy_guidance.recipes.aepo", "--help", cwd=user).stdout
    assert "usage: python -m energy_guidance.recipes.aepo" in help_text


def test_a_recipe_runs_from_the_clone():
    out = _run(sys.executable, "-m", "energy_guidance.recipes.datasets", "--help", cwd=ROOT).stdout
    assert "python -m energy_guidance.recipes.datasets" in out
