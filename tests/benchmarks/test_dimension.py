"""The dimension sweep's ground truth (the quadratic tilt against importance sampling, the SNIS
references) and a tiny end-to-end run of the sweep, so that it cannot rot."""

import json
import math

import pytest
import torch
from diffusers import DDPMScheduler

from benchmarks import dimension
from benchmarks.dimension import (
    Config,
    DistanceEnergy,
    LinearEnergy,
    PlateauEnergy,
    QuadraticEnergy,
    build_reference,
    linear_tilt,
    make_energies,
    make_mixture,
    snis,
    trained_model,
)
from energy_guidance.testing import GaussianMixture

Z = 5.0  # tolerance in standard errors


def importance_estimates(mix, energy, beta: float, n: int, seed: int = 0):
    """Plain importance sampling from q: log Z = log mean exp(-β·E) and the tilted mean, each
    with its standard error (delta method)."""
    x = mix.sample(n, generator=torch.Generator().manual_seed(seed)).double()
    log_w = -beta * energy(x)
    log_z = float(torch.logsumexp(log_w, 0) - math.log(n))
    rel = torch.exp(log_w - log_z)  # w / mean(w)
    log_z_se = float(rel.std() / math.sqrt(n))
    w = torch.softmax(log_w, 0)
    mean = w @ x
    mean_se = ((w[:, None] ** 2) * (x - mean) ** 2).sum(0).sqrt()
    return log_z, log_z_se, mean, mean_se


@pytest.mark.parametrize("d", [1, 3])
def test_quadratic_tilt_against_importance_sampling(d):
    """log Z and the tilted mean of the closed form within Z Monte Carlo standard errors of plain
    importance sampling of the mixture (400,000 draws, β = 1, where the weights keep ESS high)."""
    mix = make_mixture(d, seed=3)
    energy = make_energies(mix, seed=3)["quadratic"]
    beta = 1.0
    target, log_z = mix.quadratic_tilted(energy.c, energy.k, beta)
    est, est_se, mean, mean_se = importance_estimates(mix, energy, beta, 400_000)
    assert abs(log_z - est) <= Z * est_se + 1e-12
    assert torch.all((target.mean() - mean).abs() <= Z * mean_se)
    assert est_se < 0.05  # the check has teeth: the importance estimate is precise


def test_linear_tilt_log_normaliser_against_importance_sampling():
    mix = make_mixture(3, seed=4)
    energy = make_energies(mix, seed=4)["linear"]
    target, log_z = linear_tilt(mix, energy.w, 1.0)
    est, est_se, mean, mean_se = importance_estimates(mix, energy, 1.0, 400_000)
    assert abs(log_z - est) <= Z * est_se
    assert torch.all((target.mean() - mean).abs() <= Z * mean_se)


@pytest.mark.parametrize(
    "name, beta", [("distance", 1.0), ("distance", 3.0), ("plateau", 2.0), ("plateau", 5.0)]
)
def test_snis_reference_against_plain_importance_sampling(name, beta):
    """In d = 2 plain importance sampling of q works: the structured SNIS references (scale
    mixture for the distance, 1-D projection for the plateau) agree with it on log Z, the tilted
    mean and the mean energy, and keep an ESS near their size."""
    mix = make_mixture(2, seed=5)
    energy = make_energies(mix, seed=5)[name]
    ref = build_reference(mix, energy, beta, 20_000, torch.Generator().manual_seed(1), min_ess=1000)
    assert ref.kind == "snis" and ref.reliable
    assert ref.ess > 0.95 * len(ref.points)
    est, est_se, mean, mean_se = importance_estimates(mix, energy, beta, 400_000)
    assert abs(ref.log_z - est) <= Z * math.hypot(est_se, ref.log_z_se)
    ref_mean = ref.weights @ ref.points
    ref_mean_se = ((ref.weights[:, None] ** 2) * (ref.points - ref_mean) ** 2).sum(0).sqrt()
    assert torch.all((ref_mean - mean).abs() <= Z * (mean_se**2 + ref_mean_se**2).sqrt())


@pytest.mark.parametrize("name, beta", [("distance", 10.0), ("plateau", 10.0)])
def test_snis_reference_stays_reliable_in_high_dimension(name, beta):
    """d = 64, sharp β: the structured proposals keep nearly every draw (their log Z agrees across
    two seeds), where importance sampling of q collapses for the distance."""
    mix = make_mixture(64, seed=6)
    energy = make_energies(mix, seed=6)[name]
    refs = [build_reference(mix, energy, beta, 5000, torch.Generator().manual_seed(s), 1000) for s in (1, 2)]
    for ref in refs:
        assert ref.reliable and ref.ess > 0.9 * len(ref.points)
    se = math.hypot(refs[0].log_z_se, refs[1].log_z_se)
    assert abs(refs[0].log_z - refs[1].log_z) <= Z * se + 1e-9
    if name == "plateau":
        return  # a fifth of q is on the step's low side: plain importance sampling works there
    naive = -beta * energy(mix.sample(5000, generator=torch.Generator().manual_seed(3)).double())
    assert float(torch.exp(2 * torch.logsumexp(naive, 0) - torch.logsumexp(2 * naive, 0))) < 100


def test_snis_marks_a_poor_proposal_unreliable():
    """The same SNIS step with q itself as the proposal at a sharp β in d = 32: ESS far below the
    threshold, so the reference says it is unreliable."""
    mix = make_mixture(32, seed=7)
    energy = make_energies(mix, seed=7)["distance"]
    gen = torch.Generator().manual_seed(0)
    x = mix.sample(5000, generator=gen).double()
    ref = snis(mix, energy, 10.0, x, mix.log_prob(x), gen, min_ess=1000, started=0.0)
    assert not ref.reliable and ref.ess < 1000


def test_build_reference_kinds_and_closed_forms():
    mix = make_mixture(4, seed=8)
    energies = make_energies(mix, seed=8)
    kinds = {
        name: build_reference(mix, e, 2.0, 500, torch.Generator().manual_seed(0), 100).kind
        for name, e in energies.items()
    }
    assert kinds == {
        "linear": "closed form",
        "quadratic": "closed form",
        "distance": "snis",
        "plateau": "snis",
    }
    assert isinstance(energies["linear"], LinearEnergy) and isinstance(energies["quadratic"], QuadraticEnergy)
    assert isinstance(energies["distance"], DistanceEnergy) and isinstance(energies["plateau"], PlateauEnergy)
    # the plateau's step leaves PLATEAU_QUANTILE of the data on its low side
    x = mix.sample(20_000, generator=torch.Generator().manual_seed(1)).double()
    low = float((energies["plateau"](x) < 0.5).double().mean())
    assert low == pytest.approx(dimension.PLATEAU_QUANTILE, abs=0.02)


def test_trained_model_is_cached(tmp_path):
    mix = make_mixture(2, seed=0)
    cfg = Config(model_steps=5, out=str(tmp_path))
    first, info = trained_model(mix, cfg, lambda s: None)
    second, again = trained_model(mix, cfg, lambda s: None)
    assert not info["cached"] and again["cached"]
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_the_skip_of_a_high_dimensional_trained_model_is_a_gaussians_exact_noise(tmp_path):
    """From SKIP_FROM_DIM on the trained ε-MLP is a residual on the exact ε of N(0, σ_d²·I): with
    its MLP's output zeroed it IS that Gaussian's noise model (σ_d the mixture's RMS s.d.)."""
    d = dimension.SKIP_FROM_DIM
    mix = make_mixture(d, seed=0)
    net, info = trained_model(mix, Config(model_steps=1, out=str(tmp_path)), lambda s: None)
    sigma_d = info["sigma_data"]
    assert sigma_d == pytest.approx(float(mix.covariance().diagonal().mean().sqrt()))
    torch.nn.init.zeros_(net.net[-1].weight)
    torch.nn.init.zeros_(net.net[-1].bias)
    gaussian = GaussianMixture(
        torch.ones(1, dtype=torch.float64),
        torch.zeros(1, d, dtype=torch.float64),
        torch.full((1, d), sigma_d**2),
    )
    exact = gaussian.noise_model(DDPMScheduler())
    x = 3 * torch.randn(16, d, generator=torch.Generator().manual_seed(0))
    for t in (0, 500, 999):
        timestep = torch.tensor(t)
        assert torch.allclose(net(x, timestep), exact(x, timestep).float(), rtol=1e-4, atol=1e-5)
    below, below_info = trained_model(
        make_mixture(2, 0), Config(model_steps=1, out=str(tmp_path)), lambda s: None
    )
    assert below.sigma_data is None and below_info["sigma_data"] is None


TINY = [
    "--dims", "2",
    "--models", "exact",
    "--energies", "quadratic",
    "--beta-index", "1",
    "--batch", "32",
    "--steps", "5",
    "--smc-steps", "5",
    "--smc-k", "4",
    "--smc-particles", "64",
    "--smc-twist", "dps",
    "--ref-size", "2000",
    "--max-pool", "2000",
]  # fmt: skip


def test_dimension_sweep_smoke(tmp_path):
    result = dimension.main([*TINY, "--out", str(tmp_path)])

    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {
        "target",
        "unguided",
        "default",
        "auto",
        "single",
        "pairs8",
        "paper",
        "dps",
        "quadrature",
        "smc_K4",
    }
    for method, row in rows.items():
        assert (row["d"], row["model"], row["energy"], row["beta"]) == (2, "exact", "quadratic", 2.0)
        assert row["status"] in ("ok", "nonfinite", "error", "skipped")
        for key in ("sw2", "gap_closed", "max_abs", "finite_frac", "ref_reliable", "ref_max_abs"):
            assert key in row, (method, key)
        if method != "target" and row["status"] == "ok":
            for key in (
                "seconds",
                "passes",
                "time_ratio",
                "pass_ratio",
                "rs_pool",
                "rs_sw2",
                "rs_ess",
                "rs_gap",
            ):
                assert key in row, (method, key)
            assert row["rs_pool"] >= row["outputs"] and row["passes"] > 0
    for method in (
        "target",
        "unguided",
        "auto",
        "single",
        "pairs8",
        "dps",
        "quadrature",
        "smc_K4",
    ):  # stable here
        row = rows[method]
        assert row["status"] == "ok" and row["finite_frac"] == 1.0 and math.isfinite(row["sw2"]), method
    assert rows["unguided"]["pass_ratio"] == pytest.approx(1.0)
    assert rows["unguided"]["gap_closed"] == pytest.approx(0.0)
    assert rows["dps"]["pass_ratio"] > 1.0  # a backward pass through the model per step
    smc = rows["smc_K4"]
    assert (smc["K"], smc["outputs"]) == (4, 16) and math.isfinite(smc["logz_err"])
    assert rows["auto"]["chose"] in ("guided", "resampling") and 0 < rows["auto"]["pilot_ess_frac"] <= 1
    assert set(rows["default"]["bar"]) == {"finite", "range", "sw2", "gap", "pass", "counted"}

    (ref,) = result["references"]
    assert ref["kind"] == "closed form" and ref["reliable"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["rows"]) == len(result["rows"]) and saved["config"]["dims"] == [2]
    report = (tmp_path / "results.md").read_text()
    assert "| 2 | exact | quadratic | 2 |" in report and "Issue 17's bar" in report
    assert (tmp_path / "dimension.png").stat().st_size > 0


def test_a_refused_dimension_is_skipped(tmp_path):
    """The Gauss-Hermite quadrature refuses d = 8 (3**8 nodes): recorded as skipped, with why."""
    args = [*TINY, "--dims", "8", "--methods", "quadrature", "--smc-k", "--out", str(tmp_path)]
    result = dimension.main(args)
    (row,) = [r for r in result["rows"] if r["method"] == "quadrature"]
    assert row["status"] == "skipped" and "refuses d = 8" in row["error"]
    assert "Skipped: quadrature at d = 8." in result["text"]
