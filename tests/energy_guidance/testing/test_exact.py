"""Exact intermediate energies, and the estimator identities the benchmarks rely on."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from energy_guidance import AnalyticEnergyGuidance
from energy_guidance.quadrature import gauss_hermite_rule
from energy_guidance.schedulers import noise_level
from energy_guidance.testing import (
    EmpiricalIntermediateEnergy,
    EmpiricalNoiseModel,
    GaussianMixture,
    GaussianMixtureIntermediateEnergy,
    empirical_log_potential,
    empirical_mixture,
)


def mixture() -> GaussianMixture:
    return GaussianMixture(
        torch.tensor([0.5, 0.3, 0.2]),
        torch.tensor([[-1.5, 0.0], [1.0, 1.0], [0.5, -1.5]]),
        torch.tensor([[0.3, 0.2], [0.1, 0.4], [0.25, 0.25]]),
    )


def wavy(x: torch.Tensor) -> torch.Tensor:
    """A smooth non-linear energy."""
    return torch.sin(2 * x[:, 0]) + 0.5 * x[:, 1] ** 2


def levels(t: int, n: int, scheduler=None):
    scheduler = scheduler or DDPMScheduler(num_train_timesteps=1000)
    alpha, sigma = noise_level(scheduler, torch.tensor(t))
    return alpha.expand(n), sigma.expand(n)


def test_gauss_hermite_rule_integrates_polynomials_exactly():
    nodes, log_w = gauss_hermite_rule(2, 4)  # exact up to degree 7 per coordinate
    w = log_w.exp()
    assert nodes.shape == (16, 2) and torch.isclose(w.sum(), torch.tensor(1.0, dtype=w.dtype))
    z1, z2 = nodes[:, 0], nodes[:, 1]
    assert torch.isclose((w * z1**2 * z2**2).sum(), torch.tensor(1.0, dtype=w.dtype))
    assert torch.isclose((w * z1**6).sum(), torch.tensor(15.0, dtype=w.dtype))  # E z⁶ = 15


def test_empirical_noise_model_matches_the_point_mass_mixture():
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(50, 2, generator=gen)
    x = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    for ptype in ("epsilon", "v_prediction"):
        scheduler = DDIMScheduler(num_train_timesteps=1000, prediction_type=ptype)
        fast, slow = EmpiricalNoiseModel(data, scheduler), empirical_mixture(data).noise_model(scheduler)
        for t in (0, 300, 999):
            tt = torch.full((16,), t)
            torch.testing.assert_close(fast(x, tt), slow(x, tt), rtol=1e-9, atol=1e-9)


def test_empirical_energy_is_minus_the_empirical_log_potential():
    gen = torch.Generator().manual_seed(1)
    data = torch.randn(40, 2, generator=gen)
    x = torch.randn(8, 2, generator=gen)
    alpha, sigma = levels(400, 8)
    net = EmpiricalIntermediateEnergy(data, 3.0, energy=wavy)
    expected = -empirical_log_potential(data, wavy(data), x, alpha, sigma, 3.0)
    torch.testing.assert_close(net(x, alpha, sigma).double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.all(EmpiricalIntermediateEnergy(data, 0.0, energy=wavy)(x, alpha, sigma).abs() < 1e-6)


def test_mixture_energy_with_linear_energy_equals_the_closed_form():
    # exp(-β·wᵀx) integrates against each Gaussian component in closed form (its MGF); the
    # 8-node rule's error is O((β‖w‖√s)^16/16!), far below float64 round-off here.
    mix, w, beta = mixture(), torch.tensor([0.7, -0.4]), 2.0
    net = GaussianMixtureIntermediateEnergy(mix, lambda x: x.double() @ w.double(), beta, order=8)
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for t in (50, 400, 900):
        alpha, sigma = levels(t, 10)
        expected = -mix.linear_log_potential(x, alpha, sigma, w, beta)
        torch.testing.assert_close(net(x, alpha, sigma), expected, rtol=1e-10, atol=1e-10)


def test_mixture_energy_matches_monte_carlo():
    # L_t = log E[exp(-β·E(x0)) | x_t] by sampling the exact posterior mixture; the estimate's
    # delta-method standard error s is returned per row, and |exact - MC| ≤ 5·s + 1e-6.
    mix, beta, n = mixture(), 1.5, 200_000
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 2, generator=gen, dtype=torch.float64) * 1.5
    alpha, sigma = levels(300, 6)
    net = GaussianMixtureIntermediateEnergy(mix, wavy, beta, order=10)
    exact = -net(x, alpha, sigma)
    w, means, variances = mix.posterior(x, alpha, sigma)
    for row in range(6):
        comp = torch.multinomial(w[row], n, replacement=True, generator=gen)
        x0 = means[row, comp] + variances[row, comp].sqrt() * torch.randn(
            n, 2, generator=gen, dtype=torch.float64
        )
        log_w = -beta * wavy(x0)
        estimate = torch.logsumexp(log_w, 0) - math.log(n)
        stderr = torch.exp(log_w - estimate).std() / math.sqrt(n)
        assert abs(float(exact[row] - estimate)) <= 5 * float(stderr) + 1e-6


def test_mixture_energy_is_differentiable():
    mix = mixture()
    net = GaussianMixtureIntermediateEnergy(mix, wavy, 2.0, order=4)
    alpha, sigma = levels(500, 3)
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: net(v, alpha, sigma), (x,))


def test_exact_guidance_gives_the_tilted_noise_model():
    # Guidance with the exact E_t turns the model's ε̂ into the noise prediction of the tilted
    # target, ε̂_p = ε̂_q + σ·∇E_t, pointwise. For a linear energy the tilted mixture is known.
    scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    mix, w, beta = mixture(), torch.tensor([0.7, -0.4], dtype=torch.float64), 2.0

    def energy(x):
        return x @ w.to(x)

    net = GaussianMixtureIntermediateEnergy(mix, energy, beta, order=6)
    guidance = AnalyticEnergyGuidance(scheduler, mix.noise_model(scheduler), beta=beta, estimator=net)
    tilted = mix.tilted(w, beta).noise_model(scheduler)
    x = torch.randn(12, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for t in (10, 250, 700, 999):
        tt = torch.tensor(t)
        torch.testing.assert_close(guidance.guided_model_output(x, tt), tilted(x, tt), rtol=1e-8, atol=1e-8)


def test_exact_empirical_guidance_gives_the_reweighted_set():
    # The tilted empirical distribution is the same points with weights softmax(-β·E(x_i)).
    scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    gen = torch.Generator().manual_seed(5)
    data, beta = torch.randn(30, 2, generator=gen, dtype=torch.float64), 1.5
    net = EmpiricalIntermediateEnergy(data, beta, energy=wavy)
    guidance = AnalyticEnergyGuidance(
        scheduler, EmpiricalNoiseModel(data, scheduler), beta=beta, estimator=net
    )
    reweighted = GaussianMixture(torch.softmax(-beta * wavy(data), 0), data, torch.zeros(()))
    x = torch.randn(10, 2, generator=gen, dtype=torch.float64)
    for t in (100, 500, 900):
        tt = torch.tensor(t)
        expected = reweighted.noise_model(scheduler)(x, tt.expand(10))
        torch.testing.assert_close(guidance.guided_model_output(x, tt), expected, rtol=1e-7, atol=1e-7)


def test_estimators_check_their_arguments():
    data = torch.randn(5, 2)
    with pytest.raises(ValueError, match="exactly one"):
        EmpiricalIntermediateEnergy(data, 1.0)
    with pytest.raises(ValueError, match="beta"):
        EmpiricalIntermediateEnergy(data, -1.0, energy=wavy)
    with pytest.raises(ValueError, match="unconditional"):
        alpha, sigma = levels(10, 5)
        EmpiricalIntermediateEnergy(data, 1.0, energy=wavy)(data, alpha, sigma, torch.zeros(5))
    with pytest.raises(ValueError, match="nodes"):
        GaussianMixtureIntermediateEnergy(mixture(), wavy, 1.0, order=100)
