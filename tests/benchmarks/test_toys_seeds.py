"""Pooling toys.py runs over seeds: means, standard errors, methods absent at a seed, the goals."""

import dataclasses
import json
import math

import pytest

from benchmarks import toys, toys_seeds


def write_run(folder, seed: int, sw2: dict[str, float], twists=("dps_t",)) -> str:
    """A results.json as toys.py writes it, one setting (moons, β = 3), ``sw2`` per method."""
    config = {**dataclasses.asdict(toys.Config()), "seed": seed, "twists": list(twists), "smc_k": [64]}
    rows = [{"part": "exact", "dataset": "moons", "beta": 3.0, "method": m, "sw2": v} for m, v in sw2.items()]
    rows[0]["sw2_sd"] = 0.02 * (seed + 1)  # the floor ("resampled") carries its spread
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"config": config, "rows": rows}))
    return str(folder)


def test_means_standard_errors_and_goals(tmp_path):
    a = write_run(tmp_path / "a", 0, {"resampled": 0.10, "exact": 0.10, "smc_dps_t_K64": 0.14, "dps": 0.3})
    b = write_run(tmp_path / "b", 1, {"resampled": 0.12, "exact": 0.12, "smc_dps_t_K64": 0.20})
    result = toys_seeds.main([a, b, "--out", str(tmp_path / "out")])

    rows = {r["method"]: r for r in result["rows"]}
    assert result["seeds"] == [0, 1]
    assert result["missing"] == ["exact/dps"]  # present at seed 0 only
    assert rows["smc_dps_t_K64"]["sw2"] == pytest.approx(0.17)
    assert rows["smc_dps_t_K64"]["sw2_se"] == pytest.approx(0.03)  # s.d. 0.03·√2 over 2 seeds, / √2
    assert rows["resampled"]["sw2_sd"] == pytest.approx(0.03 / math.sqrt(2))  # mean spread / √seeds
    # 0.17 > 1.5 × 0.11 = 0.165, but within 2 × 0.0212 of it
    assert "1.5 × exact guidance's: 0/1 (1/1 within 2 s.d." in result["text"]
    assert (tmp_path / "out" / "results.md").read_text() == result["text"]
    assert "Part 1: exact noise model" in result["text"] and "Part 2" not in result["text"]


def test_runs_of_different_protocols_are_refused(tmp_path):
    a = write_run(tmp_path / "a", 0, {"resampled": 0.1, "exact": 0.1})
    b = write_run(tmp_path / "b", 1, {"resampled": 0.1, "exact": 0.1})
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    results["config"]["num_samples"] = 7
    (tmp_path / "b" / "results.json").write_text(json.dumps(results))
    with pytest.raises(SystemExit, match="num_samples"):
        toys_seeds.main([a, b, "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match=r"no results\.json"):
        toys_seeds.main([a, str(tmp_path), "--out", str(tmp_path / "out")])
