"""The 2-D toy benchmark runs end to end on tiny sizes (one data set, one β), so it cannot rot."""

import math

from benchmarks import toys

TINY = [
    "--quick",
    "--datasets", "8gaussians",
    "--betas", "10",
    "--num-data", "100",
    "--num-samples", "100",
    "--floor-repeats", "2",
    "--num-inference-steps", "5",
    "--train-seconds", "0.2",
    "--pilot-steps", "5",
    "--support-pool", "64",
    "--smc-k", "2", "4",
    "--smc-particles", "16",
    "--model-steps", "30",
    "--target-pool", "300",
]  # fmt: skip


def test_toys_benchmark_smoke(tmp_path):
    result = toys.main([*TINY, "--out", str(tmp_path)])

    rows = {(r["part"], r["method"]): r for r in result["rows"] if "beta" in r}
    smc = [f"smc_{t}_K{k}" for t in toys.TWISTS for k in (2, 4)]
    for method in ("resampled", "two_draws", *toys.METHODS, *smc):
        assert ("exact", method) in rows, method
    learned_smc = [f"smc_{t}_K{k}" for t in ("dps", "cf2_dv") for k in (2, 4)]
    for method in ("resampled", *toys.LEARNED_MODEL_METHODS, *learned_smc):
        assert ("learned", method) in rows, method
    exact = rows[("exact", "exact")]
    assert math.isfinite(exact["sw2"]) and math.isfinite(exact["mmd2"]) and exact["sample_s"] > 0
    for method in toys.LEARNED:
        assert rows[("exact", method)]["steps"] >= 1

    report = (tmp_path / "results.md").read_text()
    assert "## Part 1: exact noise model" in report and "## Part 2: learned MLP noise model" in report
    assert "## Goals (issue 9)" in report
    line = next(s for s in report.splitlines() if s.startswith("| 8gaussians | 10 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    header = next(s for s in report.splitlines() if s.startswith("| data set | β | resampled | two_draws"))
    exact_cell = cells[[c.strip() for c in header.strip("|").split("|")].index("exact")]
    assert math.isfinite(float(exact_cell))
    for name in ("results.json", "toys_beta10.png", "toys_learned_beta10.png"):
        assert (tmp_path / name).stat().st_size > 0
    for method in toys.METHODS:  # the report's legend: each sampler's name and description
        assert f"- `{method}`: {toys.METHODS[method].description}" in report


def test_toys_benchmark_smc_populations_protocol(tmp_path):
    """One output per population: num_samples populations of K particles, run in chunks."""
    args = [
        "--quick",
        "--datasets", "8gaussians",
        "--betas", "10",
        "--parts", "exact",
        "--methods", "exact",
        "--twists", "dps", "tw2_dv", "exact",
        "--num-data", "100",
        "--num-samples", "30",
        "--floor-repeats", "2",
        "--num-inference-steps", "5",
        "--smc-k", "4",
        "--smc-protocol", "populations",
        "--smc-chunk", "64",  # 16 populations per call: two calls, the second partial
        "--out", str(tmp_path),
    ]  # fmt: skip
    result = toys.main(args)

    rows = {r["method"]: r for r in result["rows"] if r["part"] == "exact"}
    for twist in ("dps", "tw2_dv", "exact"):
        row = rows[f"smc_{twist}_K4"]
        assert (row["populations"], row["K"]) == (30, 4)
        assert not row["diverged"] and math.isfinite(row["sw2"]) and math.isfinite(row["logz_err"])
    report = (tmp_path / "results.md").read_text()
    assert "one output per population: 30 outputs, each from its own 4 particles" in report
    assert "SMC `exact` twist, K = 4 (one output per population" in report


def test_the_registry_keeps_every_documented_name():
    """The samplers' and twists' names are the CLI's choices, the report's columns and the keys that
    benchmarks.toys_seeds pools results.json files on: none may disappear."""
    methods = (
        "unguided exact dps cf1_dv cf1_jac cf2_dv cf2_jac tw1_dv tw2_dv tw1_jac tw2_jac gh3_dv gh3_jac "
        "gh5_jac gh25_jac net_cf1 net_cf2 net_cum1 net_gh3 cep classifier"
    ).split()
    twists = "dps cf1_dv cf2_dv tw2_dv net_cf2 classifier exact dps_t tw2_dv_t gh3_jac gh3_jac_t".split()
    assert list(toys.METHODS) == methods and list(toys.TWISTS) == twists
    assert toys.LEARNED == ("net_cf1", "net_cf2", "net_cum1", "net_gh3", "cep", "classifier")
    assert toys.LEARNED_TWISTS == tuple("dps cf1_dv cf2_dv tw2_dv dps_t tw2_dv_t gh3_jac gh3_jac_t".split())
    assert [name for name, t in toys.TWISTS.items() if t.tempered] == ["dps_t", "tw2_dv_t", "gh3_jac_t"]
    for name, method in toys.METHODS.items():
        assert method.description and (method.build is None) == (name == "unguided"), name
