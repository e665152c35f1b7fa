"""toys.py: the exact Gaussian-mixture noise models, posteriors and tilted targets.

Each closed form is checked against an independent computation: torch.distributions densities
differentiated by autograd, 1-D quadrature, Tweedie's identities, or Monte Carlo.
"""

import math

import diffusers
import pytest
import torch
from torch import distributions as D

from energy_guidance.schedulers import noise_level, to_eps_x0
from energy_guidance.testing import GaussianMixture

Z = 5.0  # standard errors allowed between a Monte Carlo estimate and its target


def mixture() -> GaussianMixture:
    """Three components in 2-D with unequal weights and per-dimension variances."""
    return GaussianMixture(
        weights=torch.tensor([0.5, 0.3, 0.2]),
        means=torch.tensor([[-1.5, 0.5], [1.0, 1.0], [0.5, -2.0]]),
        variances=torch.tensor([[0.3, 0.2], [0.5, 0.1], [0.2, 0.6]]),
    )


def direct_log_density(gm: GaussianMixture, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """log q_t(x) = log Σ_k π_k N(x; α·μ_k, diag(α²·v_k + σ²)), written with torch.distributions."""
    components = D.Independent(D.Normal(alpha * gm.means, (alpha**2 * gm.variances + sigma**2).sqrt()), 1)
    return D.MixtureSameFamily(D.Categorical(gm.weights), components).log_prob(x)


def points(n: int, seed: int = 0) -> torch.Tensor:
    return 2.0 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(("alpha", "sigma"), [(0.95, 0.3122), (0.6, 0.8), (0.1, 0.995), (1.0, 0.05)])
def test_noise_prediction_is_minus_sigma_times_the_score(alpha, sigma):
    gm = mixture()
    x = points(64).requires_grad_(True)
    (score,) = torch.autograd.grad(direct_log_density(gm, x, alpha, sigma).sum(), x)
    a, s = torch.tensor(alpha, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64)
    torch.testing.assert_close(gm.noise_prediction(x.detach(), a, s), -sigma * score, rtol=1e-10, atol=1e-12)


def test_noise_prediction_accepts_per_sample_noise_levels():
    gm = mixture()
    x = points(3)
    alpha = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)
    sigma = (1 - alpha**2).sqrt()
    batched = gm.noise_prediction(x, alpha, sigma)
    for i in range(3):
        torch.testing.assert_close(batched[i : i + 1], gm.noise_prediction(x[i : i + 1], alpha[i], sigma[i]))


def test_log_prob_matches_torch_distributions():
    gm = mixture()
    x = points(50)
    torch.testing.assert_close(gm.log_prob(x), direct_log_density(gm, x, 1.0, 0.0))


def test_posterior_moments_match_quadrature_in_one_dimension():
    """q(x0 | x_t) ∝ q(x0)·N(x_t; α·x0, σ²) integrated on a fine grid (trapezoid rule)."""
    gm = GaussianMixture(
        torch.tensor([0.7, 0.3]), torch.tensor([[-1.0], [2.0]]), torch.tensor([[0.4], [0.9]])
    )
    grid = torch.linspace(-15, 15, 60_001, dtype=torch.float64)
    log_prior = gm.log_prob(grid[:, None])
    beta, w = 0.8, torch.tensor([1.3], dtype=torch.float64)
    for x_t, alpha in [(0.3, 0.8), (-1.2, 0.5), (2.5, 0.95)]:
        sigma = math.sqrt(1 - alpha**2)
        log_post = log_prior - (x_t - alpha * grid) ** 2 / (2 * sigma**2)
        post = torch.exp(log_post - log_post.max())
        post = post / torch.trapezoid(post, grid)
        mean = torch.trapezoid(post * grid, grid)
        var = torch.trapezoid(post * (grid - mean) ** 2, grid)
        log_mgf = torch.log(torch.trapezoid(post * torch.exp(-beta * w * grid), grid))

        xt = torch.tensor([[x_t]], dtype=torch.float64)
        a, s = torch.tensor(alpha, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64)
        got_mean, got_cov = gm.posterior_moments(xt, a, s)
        # Grid step 5e-4 on smooth integrands: trapezoid error ~1e-9; tails beyond ±15 negligible.
        torch.testing.assert_close(got_mean[0, 0], mean, rtol=0, atol=1e-7)
        torch.testing.assert_close(got_cov[0, 0, 0], var, rtol=0, atol=1e-7)
        torch.testing.assert_close(gm.posterior_mean(xt, a, s)[0, 0], mean, rtol=0, atol=1e-7)
        torch.testing.assert_close(gm.linear_log_potential(xt, a, s, w, beta)[0], log_mgf, rtol=0, atol=1e-7)


@pytest.mark.parametrize("alpha", [0.9, 0.5, 0.15])
def test_posterior_moments_satisfy_tweedies_identities(alpha):
    """E[x0 | x_t] = (x_t - σ·ε̂)/α and Cov[x0 | x_t] = σ²/α²·(I - σ·∂ε̂/∂x_t) for the exact ε̂."""
    gm = mixture()
    a = torch.tensor(alpha, dtype=torch.float64)
    s = (1 - a**2).sqrt()
    x = points(10, seed=1)
    mean, cov = gm.posterior_moments(x, a, s)
    torch.testing.assert_close(mean, (x - s * gm.noise_prediction(x, a, s)) / a)
    for i in range(len(x)):
        jac = torch.autograd.functional.jacobian(lambda y: gm.noise_prediction(y[None], a, s)[0], x[i])
        expected = s**2 / a**2 * (torch.eye(2, dtype=torch.float64) - s * jac)
        torch.testing.assert_close(cov[i], expected, rtol=1e-8, atol=1e-10)


def test_sample_moments_match_mean_and_covariance():
    gm = mixture()
    n = 50_000
    x = gm.sample(n, generator=torch.Generator().manual_seed(2)).double()
    cov = gm.covariance()
    # Mean: SE sqrt(Σ_ii / n). Covariance entries: SE of a sample covariance is at most
    # sqrt(E[(x_i - μ_i)²(x_j - μ_j)²] / n), estimated from the samples themselves.
    assert ((x.mean(0) - gm.mean()).abs() <= Z * (cov.diagonal() / n).sqrt()).all()
    centred = x - gm.mean()
    fourth = (centred[:, :, None] ** 2 * centred[:, None, :] ** 2).mean(0)
    assert ((torch.cov(x.T) - cov).abs() <= Z * (fourth / n).sqrt()).all()


def test_tilted_density_is_prior_times_exp_minus_beta_energy():
    """log p(x) - (log q(x) - β·wᵀx) is the same constant -log Z for every x, and Z = E_q[exp(-β·wᵀx)]
    agrees with Monte Carlo."""
    gm, beta = mixture(), 0.9
    w = torch.tensor([0.7, -0.4], dtype=torch.float64)
    p = gm.tilted(w, beta)
    x = points(40, seed=3)
    log_z = -(p.log_prob(x) - gm.log_prob(x) + beta * x @ w)
    torch.testing.assert_close(log_z, log_z[0].expand(40), rtol=0, atol=1e-10)

    n = 200_000
    weights = torch.exp(-beta * gm.sample(n, generator=torch.Generator().manual_seed(4)).double() @ w)
    se = weights.std() / (weights.mean() * math.sqrt(n))  # delta method for log of a mean
    assert abs(float(torch.log(weights.mean()) - log_z[0])) <= Z * float(se)


def test_tilted_moments_match_importance_weighting():
    """Mean and covariance of the tilted mixture against self-normalised importance sampling from q
    (delta-method standard errors of weighted means)."""
    gm, beta = mixture(), 0.9
    w = torch.tensor([0.7, -0.4], dtype=torch.float64)
    p = gm.tilted(w, beta)
    x = gm.sample(200_000, generator=torch.Generator().manual_seed(5)).double()
    weights = torch.softmax(-beta * x @ w, dim=0)

    def weighted(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        est = weights @ f
        return est, (weights[:, None] ** 2 * (f - est) ** 2).sum(0).sqrt()

    mean, se_mean = weighted(x)
    assert ((mean - p.mean()).abs() <= Z * se_mean).all()
    centred = x - p.mean()  # centred at the exact mean: second moments estimate Cov directly
    second, se_second = weighted((centred[:, :, None] * centred[:, None, :]).reshape(len(x), 4))
    assert ((second - p.covariance().reshape(4)).abs() <= Z * se_second).all()


def test_linear_log_potential_matches_monte_carlo_from_the_posterior():
    """log E[exp(-β·wᵀx0) | x_t] with x0 drawn from the exact posterior mixture."""
    gm, beta = mixture(), 1.2
    w = torch.tensor([0.5, 0.8], dtype=torch.float64)
    x_t = points(4, seed=6)
    alpha = torch.tensor([0.8, 0.8, 0.4, 0.4], dtype=torch.float64)
    sigma = (1 - alpha**2).sqrt()
    exact = gm.linear_log_potential(x_t, alpha, sigma, w, beta)
    weights, means, variances = gm.posterior(x_t, alpha, sigma)
    gen, n = torch.Generator().manual_seed(7), 50_000
    for b in range(4):
        comp = torch.multinomial(weights[b], n, replacement=True, generator=gen)
        x0 = means[b, comp] + variances[b, comp].sqrt() * torch.randn(
            n, 2, generator=gen, dtype=torch.float64
        )
        f = torch.exp(-beta * x0 @ w)
        se = f.std() / (f.mean() * math.sqrt(n))
        assert abs(float(torch.log(f.mean()) - exact[b])) <= Z * float(se)


@pytest.mark.parametrize(
    "scheduler",
    [
        diffusers.DDPMScheduler(),
        diffusers.DDPMScheduler(prediction_type="v_prediction"),
        diffusers.DDPMScheduler(prediction_type="sample"),
        diffusers.EulerDiscreteScheduler(),
        diffusers.FlowMatchEulerDiscreteScheduler(),
    ],
    ids=["eps", "v", "sample", "euler", "flow"],
)
def test_noise_model_output_decodes_to_the_exact_noise_and_posterior_mean(scheduler):
    gm = mixture()
    for t in (50, 500, 950):
        x = points(8).float()
        alpha, sigma = noise_level(scheduler, t)
        out = gm.noise_model(scheduler)(x, torch.full((8,), t))
        eps, x0 = to_eps_x0(
            out.double(), x.double(), alpha, sigma, scheduler.config.get("prediction_type", "flow_prediction")
        )
        torch.testing.assert_close(eps, gm.noise_prediction(x.double(), alpha, sigma), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(x0, gm.posterior_mean(x.double(), alpha, sigma), rtol=1e-4, atol=1e-4)


def test_noise_model_is_finite_at_pure_noise():
    """At α = 0 (first flow-matching step) the model returns ε̂ = x_t and x̂0 = E[x0], not 0/0."""
    gm = mixture()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler()
    x = points(5).float()
    out = gm.noise_model(scheduler)(x, torch.full((5,), 1000.0))
    torch.testing.assert_close(out, (x - gm.mean().float()).expand(5, 2))


def test_gaussian_constructor():
    g = GaussianMixture.gaussian([1.0, -1.0, 0.0], 0.5)
    assert g.dim == 3 and g.means.shape == (1, 3) and g.variances.shape == (1, 3)
    torch.testing.assert_close(g.covariance(), 0.5 * torch.eye(3, dtype=torch.float64))


def test_quadratic_tilt_equals_numerical_integration_in_one_dimension():
    """Each component's normaliser, mean and variance, and log Z, against a fine grid (d = 1)."""
    mix = GaussianMixture(
        torch.tensor([0.7, 0.3]), torch.tensor([[-1.0], [2.0]]), torch.tensor([[0.3], [0.1]])
    )
    c, k, beta = torch.tensor([1.5]), 2.0, 1.7
    target, log_z = mix.quadratic_tilted(c, k, beta)
    x = torch.linspace(-12, 12, 400_001, dtype=torch.float64)[:, None]
    dx = float(x[1, 0] - x[0, 0])
    density = torch.exp(mix.log_prob(x) - beta * 0.5 * k * (x[:, 0] - c.double()) ** 2)
    z = float(density.sum() * dx)
    assert log_z == pytest.approx(math.log(z), abs=1e-9)
    p = density / (density.sum() * dx)
    assert torch.allclose(torch.exp(target.log_prob(x)), p, atol=1e-9)
    mean = float((p * x[:, 0]).sum() * dx)
    assert float(target.mean()[0]) == pytest.approx(mean, abs=1e-9)
