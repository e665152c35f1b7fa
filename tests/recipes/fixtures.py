"""Fixtures of the recipe's tests and of tests/faults (a plugin of tests/conftest.py, so the one
finished tiny run is built once per session for both)."""

import shutil

import pytest

from energy_guidance.recipes.aepo import run
from energy_guidance.recipes.data import build_pendulum_mixed

from .conftest import TINY, tiny_config


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    """An empty Minari storage root: tests never read ~/.minari or download."""
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


@pytest.fixture
def tiny_dataset(minari_root):
    """A 4-episode (800-step) mixed Pendulum data set with 4-episode reference scores."""
    return build_pendulum_mixed(TINY, episodes=4, reference_episodes=4, seed=3)


@pytest.fixture(scope="session")
def _finished_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(root / "minari"))
        build_pendulum_mixed(TINY, episodes=4, reference_episodes=4, seed=3)
        results = run(tiny_config(root / "run"))
    return root, results


@pytest.fixture
def finished_run(_finished_template, tmp_path, monkeypatch):
    """A copy of one finished tiny run (built once per session): (its folder, its results)."""
    root, results = _finished_template
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root / "minari"))
    shutil.copytree(root / "run", tmp_path / "run")
    return tmp_path / "run", results
