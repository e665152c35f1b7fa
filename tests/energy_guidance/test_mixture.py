"""mixture.py: the tied Gaussian mixture the default estimator fits to the table's samples.

The fit is checked against the mixture that drew the samples, within Z standard errors of the
maximum-likelihood estimates (weights √(π(1-π)/N), means √(W_jj/(N·π_k)), W's entries
√((W_ii·W_jj + W_ij²)/N)); the posterior terms against the exact posterior of that mixture
(testing.GaussianMixture with equal variances in every component).
"""

import pytest
import torch

from energy_guidance.mixture import _RIDGE, TiedMixture, fit_tied_mixture
from energy_guidance.testing import GaussianMixture

Z = 5.0
WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
MEANS = torch.tensor([[-4.0, 0.0, 1.0], [4.0, 1.0, 0.0], [0.0, -5.0, 2.0]], dtype=torch.float64)
VARIANCE = torch.tensor([0.5, 1.0, 0.25], dtype=torch.float64)  # W = diag(VARIANCE), shared


def truth() -> GaussianMixture:
    return GaussianMixture(WEIGHTS, MEANS, VARIANCE.expand(3, 3))


def matched(fit: TiedMixture) -> TiedMixture:
    """``fit`` with its components in the order of MEANS (nearest mean)."""
    order = torch.cdist(MEANS, fit.means).argmin(1)
    return TiedMixture(fit.weights[order], fit.means[order], fit.axes, fit.variance)


def test_fit_recovers_the_mixture_that_drew_the_samples():
    n = 4096
    x = truth().sample(n, torch.Generator().manual_seed(0)).double()
    fit = fit_tied_mixture(x)
    assert fit.num_components == 3
    fit = matched(fit)
    assert bool(((fit.weights - WEIGHTS).abs() <= Z * (WEIGHTS * (1 - WEIGHTS) / n).sqrt()).all())
    se_means = (VARIANCE[None] / (n * WEIGHTS[:, None])).sqrt()
    assert bool(((fit.means - MEANS).abs() <= Z * se_means).all()), (fit.means - MEANS).tolist()
    covariance = fit.axes @ torch.diag(fit.variance) @ fit.axes.T
    w = torch.diag(VARIANCE)
    se_cov = ((VARIANCE[:, None] * VARIANCE[None] + w**2) / n).sqrt()
    assert bool(((covariance - w).abs() <= Z * se_cov).all()), (covariance - w).tolist()


def test_gaussian_samples_fit_one_component():
    """A single correlated Gaussian: the BIC keeps K = 1, and W is the samples' covariance (plus
    the fit's ridge)."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64)
    x = torch.randn(1024, 4, generator=g, dtype=torch.float64) @ a.T + 3
    fit = fit_tied_mixture(x)
    assert fit.num_components == 1
    covariance = fit.axes @ torch.diag(fit.variance) @ fit.axes.T
    ridge = _RIDGE * float(x.var(0).mean()) * torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(covariance, torch.cov(x.T, correction=0) + ridge, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(fit.means[0], x.mean(0))


def test_the_fit_is_deterministic_and_few_samples_fit_one_component():
    x = truth().sample(256, torch.Generator().manual_seed(2)).double()
    first, second = fit_tied_mixture(x), fit_tied_mixture(x)
    assert torch.equal(first.means, second.means) and torch.equal(first.variance, second.variance)
    # no more components than N - d - 1: 4 samples in 3 dimensions have no room for a second
    assert fit_tied_mixture(x[:4]).num_components == 1
    with pytest.raises(ValueError, match="at least 2 samples"):
        fit_tied_mixture(x[:1])


def rotated_case(alpha: float, sigma: float, seed: int):
    """(q, the mixture rotated by q, x_t (64, 3), α (64,), σ (64,)): W = q·diag(VARIANCE)·qᵀ has
    eigenvectors q's columns, so that its frame is not the identity; x_t = α·x0 + σ·ε with x0 drawn
    from the rotated mixture (seeds ``seed`` to ``seed + 2``)."""
    q, _ = torch.linalg.qr(
        torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    mixture = TiedMixture(WEIGHTS, MEANS @ q.T, q, VARIANCE)
    x0 = truth().sample(64, torch.Generator().manual_seed(seed + 1)).double() @ q.T
    a, s = torch.full((64,), alpha, dtype=torch.float64), torch.full((64,), sigma, dtype=torch.float64)
    noise = torch.randn(64, 3, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64)
    return q, mixture, alpha * x0 + sigma * noise, a, s


@pytest.mark.parametrize("alpha, sigma", [(1.0, 0.1), (0.8, 0.6), (0.05, 1.0)])
def test_posterior_terms_are_the_exact_posterior_of_the_mixture(alpha, sigma):
    """TiedMixture.posterior: r_k(x_t) and m_k(x_t) are the exact posterior weights and component means of
    Σ_k π_k·N(μ_k, W) given x_t = α·x0 + σ·ε (W rotated, so that its frame is not the identity)."""
    q, mixture, x_t, a, s = rotated_case(alpha, sigma, seed=3)
    # the exact posterior computed in the unrotated frame, where W is diagonal
    weights, means, _ = truth().posterior(x_t @ q, a, s)
    log_r, component_means = mixture.posterior(x_t, a, s)
    torch.testing.assert_close(log_r.exp(), weights, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(component_means, means @ q.T, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("alpha, sigma", [(1.0, 0.1), (0.8, 0.6), (0.05, 1.0), (1.0, 1e-4)])
def test_responsibilities_and_mean_offsets_are_those_of_the_exact_posterior(alpha, sigma):
    """What the default estimator reads of the posterior without forming every component mean:
    log r_k (log_responsibilities) and m_k - Σ_j r_j·m_j for chosen (row, component) pairs
    (mean_offsets), against the exact posterior of the rotated mixture, as above."""
    q, mixture, x_t, a, s = rotated_case(alpha, sigma, seed=6)
    weights, means, _ = truth().posterior(x_t @ q, a, s)
    log_r = mixture.log_responsibilities(x_t, a, s)
    torch.testing.assert_close(log_r.exp(), weights, rtol=1e-9, atol=1e-12)
    rows = torch.tensor([0, 0, 0, 5, 17, 63, 63])
    comps = torch.tensor([0, 1, 2, 1, 2, 0, 2])
    mean = (weights[:, :, None] * means).sum(1)  # Σ_j r_j·m_j (B, d)
    expected = (means[rows, comps] - mean[rows]) @ q.T
    torch.testing.assert_close(mixture.mean_offsets(log_r, a, s, rows, comps), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sigma", [1e-2, 1e-4, 1e-6])
def test_responsibilities_keep_their_precision_under_a_large_offset(sigma):
    """Two modes 0.05 apart in a coordinate, the data offset by 3,000 in another, x_t between the
    modes so that both have weight: log_responsibilities equals posterior's log r_k (which
    subtracts before squaring). Expanded from the origin, the terms were of the order of the
    offset squared over σ², and log r_k was off by 0.25 at σ = 1e-4 and by 8 at σ = 1e-6."""
    g = torch.Generator().manual_seed(0)
    n, d, b = 400, 4, 256
    x = 0.01 * torch.randn(n, d, generator=g, dtype=torch.float64)
    x[:, 0] = 3000.0
    x[: n // 2, 1] += 0.05
    mixture = fit_tied_mixture(x)
    assert mixture.num_components == 2
    alpha = (1 - sigma**2) ** 0.5
    x0 = x[torch.randint(0, n, (b,), generator=g)].clone()
    x0[:, 1] = 0.025 + 0.03 * torch.randn(b, generator=g, dtype=torch.float64)  # between the modes
    x_t = alpha * x0 + sigma * torch.randn(b, d, generator=g, dtype=torch.float64)
    a, s = torch.full((b,), alpha, dtype=torch.float64), torch.full((b,), sigma, dtype=torch.float64)
    expected, _ = mixture.posterior(x_t, a, s)
    got = mixture.log_responsibilities(x_t, a, s)
    assert bool(((expected.exp() > 0.01) & (expected.exp() < 0.99)).any())  # mixed weights occur
    torch.testing.assert_close(got.exp(), expected.exp(), rtol=0, atol=1e-9)
    kept = expected > -30
    torch.testing.assert_close(got[kept], expected[kept], rtol=0, atol=1e-6)


def test_a_large_offset_does_not_cost_the_spread():
    """Samples far from the origin (a coordinate constant at 3,000, the others spread 0.01): the
    fit still finds the two modes, their means within Z standard errors. (Computed as
    Σ x xᵀ - Σ n_k μ_k μ_kᵀ, W lost the spread to rounding and was not positive definite.)"""
    n = 256
    modes = torch.tensor([[-0.1, 0.0, 0.0, 3000.0], [0.1, 0.0, 0.0, 3000.0]], dtype=torch.float64)
    for seed in range(5):
        noise = 0.01 * torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        x = modes[torch.arange(n) % 2] + noise * torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
        fit = fit_tied_mixture(x)
        assert fit.num_components == 2, seed
        order = fit.means[:, 0].argsort()
        assert bool(((fit.means[order] - modes).abs() <= Z * 0.01 / (n / 2) ** 0.5).all()), fit.means.tolist()
