"""The d3rlpy peers see exactly the recipe's transitions, and the benchmark runs end to end."""

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("d3rlpy", reason="d3rlpy is not installed (scripts/d3rlpy-requirements.txt)")

from benchmarks import peers
from tests.recipes.conftest import TINY


def _episode(rng, steps: int, terminated: bool) -> SimpleNamespace:
    terminations = np.zeros(steps, bool)
    terminations[-1] = terminated
    return SimpleNamespace(
        observations=rng.standard_normal((steps + 1, 3)),
        actions=rng.uniform(-1, 1, (steps, 2)),
        rewards=rng.standard_normal(steps),
        terminations=terminations,
    )


def test_to_d3rlpy_keeps_every_transition_of_terminated_and_truncated_episodes():
    import d3rlpy

    rng = np.random.default_rng(0)
    episodes = [_episode(rng, 5, True), _episode(rng, 4, False), _episode(rng, 6, False)]
    dataset = peers.to_d3rlpy(episodes)
    picker = d3rlpy.dataset.BasicTransitionPicker()
    got = [picker(e, i) for e in dataset.episodes for i in range(e.transition_count)]
    expected = [(e, t) for e in episodes for t in range(len(e.rewards))]
    assert len(got) == len(expected) == 15
    for transition, (episode, t) in zip(got, expected, strict=True):
        np.testing.assert_allclose(transition.observation, episode.observations[t], rtol=1e-6)
        np.testing.assert_allclose(transition.action, episode.actions[t], rtol=1e-6)
        np.testing.assert_allclose(transition.reward, [episode.rewards[t]], rtol=1e-6)
        terminal = bool(episode.terminations[t])
        assert transition.terminal == float(terminal)
        if not terminal:  # a terminal transition's next observation is never used (1 − done)
            np.testing.assert_allclose(transition.next_observation, episode.observations[t + 1], rtol=1e-6)


def test_peers_benchmark_end_to_end(tiny_dataset, tmp_path):
    root = tmp_path / "peers"
    argv = ["--dataset", TINY, "--steps", "20", "--eval-every", "10", "--seeds", "0", "--episodes", "1"]
    peers.main([*argv, "--algorithms", *peers.ALGORITHMS, "--root", str(root)])
    for algorithm in peers.ALGORITHMS:
        run = peers.read_json(root / algorithm / "seed0.json")
        assert run["finished"] and run["steps"] == [10, 20]
        assert all(np.isfinite(run["scores"]))
    table = (root / "summary.md").read_text()
    assert all(f"| {a} |" in table for a in peers.ALGORITHMS)
    import d3rlpy  # after the skip above

    for algorithm, scaled in (("d3rlpy-iql", False), ("d3rlpy-iql-standardised", True)):
        algo = d3rlpy.load_learnable(str(root / algorithm / "seed0.d3"))
        scaler = algo.config.observation_scaler
        assert isinstance(scaler, d3rlpy.preprocessing.StandardObservationScaler) == scaled
    assert (root / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_the_standardised_iql_is_a_check_not_a_default():
    assert "d3rlpy-iql-standardised" in peers.ALGORITHMS
    assert "d3rlpy-iql-standardised" not in peers.DEFAULT_ALGORITHMS


def test_peers_rejects_steps_that_are_not_a_multiple_of_the_evaluation_interval():
    with pytest.raises(SystemExit):
        peers.main(["--steps", "25", "--eval-every", "10"])


def test_summarise_tabulates_unfinished_curves_without_training(tiny_dataset, tmp_path):
    root = tmp_path / "peers"
    partial = peers.Run("iql", 0, steps=[10], scores=[12.5], returns=[[1.0]], finished=False)
    peers.write_json(root / "iql" / "seed0.json", peers.dataclasses.asdict(partial))
    argv = ["--dataset", TINY, "--steps", "20", "--eval-every", "10", "--seeds", "0", "1"]
    peers.main([*argv, "--root", str(root), "--summarise"])
    table = (root / "summary.md").read_text()
    assert "| iql | 12.5 ± 0.0 (1) |" in table
    assert "d3rlpy" not in table and not (root / "iql" / "seed1.json").exists()
