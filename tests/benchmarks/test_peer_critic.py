"""A d3rlpy critic inside AEPO: its Q on the recipe's units is d3rlpy's own, and the benchmark runs
end to end on a finished run without touching that run's folder."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("d3rlpy", reason="d3rlpy is not installed (scripts/d3rlpy-requirements.txt)")

from benchmarks import peer_critic, peers
from energy_guidance.adapters import load_d3rlpy
from energy_guidance.recipes.config import parse_args
from energy_guidance.recipes.inputs import load_inputs
from tests.recipes.conftest import TINY, tiny_args


@pytest.fixture
def d3rlpy_file(finished_run, tmp_path):
    """A d3rlpy IQL trained for 20 steps on the finished run's data set (through benchmarks.peers)."""
    root = tmp_path / "peers"
    argv = ["--dataset", TINY, "--algorithms", "d3rlpy-iql", "--steps", "20", "--eval-every", "20"]
    peers.main([*argv, "--seeds", "0", "--episodes", "1", "--root", str(root)])
    return root / "d3rlpy-iql" / "seed0.d3"


def test_in_recipe_units_is_d3rlpys_own_q_and_policy(finished_run, d3rlpy_file):
    folder, _ = finished_run
    inputs = load_inputs(parse_args(tiny_args(folder)))
    critic = load_d3rlpy(d3rlpy_file)
    units = peer_critic.InRecipeUnits(critic, inputs.normalizer, inputs.scaler)
    rng = np.random.default_rng(0)
    obs = inputs.data.observations[:32] * inputs.normalizer.std + inputs.normalizer.mean  # raw units
    env_actions = rng.uniform(inputs.scaler.low, inputs.scaler.high, (32, inputs.data.act_dim))
    states = inputs.normalizer(obs.numpy())
    unit_actions = torch.as_tensor(inputs.scaler.to_unit(env_actions), dtype=torch.float32)
    expected = critic.algo.predict_value(obs.numpy(), env_actions.astype(np.float32))  # mean over heads
    got = units.q_values(states, unit_actions).mean(0).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    greedy = inputs.scaler.to_unit(critic.algo.predict(obs.numpy()))
    np.testing.assert_allclose(units.act(states).numpy(), greedy, rtol=1e-5, atol=1e-5)
    actions = unit_actions.clone().requires_grad_(True)  # the energy's gradient reaches the actions
    units.q_values(states, actions).sum().backward()
    assert actions.grad is not None and actions.grad.abs().sum() > 0


def test_peer_critic_runs_aepo_on_a_finished_run_and_leaves_it_alone(finished_run, d3rlpy_file, tmp_path):
    folder, own = finished_run
    before = sorted(p.name for p in (folder / "checkpoints").iterdir())
    root = tmp_path / "peer"
    peer_critic.main(["--critic-file", str(d3rlpy_file), "--root", str(root), "--", *tiny_args(folder)])
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == before
    results = peer_critic.run_with_critic(d3rlpy_file, parse_args(tiny_args(folder)), root)  # cached
    assert set(results["scores"]) == set(own["scores"]) - {"iql_awr"} | {"d3rlpy_policy"}
    assert all(np.isfinite(entry["return_mean"]) for entry in results["scores"].values())
    assert results["own"] == own["scores"] and results["q_scale"] > 0
    assert peers.read_json(root / TINY / "seed0" / "results.json") == results
    table = (root / "summary.md").read_text()
    assert "with the peer's critic (seeds: 1)" in table and "the critic's own policy" in table


def test_peer_critic_refuses_other_training_settings_than_the_runs(finished_run, d3rlpy_file, tmp_path):
    folder, _ = finished_run
    argv = ["--critic-file", str(d3rlpy_file), "--root", str(tmp_path / "peer")]
    with pytest.raises(SystemExit, match="other training settings"):
        peer_critic.main([*argv, "--", *tiny_args(folder, "--behaviour-steps", "300")])


def test_a_peer_folder_older_than_a_training_field_is_reevaluated(finished_run, d3rlpy_file, tmp_path):
    """Its config.json lacks a field that keeps its default (here critic_observations): it is
    adopted and its cached results are reused, as the recipe's own run folders are."""
    folder, _ = finished_run
    root = tmp_path / "peer"
    argv = ["--critic-file", str(d3rlpy_file), "--root", str(root), "--", *tiny_args(folder)]
    peer_critic.main(argv)
    config = root / TINY / "seed0" / "config.json"
    saved = json.loads(config.read_text())
    del saved["training"]["critic_observations"]
    config.write_text(json.dumps(saved))
    first = peers.read_json(root / TINY / "seed0" / "results.json")
    peer_critic.main(argv)
    assert peers.read_json(root / TINY / "seed0" / "results.json")["scores"] == first["scores"]


def test_the_summary_takes_a_policy_that_only_some_seeds_have():
    """A policy added to the recipe after some seeds were evaluated: its seeds are counted."""
    entry = {"score_mean": 1.0}
    old = {"scores": {"aepo": entry}, "own": {"aepo": entry}, "q_scale": 1.0, "own_q_scale": 1.0}
    new = {**old, "scores": {"aepo": entry, "training_free_single": {"score_mean": 3.0}}}
    table = peer_critic.summary([old, new])
    assert "| AEPO (guided, best of N by Q) | 1.0 ± 0.0 | 1.0 ± 0.0 |" in table
    newer = "| training-free guidance (the library's default), 1 sample | 3.0 ± 0.0 (1 of 2 seeds) | — |"
    assert newer in table
