import shutil

import pytest

from energy_guidance.recipes.aepo import AEPOConfig, parse_args, run
from energy_guidance.recipes.data import build_pendulum_mixed

TINY = "test/pendulum/tiny-v0"


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


def tiny_args(run_dir, *extra: str) -> list[str]:
    """The command line of :func:`tiny_config`."""
    return [
        *("--dataset", TINY, "--run-dir", str(run_dir), "--threads", "1", "--no-progress"),
        *("--device", "cpu"),
        *("--critic-steps", "200", "--behaviour-steps", "200", "--energy-steps", "50"),
        *("--checkpoint-every", "100", "--batch-size", "64", "--eval-episodes", "1"),
        *("--num-candidates", "4", "--inference-steps", "5", "--no-ablations", "--no-smc"),
        *("--iql.hidden", "32", "--cql.hidden", "32", "--behaviour.hidden", "32"),
        *("--energy-hidden", "32", "--variance-samples", "256"),
        *extra,
    ]


def tiny_config(run_dir, *extra: str, **overrides) -> AEPOConfig:
    """The recipe on TINY in seconds: 200 critic and behaviour steps, 50 energy steps,
    checkpoints every 100 steps, one evaluation episode, no ablations; ``extra`` are more flags."""
    config = parse_args(tiny_args(run_dir, *extra))
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


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
