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

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

MAX_COMPONENTS = 8  # the largest K tried
_ITERATIONS = 200  # EM iterations at most per K
_LLOYD = 10  # k-means iterations before EM
_TOLERANCE = 1e-5  # EM stops when the mean log-likelihood per sample gains less than this
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

    def log_responsibilities(self, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """log r_k (B, K) of :meth:`posterior` without the component means. In W's frame, relative
        to the means' centre c (ξ = Vᵀ(x_t - α·c), ν_k = Vᵀ(μ_k - c), s = α²λ + σ²), the exponent
        -½·Σ_d (ξ - α·ν_k)²/s is, up to a term the same for every k, α·Σ_d ξ·ν_k/s - ½α²·Σ_d ν_k²/s:
        two (B, d) × (d, K) products. Taken from c, the terms are of the order of the distances
        between the means, not of the data's offset, over s (which is σ² at small σ)."""
        a, s2 = alpha[:, None], (sigma**2)[:, None]
        centre, frame_means = self.frame_means
        inverse = 1 / (a**2 * self.variance[None] + s2)  # (B, d)
        xi = (x_t - a * centre[None]) @ self.axes
        exponent = a * (xi * inverse) @ frame_means.T - 0.5 * a**2 * inverse @ frame_means.T**2
        return torch.log_softmax(self.weights.log()[None] + exponent, 1)

    def mean_offsets(
        self, log_r: Tensor, alpha: Tensor, sigma: Tensor, rows: Tensor, comps: Tensor
    ) -> Tensor:
        """m_k - Σ_j r_j·m_j (P, d) of :meth:`posterior` for the (row, component) pairs
        (``rows[p]``, ``comps[p]``), with ``log_r`` (B, K) from :meth:`log_responsibilities` and α, σ
        (B,): by m_k = μ_k + (α/σ²)·S·(x_t - α·μ_k) the x_t terms cancel, leaving
        (I - (α²/σ²)·S)(μ_k - Σ_j r_j·μ_j) = V·diag(σ²/(σ² + α²λ))·Vᵀ(μ_k - Σ_j r_j·μ_j)."""
        _, frame_means = self.frame_means
        mean = log_r.exp() @ frame_means  # (B, d): Σ_j r_j·ν_j
        a, s2 = alpha[rows, None], (sigma[rows] ** 2)[:, None]
        shrink = s2 / (a**2 * self.variance[None] + s2)
        return ((frame_means[comps] - mean[rows]) * shrink) @ self.axes.T

    @functools.cached_property
    def frame_means(self) -> tuple[Tensor, Tensor]:
        """(c (d,), the means' centre; ν = (μ - c)·V (K, d), the means from it in W's frame),
        computed once per mixture (both methods above read it at every guided step)."""
        centre = self.means.mean(0)
        return centre, (self.means - centre) @ self.axes


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
    second = x.T @ x  # Σ_i x_i x_iᵀ, the same at every iteration
    squares = x.square().sum(1)
    for _ in range(_LLOYD):  # k-means from the start; then the first W is the clusters' pooled spread
        assign = torch.nn.functional.one_hot(_squared_distances(x, squares, means).argmin(1), k).to(x)
        count = assign.sum(0)
        means = torch.where(count[:, None] > 0, assign.T @ x / count.clamp_min(1)[:, None], means)
    covariance = _tied_covariance(second, n, means, assign, ridge)
    previous = -math.inf
    log_likelihood = -math.inf
    for _ in range(_ITERATIONS):
        log_joint = _log_joint(x, weights, means, covariance)  # (N, K)
        per_sample = torch.logsumexp(log_joint, 1)
        log_likelihood = float(per_sample.sum())
        resp = (log_joint - per_sample[:, None]).exp()
        mass = resp.sum(0)
        keep = mass > 1e-8 * n  # a component that lost all its samples is dropped
        if not bool(keep.all()):
            resp, mass = resp[:, keep], mass[keep]
        weights = mass / n
        means = (resp.T @ x) / mass[:, None]
        covariance = _tied_covariance(second, n, means, resp, ridge)
        if log_likelihood - previous < _TOLERANCE * n:
            break
        previous = log_likelihood
    variance, axes = torch.linalg.eigh(covariance)
    mixture = TiedMixture(weights=weights, means=means, axes=axes, variance=variance.clamp_min(ridge))
    return mixture, float(torch.logsumexp(_log_joint(x, weights, means, covariance), 1).sum())


def _squared_distances(x: Tensor, squares: Tensor, means: Tensor) -> Tensor:
    """‖x_i - μ_k‖² (N, K) as ‖x_i‖² - 2·x_i·μ_k + ‖μ_k‖², with ``squares`` the ‖x_i‖² (N,): one
    matrix product (torch.cdist takes several times as long at this size); the samples are
    centred (fit_tied_mixture), so the expansion loses no precision to a common offset."""
    return (squares[:, None] - 2 * x @ means.T + means.square().sum(1)[None]).clamp_min(0)


def _tied_covariance(second: Tensor, n: int, means: Tensor, resp: Tensor, ridge: float) -> Tensor:
    """W = Σ_ik r_ik·(x_i - μ_k)(x_i - μ_k)ᵀ / N + ridge·I, with ``second`` = Σ_i x_i x_iᵀ and the μ_k
    the responsibility-weighted means (so that the sum is Σ_i x_i x_iᵀ - Σ_k n_k μ_k μ_kᵀ)."""
    covariance = (second - means.T @ (resp.sum(0)[:, None] * means)) / n
    covariance = 0.5 * (covariance + covariance.T)
    return covariance + ridge * torch.eye(len(second), dtype=second.dtype)


def _log_joint(x: Tensor, weights: Tensor, means: Tensor, covariance: Tensor) -> Tensor:
    """log π_k + log N(x_i; μ_k, W) (N, K)."""
    chol = torch.linalg.cholesky(covariance)
    # the samples and the means whitened by one triangular solve: (d, N + K)
    white = torch.linalg.solve_triangular(chol, torch.cat([x, means]).T, upper=False).T
    white_x, white_m = white[: len(x)], white[len(x) :]
    mahalanobis = _squared_distances(white_x, white_x.square().sum(1), white_m)
    log_det = 2 * chol.diagonal().log().sum()
    return weights.log()[None] - 0.5 * (mahalanobis + log_det + x.shape[1] * math.log(2 * math.pi))
