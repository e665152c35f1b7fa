"""The offline-RL benchmark runs end to end on the tiny Pendulum set (two seeds, every compared
method), writes its table and figure, and summarises over seeds correctly."""

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import offline_rl
from energy_guidance.recipes.data import build_pendulum_mixed
from tests.recipes.conftest import TINY

TINY_RECIPE = [
    *("--threads", "1", "--no-progress", "--device", "cpu"),
    *("--critic-steps", "60", "--behaviour-steps", "60", "--energy-steps", "20"),
    *("--checkpoint-every", "20", "--batch-size", "32", "--eval-episodes", "1"),
    *("--num-candidates", "2", "--inference-steps", "3", "--qgpo-states", "32", "--qgpo-support", "2"),
    *("--iql.hidden", "16", "--cql.hidden", "16", "--behaviour.hidden", "16"),
    *("--energy-hidden", "16", "--variance-samples", "64"),
]


@pytest.mark.slow
def test_offline_rl_benchmark_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    build_pendulum_mixed(TINY, episodes=4, reference_episodes=4, seed=3)
    root = tmp_path / "bench"
    offline_rl.main(["--datasets", TINY, "--seeds", "0", "1", "--root", str(root), "--", *TINY_RECIPE])
    summary = json.loads((root / "summary.json").read_text())
    policies = summary["datasets"][TINY]["policies"]
    expected = {"aepo", "guided_single", "training_free_single", "behaviour", "iql_awr", "unguided_best_of_n"}
    assert expected | {"qgpo", "dps", "cql_actor", "smc_draw", "smc_best_weight"} <= set(policies)
    for name, entry in policies.items():
        per_seed = entry["per_seed"]
        assert len(per_seed) == 2, name
        assert entry["mean"] == pytest.approx(np.mean(per_seed)) and entry["std"] == pytest.approx(
            np.std(per_seed)
        )
    text = (root / "summary.md").read_text()
    assert "QGPO (CEP energy, best of N by Q)" in text and "AEPO" in text
    assert "best rival" in text  # the measured goal's line
    assert (root / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_verdict_compares_aepo_with_the_best_rival():
    summary = {"policies": {"aepo": {"mean": 50.0}, "qgpo": {"mean": 60.0}, "iql_awr": {"mean": 40.0}}}
    assert offline_rl.verdict(summary).startswith("AEPO (guided, best of N by Q) 50.0 < best rival QGPO")
    summary["policies"]["aepo"]["mean"] = 60.0
    assert "≥" in offline_rl.verdict(summary)
    assert offline_rl.verdict({"policies": {"aepo": {"mean": 1.0}}}) is None
    assert offline_rl.verdict(summary, "guided_single") is None


def test_finished_only_summarises_what_has_finished_and_trains_nothing(tmp_path, monkeypatch):
    root = tmp_path / "bench"
    (root / "a" / "seed1").mkdir(parents=True)
    result = {"scores": {"aepo": {"score_mean": 5.0}}, "phase_seconds": {"critic": 1.0}, "dataset_score": 2.0}
    (root / "a" / "seed1" / "results.json").write_text(json.dumps(result))

    def finished(job):  # a job without results.json would have to train: it must not be started
        return json.loads((Path(job[1]) / "results.json").read_text())

    monkeypatch.setattr(offline_rl, "_run_one", finished)
    offline_rl.main(["--datasets", "a", "b", "--seeds", "0", "1", "--root", str(root), "--finished-only"])
    summary = json.loads((root / "summary.json").read_text())
    assert list(summary["datasets"]) == ["a"] and summary["datasets"]["a"]["seeds"] == 1
    assert "a (1 seeds)" in (root / "summary.md").read_text()
