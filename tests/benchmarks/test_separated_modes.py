"""The separated-modes benchmark on a tiny setting (400 samples, β = 5, one seed), so that it cannot
rot: a row per method, its report, the equal-cost pool, and the exact intermediate energy's mean of
x_1 at the target's within the Monte Carlo error (Z = 5 standard errors of 400 samples of the
target's second mode, standard deviation 0.5, plus 0.05 for the 25-step sampler)."""

import math

from benchmarks import separated_modes


def test_separated_modes_smoke(tmp_path):
    result = separated_modes.main(["--quick", "--samples", "400", "--out", str(tmp_path)])

    assert result["config"]["quick"] and result["config"]["betas"] == (5.0,)
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == set(separated_modes.METHODS) and len(result["rows"]) == len(separated_modes.METHODS)
    for name, row in rows.items():
        assert math.isfinite(row["sw2"]) and row["sw2"] > 0, name
        assert row["passes"] > 0 and row["seconds"] > 0, name
    assert rows["unguided"]["time_ratio"] == 1.0 and rows["unguided"]["pass_ratio"] == 1.0
    assert rows["resampling"]["pool"] >= 400
    exact = rows["exact"]
    assert abs(exact["mean_x1"] - exact["target_x1"]) <= 5 * 0.5 / math.sqrt(400) + 0.05
    report = (tmp_path / "results.md").read_text()
    assert all(f"| 5 | {name} |" in report for name in separated_modes.METHODS)
    assert (tmp_path / "results.json").exists()
