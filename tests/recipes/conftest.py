import pytest

from recipes.data import build_pendulum_mixed

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
