"""The calibration-size benchmark on a tiny setting (pilots of 8 and 16 samples, one data seed,
64 samples, 5 steps), so that it cannot rot: a finite, positive SW2 per pilot size and run."""

import math

from benchmarks import calibration_size


def test_calibration_size_smoke():
    rows = calibration_size.run(sizes=(8, 16), seeds=(0,), runs=1, samples=64, steps=5)
    assert [(r["seed"], r["pilot"]) for r in rows] == [(0, 8), (0, 16)]
    assert all(math.isfinite(r["sw2"]) and r["sw2"] > 0 for r in rows)
