"""The default-cost benchmark on a tiny setting (d = 2, batch 32, 5 steps, a briefly trained
model), so that it cannot rot: a row per energy with positive times and their ratios (the
default's, and once calibrated, also with other numbers of pairs of draws), and the
calibration's parts."""

import math

from benchmarks import default_cost, dimension


def test_default_cost_smoke(tmp_path):
    result = default_cost.main(
        [
            "--dim",
            "2",
            "--batch",
            "32",
            "--steps",
            "5",
            "--repeats",
            "1",
            "--model-steps",
            "50",
            "--out",
            str(tmp_path),
            "--num-pairs",
            "1",
            "8",
        ]
    )
    rows = {r["energy"]: r for r in result["rows"]}
    assert set(rows) == set(dimension.ENERGIES)
    for row in rows.values():
        assert row["default_s"] > 0 and row["unguided_s"] > 0
        assert math.isclose(row["ratio"], row["default_s"] / row["unguided_s"])
        ratios = {k for k in row if k.endswith("_ratio")}
        assert ratios == {"calibrated_ratio", "pairs_1_ratio", "pairs_8_ratio"}
        assert all(row[k] > 0 for k in ratios)
    assert all(v > 0 for v in result["parts"].values())
