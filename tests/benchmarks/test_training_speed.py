"""The training-speed benchmark runs every arm and prints one row per arm with its ratio to d3rlpy."""

import pytest

pytest.importorskip("d3rlpy", reason="d3rlpy is not installed (scripts/d3rlpy-requirements.txt)")

from benchmarks import training_speed


def test_training_speed_prints_a_row_per_arm(capsys):
    arms = ["iql", "d3rlpy-iql", "behaviour"]
    training_speed.main(["--rounds", "1", "--updates", "2", "--batch", "16", "--arms", *arms])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0][2:] for row in rows] == arms
    iql_ratio = rows[0].rstrip(" |").split(" | ")[-1]
    assert float(iql_ratio) > 0  # ours against d3rlpy's IQL, measured in the same round
