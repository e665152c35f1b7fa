"""The guided-advantage diagnosis on a finished run: what it measures obeys the inequalities that
hold for any critic, and the run's folder is left as it was."""

import json

import pytest

from benchmarks import guided_advantage
from tests.recipes.conftest import tiny_args


def test_measures_a_finished_run_without_training(finished_run, tmp_path):
    folder, _ = finished_run
    before = sorted(p.name for p in (folder / "checkpoints").iterdir())
    out = tmp_path / "advantage.json"
    argv = ["--states", "32", "--candidates", "24", "--per-state", "4", "--repeats", "1", "--out", str(out)]
    guided_advantage.main([*argv, "--", *tiny_args(folder)])
    result = json.loads(out.read_text())
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == before  # nothing trained
    # exp(β·A)-weighted means are at least the plain mean (Chebyshev's sum inequality, per state);
    # A is increasing in Q at a state, so the best of 24 by Q is at least the best of 16
    assert result["target"] >= result["unguided"]
    assert result["best_of"]["24"] >= result["best_of"]["16"] >= result["unguided"]
    assert 1 <= result["target_ess"] <= 24
    assert set(result["guided"]) == {"aepo_network", "aepo_network_no_rescale", "training_free"}
    for entry in result["guided"].values():
        assert 0 <= entry["at_bound"] <= 1
        gap = (entry["mean"] - result["unguided"]) / (result["target"] - result["unguided"])
        assert entry["gap_closed"] == pytest.approx(gap)
    assert all(-1 <= c <= 1 for c in result["network_correlation"].values())
    assert set(result["seconds_per_call"]) == {
        "aepo",
        "guided_single",
        "training_free_single",
        "behaviour",
        "iql_awr",
    }
    assert all(s > 0 for s in result["seconds_per_call"].values())


def test_a_folder_without_a_finished_run_is_refused(tmp_path, tiny_dataset):
    with pytest.raises(SystemExit, match="holds no finished AEPO run"):
        guided_advantage.main(["--out", str(tmp_path / "x.json"), "--", *tiny_args(tmp_path / "empty")])
