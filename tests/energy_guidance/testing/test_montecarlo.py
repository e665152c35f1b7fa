"""montecarlo.py: the ground-truth estimators themselves, against brute force and exact values."""

import math

import torch

from energy_guidance.testing import (
    empirical_log_potential,
    gaussian_log_potential_mc,
    importance_resample,
)

Z = 5.0  # standard errors allowed between a Monte Carlo estimate and its target


def test_empirical_log_potential_matches_brute_force():
    """q(x0 | x_t) ∝ N(x_t; α·x_i, σ²I) on a 6-point data set, summed term by term."""
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    energies = torch.randn(6, generator=gen, dtype=torch.float64)
    x_t = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    alpha = torch.tensor([0.9, 0.6, 0.3], dtype=torch.float64)
    sigma = (1 - alpha**2).sqrt()
    beta = 1.3
    value = empirical_log_potential(data, energies, x_t, alpha, sigma, beta)
    for b in range(3):
        a, s = float(alpha[b]), float(sigma[b])
        weights = [
            math.exp(-sum((float(x_t[b, j]) - a * float(xi[j])) ** 2 for j in range(2)) / (2 * s * s))
            for xi in data
        ]
        tilted = sum(wi * math.exp(-beta * float(ei)) for wi, ei in zip(weights, energies, strict=True))
        assert abs(float(value[b]) - math.log(tilted / sum(weights))) <= 1e-12


def test_empirical_log_potential_is_stable_at_low_noise():
    """As σ -> 0 the posterior collapses on the nearest data point: L -> -β·E(nearest), with no
    underflow (the Gaussian weights are ~exp(-1e6) here)."""
    data = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    energies = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    x_t = torch.tensor([[0.98, 0.01], [0.02, 0.97]], dtype=torch.float64)
    value = empirical_log_potential(data, energies, x_t, 1.0, 1e-3, beta=2.0)
    assert torch.isfinite(value).all()
    torch.testing.assert_close(value, torch.tensor([2.0, -4.0], dtype=torch.float64))


def _linear_problem():
    mean = torch.tensor([0.3, -1.0], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    w = torch.tensor([0.6, -0.4], dtype=torch.float64)
    return mean, cov, w


def test_gaussian_mc_standard_error_is_calibrated():
    """z = (estimate - exact) / stderr over 400 independent estimates is ~N(0, 1).

    E(x) = wᵀx with β²·wᵀΣw ≈ 0.3, 2000 samples per estimate. Over R = 400 repeats, the mean of z
    has standard error 1/√R = 0.05 and the standard deviation of z ~1/√(2R) = 0.035; 4 of each.
    """
    mean, cov, w = _linear_problem()
    beta, repeats = 1.0, 400
    exact = -beta * mean @ w + 0.5 * beta**2 * w @ cov @ w
    estimate, stderr = gaussian_log_potential_mc(
        lambda x: x @ w,
        mean.expand(repeats, 2),
        cov,
        beta,
        num_samples=2000,
        generator=torch.Generator().manual_seed(3),
    )
    z = (estimate - exact) / stderr
    assert abs(float(z.mean())) <= 4 / math.sqrt(repeats)
    assert abs(float(z.std()) - 1) <= 4 / math.sqrt(2 * repeats)


def test_gaussian_mc_covariance_forms_agree():
    """Σ = c·I given as a float, a (d,) diagonal, or a (d, d) matrix draws the same samples."""
    mean = torch.zeros(2, 3, dtype=torch.float64)

    def energy(x):
        return x.pow(2).sum(1) + x[:, 0]

    results = [
        gaussian_log_potential_mc(energy, mean, cov, 0.7, 500, generator=torch.Generator().manual_seed(1))
        for cov in (0.4, torch.full((3,), 0.4, dtype=torch.float64), 0.4 * torch.eye(3, dtype=torch.float64))
    ]
    for estimate, stderr in results[1:]:
        torch.testing.assert_close(estimate, results[0][0], rtol=0, atol=1e-12)
        torch.testing.assert_close(stderr, results[0][1], rtol=0, atol=1e-12)


def test_gaussian_mc_passes_each_rows_condition():
    """cond (B, ...) is repeated so that every sample of row b sees cond[b]."""
    mean, cov, _ = _linear_problem()
    ws = torch.tensor([[0.5, 0.0], [0.0, -0.5], [0.3, 0.3]], dtype=torch.float64)
    beta = 0.8
    estimate, stderr = gaussian_log_potential_mc(
        lambda x, c: (x * c).sum(1),
        mean.expand(3, 2),
        cov,
        beta,
        20_000,
        cond=ws,
        generator=torch.Generator().manual_seed(2),
    )
    exact = -beta * ws @ mean + 0.5 * beta**2 * ((ws @ cov) * ws).sum(1)
    assert ((estimate - exact).abs() <= Z * stderr).all()


def test_importance_resample_targets_the_tilted_gaussian():
    """Samples of N(m, vI) resampled with weights exp(-β·wᵀx) follow N(m - β·v·w, vI).

    Error of the resampled mean = self-normalised importance-sampling error (delta-method SE
    sqrt(Σ wᵢ²(xᵢ - x̄_w)²) / Σ wᵢ) + multinomial resampling error (SE sqrt(v / n)), independent.
    """
    gen = torch.Generator().manual_seed(4)
    m, v, beta = torch.tensor([0.5, -0.2], dtype=torch.float64), 0.6, 1.5
    w = torch.tensor([0.4, 0.3], dtype=torch.float64)
    n = 40_000
    samples = m + math.sqrt(v) * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    energies = samples @ w
    resampled = importance_resample(samples, energies, beta, n, generator=gen)
    assert torch.isin(resampled[:, 0], samples[:, 0]).all()  # rows of the input, nothing new

    weights = torch.softmax(-beta * energies, dim=0)
    is_mean = weights @ samples
    se_is = (weights[:, None] ** 2 * (samples - is_mean) ** 2).sum(0).sqrt()
    se = (se_is**2 + v / n).sqrt()
    target = m - beta * v * w
    assert ((resampled.mean(0) - target).abs() <= Z * se).all()
    # A linear tilt leaves the spread at v. The resampled variance carries the importance error
    # (effective sample size 1/Σwᵢ²) and the resampling error (n draws): for Gaussian data its
    # SE is v·sqrt(2·(1/ESS + 1/n)).
    ess = 1 / float(weights.pow(2).sum())
    se_var = v * math.sqrt(2 * (1 / ess + 1 / n))
    assert ((resampled.var(0) - v).abs() <= Z * se_var).all()
