"""baselines/dps.py: DPS-style guidance is the closed form without its variance term."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from energy_guidance.baselines import dps_guidance
from energy_guidance.schedulers import noise_level, to_eps_x0
from energy_guidance.testing import GaussianMixture
from energy_guidance.variance import Constant


def wavy(x):
    """A non-linear energy, so that DPS differs from every variance-aware estimator."""
    return torch.sin(2 * x[:, 0]) + 0.5 * x[:, 1] ** 2


@pytest.mark.parametrize("t", [100, 600])
def test_dps_guidance_is_the_gradient_of_beta_energy_at_the_posterior_mean(t):
    """E_t = β·E(x̂0(x_t)) and ∇E_t = β·(∂x̂0/∂x_t)ᵀ∇E(x̂0), computed here by hand with autograd."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    mix = GaussianMixture(torch.ones(3), torch.tensor([[-2.0, 0.0], [1.0, 1.5], [2.0, -1.0]]), 0.3)
    beta = 2.0
    model = mix.noise_model(scheduler)
    guidance = dps_guidance(scheduler, model, wavy, beta)
    assert guidance.estimator.variance == Constant(0.0)
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    tt = torch.tensor(t)
    alpha, sigma = noise_level(scheduler, tt)
    xr = x.clone().requires_grad_(True)
    x0_hat = to_eps_x0(model(xr, tt.expand(7)), xr, alpha, sigma, "epsilon").x0
    value = beta * wavy(x0_hat)
    (expected,) = torch.autograd.grad(value.sum(), xr)
    torch.testing.assert_close(guidance.intermediate_energy(x, tt), value.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(guidance.energy_gradient(x, tt), expected, rtol=1e-8, atol=1e-10)
    assert math.isfinite(float(expected.abs().max())) and float(expected.abs().max()) > 0
