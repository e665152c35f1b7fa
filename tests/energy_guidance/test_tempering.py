"""tempering.py: the tempered twist λ_t·E_t of docs/math.md (5), alone and inside SMC."""

import diffusers
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from energy_guidance import AnalyticEnergyGuidance, IntermediateEnergyNet, smc_sample
from energy_guidance.baselines import dps_guidance
from energy_guidance.posterior import Constant
from energy_guidance.quadrature import GaussianQuadrature
from energy_guidance.tempering import Tempered

from .test_smc import (
    BETA,
    assert_within,
    discretised_gaussian,
    guidance_for,
    linear_energy,
    log_mean_z,
    population_estimates,
    quadratic_energy,
    run,
    tilted_quadratic,
)
from .test_smc import Z as Z_SE


@settings(max_examples=50, deadline=None)
@given(
    alpha=st.floats(1e-3, 1.0),
    sigma=st.floats(1e-3, 80.0),
    power=st.floats(0.1, 10.0),
)
def test_the_weight_rises_from_zero_to_one(alpha, sigma, power):
    """λ ∈ (0, 1]; exactly 1 without noise; falls with the noise and with the power; → 0 as α → 0."""
    tempered = Tempered(lambda *a, **k: None, power)
    a, s = torch.tensor([alpha], dtype=torch.float64), torch.tensor([sigma], dtype=torch.float64)
    lam = float(tempered.weight(a, s))
    assert 0 < lam <= 1
    assert float(tempered.weight(a, torch.zeros(1, dtype=torch.float64))) == 1.0
    assert float(tempered.weight(a, 2 * s)) < lam
    assert float(Tempered(None, power + 1).weight(a, s)) < lam
    assert float(tempered.weight(torch.zeros(1, dtype=torch.float64), s)) == 0.0


def quadratic_guidances(scheduler, model):
    """Guidances whose estimator is differentiated by autograd, by the Tweedie rule, a network, and
    the quadrature (7)."""
    net = IntermediateEnergyNet(2, hidden=16, beta=BETA).double()
    return {
        "paper": AnalyticEnergyGuidance(scheduler, model, quadratic_energy, BETA, variance=0.1),
        "tweedie": AnalyticEnergyGuidance(
            scheduler, model, quadratic_energy, BETA, variance=Constant(0.1), gradient="tweedie"
        ),
        "dps": dps_guidance(scheduler, model, quadratic_energy, BETA),
        "network": AnalyticEnergyGuidance(scheduler, model, estimator=net),
        "quadrature": AnalyticEnergyGuidance(
            scheduler, model, estimator=GaussianQuadrature(quadratic_energy, BETA, "jacobian")
        ),
    }


@pytest.mark.parametrize("kind", ["paper", "tweedie", "dps", "network", "quadrature"])
def test_tempered_energy_and_gradient_are_lambda_times_the_estimators(kind):
    """λ_t does not depend on x_t, so the tempered E_t and ∇E_t are λ_t times the estimator's, and
    the guided output moves λ_t times as far from the model's (no rescale)."""
    from energy_guidance.testing import GaussianMixture

    data = GaussianMixture.gaussian(torch.tensor([0.3, -0.2], dtype=torch.float64), 0.5)
    scheduler = diffusers.DDPMScheduler(clip_sample=False)
    scheduler.set_timesteps(20)
    guidance = quadratic_guidances(scheduler, data.noise_model(scheduler))[kind]
    tempered = guidance.replace(estimator=Tempered(guidance.estimator, 2.0))
    assert tempered.amortized == guidance.amortized
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in scheduler.timesteps[[2, 10, 18]]:
        alpha = scheduler.alphas_cumprod[t].double()
        lam = float((alpha / (alpha + (1 - alpha))) ** 2)  # α² = ᾱ, σ² = 1 - ᾱ
        assert 0 < lam < 1
        energy = guidance.intermediate_energy(x, t)
        torch.testing.assert_close(tempered.intermediate_energy(x, t), lam * energy)
        torch.testing.assert_close(tempered.energy_gradient(x, t), lam * guidance.energy_gradient(x, t))
        model_out = guidance.model(x, t)
        torch.testing.assert_close(
            tempered.guided_model_output(x, t) - model_out,
            lam * (guidance.guided_model_output(x, t) - model_out),
        )


def test_power_zero_is_the_estimator_itself():
    guidance, _ = guidance_for("ddpm", quadratic_energy, BETA)
    tempered = guidance.replace(estimator=Tempered(guidance.estimator, 0.0))
    guidance.scheduler.set_timesteps(10)
    x = torch.randn(4, 2, dtype=torch.float64)
    t = guidance.scheduler.timesteps[3]
    torch.testing.assert_close(tempered.guided_model_output(x, t), guidance.guided_model_output(x, t))


def test_smc_with_a_tempered_twist_returns_the_tilted_gaussian():
    """Tempering changes the path, not the target: DPS-style guidance tempered with p = 3 as twist
    and proposal (DPM-Solver++ SDE, B = 128, K = 64) returns the mean and second moment of
    q̃·exp(-β·E)/Z̃ for the quadratic energy, and log Z̃, within Z standard errors; its early
    steps hardly move the particles, so the final correction does real work (ESS < 0.9·K)."""
    name = "dpm++-sde"
    m, v = discretised_gaussian(name)
    mean, var, log_z = tilted_quadratic(m, v, BETA)
    guidance, eta = guidance_for(name, quadratic_energy, BETA, dps=True)
    result = run(guidance, eta, temper=3.0)
    assert_within(population_estimates(result, lambda x: x), mean, "mean")
    assert_within(population_estimates(result, lambda x: x**2), var + mean**2, "second moment")
    estimate, se = log_mean_z(result)
    assert abs(estimate - log_z) <= Z_SE * se, (estimate, log_z, se)
    assert float(result.ess.min()) < 0.9 * result.log_weights.shape[1]
    assert not torch.equal(result.samples, run(guidance, eta).samples)  # the tempering was applied


def test_bad_powers_are_rejected():
    guidance, _ = guidance_for("ddpm", linear_energy, BETA)
    for power in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="power"):
            Tempered(guidance.estimator, power)
        with pytest.raises(ValueError, match="power"):
            smc_sample(
                guidance.scheduler, guidance, (2, 2), num_particles=2, num_inference_steps=2, temper=power
            )
