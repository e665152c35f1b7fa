"""The guided-advantage diagnosis on a finished run: what it measures obeys the inequalities that
hold for any critic, and the run's folder is left as it was."""

import json

import pytest

from benchmarks import guided_advantage
from tests.recipes.conftest import tiny_args


def _contents(folder) -> dict:
    """Every file under ``folder`` (but its lock), by relative path: (bytes, modification time)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_measures_a_finished_run_without_training(finished_run, tmp_path):
    folder, _ = finished_run
    before = _contents(folder)
    out = tmp_path / "advantage.json"
    argv = ["--states", "32", "--candidates", "24", "--per-state", "4", "--repeats", "1", "--out", str(out)]
    guided_advantage.main([*argv, "--", *tiny_args(folder)])
    result = json.loads(out.read_text())
    assert _contents(folder) == before  # nothing trained, nothing written
    # Per state, exp(β·A)-weighted means are at least the plain mean (Chebyshev's sum inequality);
    # A is increasing in Q at a state, so the best of 24 by Q is at least the best of its first
    # 16 (the tiny run's N = 4: of its first 4) and at least the mean of the 24.
    best = {int(n): entry["mean"] for n, entry in result["best_of"].items()}
    assert set(best) == {4, 16, 24}
    assert result["target"] >= result["unguided"]
    assert best[24] >= best[16] >= best[4] and best[24] >= result["unguided"]
    assert 1 <= result["target_ess"] <= 24 * (1 + 1e-5)  # float32 weights
    assert set(result["guided"]) == {"aepo_network", "aepo_network_no_rescale", "training_free"}
    assert all(0 <= entry["at_bound"] <= 1 for entry in result["guided"].values())
    assert all(-1 <= c <= 1 for c in result["network_correlation"].values())
    policies = {"aepo", "guided_single", "training_free_single", "behaviour", "iql_awr"}
    assert set(result["seconds_per_call"]) == policies
    assert all(s > 0 for s in result["seconds_per_call"].values())


def test_a_folder_without_a_finished_run_is_refused(tmp_path, tiny_dataset):
    with pytest.raises(SystemExit, match="holds no finished AEPO run"):
        guided_advantage.main(["--out", str(tmp_path / "x.json"), "--", *tiny_args(tmp_path / "empty")])


def test_a_run_made_with_other_training_settings_is_refused(finished_run, tmp_path):
    folder, _ = finished_run
    with pytest.raises(SystemExit, match=r"other training settings \(\['beta'\]\)"):
        guided_advantage.main(["--out", str(tmp_path / "x.json"), "--", *tiny_args(folder, "--beta", "7")])
