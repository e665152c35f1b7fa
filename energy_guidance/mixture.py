"""A Gaussian mixture with one shared covariance, fitted to samples: the default estimator's
prior between the data's modes (:mod:`energy_guidance.importance`, docs/math.md (9)).

    q(x0) ≈ Σ_k π_k·N(x0; μ_k, W),      k = 1..K, W shared ("tied") by the components,

fitted by expectation–maximisation (EM) from a k-means++ start, for each K from 1 up to
``max_components``; K is the one with the lowest Bayesian information criterion

    BIC(K) = -2·log L + p·log N,      p = (K - 1) + K·d + d(d + 1)/2.

A shared W keeps every fit well posed with few samples per component (no component can
collapse onto one point) and makes the posterior covariance of every component the same,
S = W(I + (α²/σ²)·W)⁻¹, so one eigendecomposition of W serves them all. Shapes: samples (N, d),
flattened; ``means`` (K, d), ``weights`` (K,), ``axes`` (d, d) W's eigenvectors as columns,
``variance`` (d,) its eigenvalues. Everything is float64 and deterministic (a seeded start).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

MAX_COMPONENTS = 8  # the largest K tried
_ITERATIONS = 200  # EM iterations at most per K
_LLOYD = 10  # k-means iterations before EM
_TOLERANCE = 1e-8  # EM stops when the mean log-likelihood per sample gains less than this
_RIDGE = 1e-6  # W's floor, as a fraction of the samples' mean variance per dimension


@dataclass(frozen=True)
class TiedMixture:
    """Σ_k π_k·N(μ_k, W) with W = axes·diag(variance)·axesᵀ (module docstring for shapes)."""

    weights: Tensor
    means: Tensor
    axes: Tensor
    variance: Tensor

    @property
    def num_components(self) -> int:
        return len(self.weights)

    def to(self, device: torch.device) -> TiedMixture:
        """The same mixture on ``device``."""
        return TiedMixture(*(t.to(device) for t in (self.weights, self.means, self.axes, self.variance)))

    def posterior(self, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """The posterior of x0 given x_t = α·x0 + σ·ε, Σ_k r_k·N(m_k, S): (log r_k (B, K),
        normalised over k, m_k (B, K, d)), with x_t (B, d), α and σ (B,) and

            r_k ∝ π_k·N(x_t; α·μ_k, α²W + σ²I),   m_k = μ_k + (α/σ²)·S·(x_t - α·μ_k),
            S = W(I + (α²/σ²)·W)⁻¹."""
        a, s2 = alpha[:, None, None], (sigma**2)[:, None, None]
        centred = (x_t[:, None, :] - a * self.means[None]) @ self.axes  # (B, K, d) in W's frame
        lam = self.variance[None, None]
        spread = a**2 * lam + s2
        log_r = torch.log_softmax(self.weights.log()[None] - 0.5 * (centred**2 / spread).sum(2), 1)
        return log_r, self.means[None] + (a * lam / spread * centred) @ self.axes.T


def fit_tied_mixture(samples: Tensor, max_components: int = MAX_COMPONENTS, *, seed: int = 0) -> TiedMixture:
    """The tied Gaussian mixture with the lowest BIC over K = 1..``max_components`` fitted to
    ``samples`` (N, d) (module docstring), on the CPU. K stops growing once the BIC has risen twice in a row;
    K never exceeds N // 2 nor N - d - 1 (so that W, estimated from N - K degrees of freedom,
    has full rank)."""
    x = samples.reshape(len(samples), -1).to(device="cpu", dtype=torch.float64)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"a mixture needs at least 2 samples, got {n}")
    # centred: the covariance Σ x xᵀ - Σ n_k μ_k μ_kᵀ loses the spread to rounding under a large offset
    offset = x.mean(0)
    x = x - offset
    generator = torch.Generator(device="cpu").manual_seed(seed)
    ridge = _RIDGE * float(x.var(0).mean()) + torch.finfo(torch.float64).tiny
    best: tuple[float, TiedMixture] | None = None
    rises = 0
    for k in range(1, max(1, min(max_components, n // 2, n - d - 1)) + 1):
        mixture, log_likelihood = _em(x, _kmeans_plus_plus(x, k, generator), ridge)
        kept = mixture.num_components  # EM drops components that lose all their samples
        parameters = (kept - 1) + kept * d + d * (d + 1) / 2
        bic = -2 * log_likelihood + parameters * math.log(n)
        if best is None or bic < best[0]:
            best, rises = (bic, mixture), 0
        else:
            rises += 1
            if rises == 2:
                break
    assert best is not None
    fit = best[1]
    return TiedMixture(fit.weights, fit.means + offset, fit.axes, fit.variance)


def _kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k starting means (k, d) by k-means++ seeding (Arthur and Vassilvitskii 2007)."""
    first = int(torch.randint(len(x), (1,), generator=generator))
    centres = [x[first]]
    for _ in range(1, k):
        distance = torch.cdist(x, torch.stack(centres)).amin(1) ** 2
        total = distance.sum()
        if not bool(total > 0):  # fewer distinct points than components
            break
        choice = int(torch.multinomial((distance / total).float(), 1, generator=generator))
        centres.append(x[choice])
    return torch.stack(centres)


def _em(x: Tensor, means: Tensor, ridge: float) -> tuple[TiedMixture, float]:
    """EM for a tied mixture from starting ``means``: (the fit, its total log-likelihood)."""
    n, k = len(x), len(means)
    weights = torch.full((k,), 1 / k, dtype=x.dtype)
    for _ in range(_LLOYD):  # k-means from the start; then the first W is the clusters' pooled spread
        assign = torch.nn.functional.one_hot(torch.cdist(x, means).argmin(1), k).to(x)
        count = assign.sum(0)
        means = torch.where(count[:, None] > 0, assign.T @ x / count.clamp_min(1)[:, None], means)
    covariance = _tied_covariance(x, means, assign, ridge)
    previous = -math.inf
    log_likelihood = -math.inf
    for _ in range(_ITERATIONS):
        log_joint = _log_joint(x, weights, means, covariance)  # (N, K)
        per_sample = torch.logsumexp(log_joint, 1)
        log_likelihood = float(per_sample.sum())
        resp = (log_joint - per_sample[:, None]).exp()
        mass = resp.sum(0)
        keep = mass > 1e-8 * n  # a component that lost all its samples is dropped
        resp, mass = resp[:, keep], mass[keep]
        weights = mass / n
        means = (resp.T @ x) / mass[:, None]
        covariance = _tied_covariance(x, means, resp, ridge)
        if log_likelihood - previous < _TOLERANCE * n:
            break
        previous = log_likelihood
    variance, axes = torch.linalg.eigh(covariance)
    mixture = TiedMixture(weights=weights, means=means, axes=axes, variance=variance.clamp_min(ridge))
    return mixture, float(torch.logsumexp(_log_joint(x, weights, means, covariance), 1).sum())


def _tied_covariance(x: Tensor, means: Tensor, resp: Tensor, ridge: float) -> Tensor:
    """W = Σ_ik r_ik·(x_i - μ_k)(x_i - μ_k)ᵀ / N + ridge·I."""
    second = x.T @ x - means.T @ (resp.sum(0)[:, None] * means)  # Σ_i x_i x_iᵀ - Σ_k n_k μ_k μ_kᵀ
    covariance = second / len(x)
    covariance = 0.5 * (covariance + covariance.T)
    return covariance + ridge * torch.eye(x.shape[1], dtype=x.dtype)


def _log_joint(x: Tensor, weights: Tensor, means: Tensor, covariance: Tensor) -> Tensor:
    """log π_k + log N(x_i; μ_k, W) (N, K)."""
    chol = torch.linalg.cholesky(covariance)
    white_x = torch.linalg.solve_triangular(chol, x.T, upper=False).T  # (N, d)
    white_m = torch.linalg.solve_triangular(chol, means.T, upper=False).T  # (K, d)
    mahalanobis = torch.cdist(white_x, white_m) ** 2
    log_det = 2 * chol.diagonal().log().sum()
    return weights.log()[None] - 0.5 * (mahalanobis + log_det + x.shape[1] * math.log(2 * math.pi))
