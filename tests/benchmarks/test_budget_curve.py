"""The budget-curve summary on two fake benchmark roots: the table's cells and order, the figure,
and a root whose runs mix budgets refused."""

import json

import pytest

from benchmarks import budget_curve


def fake_root(path, steps: int, scores: dict[str, list[float]], budgets: list[int] | None = None):
    for seed, critic in enumerate(budgets or [steps] * 2):
        run = path / "energy-guidance" / "hopper" / "medium-v0" / f"seed{seed}"
        run.mkdir(parents=True)
        config = {"training": {"critic_steps": critic, "behaviour_steps": steps}}
        (run / "config.json").write_text(json.dumps(config))
    policies = {name: {"mean": sum(s) / len(s), "std": 1.0, "per_seed": s} for name, s in scores.items()}
    summary = {
        "datasets": {"energy-guidance/hopper/medium-v0": {"dataset_score": 29.2, "policies": policies}}
    }
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_budget_curve_table_and_figure(tmp_path):
    late = fake_root(tmp_path / "b", 100_000, {"aepo": [50.0, 60.0], "behaviour": [28.0, 27.0]})
    early = fake_root(tmp_path / "a", 20_000, {"aepo": [20.0, 22.0]})
    out = tmp_path / "curve.png"
    text = budget_curve.main([str(late), str(early), "--out", str(out)])

    lines = text.splitlines()
    assert lines[2] == "| policy | 20k / 20k | 100k / 100k |"  # sorted by budget, not by argument order
    assert "| AEPO (guided, best of N by Q) | 21.0 ± 1.0 (20.0, 22.0) | 55.0 ± 1.0 (50.0, 60.0) |" in lines
    assert "| diffusion BC (behaviour policy, unguided) | — | 27.5 ± 1.0 (28.0, 27.0) |" in lines
    assert lines[-1] == "| data set (mean episode) | 29.2 | 29.2 |"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_root_of_mixed_budgets_is_refused(tmp_path):
    mixed = fake_root(tmp_path / "m", 50_000, {"aepo": [1.0, 2.0]}, budgets=[50_000, 100_000])
    with pytest.raises(SystemExit, match="one budget"):
        budget_curve.main([str(mixed)])
