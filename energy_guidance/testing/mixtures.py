"""Gaussian-mixture data with exact noise models, posteriors and tilted targets.

For data q(x0) = Σ_k π_k N(μ_k, diag(v_k)) and x_t = α·x0 + σ·ε everything is closed form:

    q_t(x_t)       = Σ_k π_k N(α·μ_k, diag(α²·v_k + σ²))
    q(x0 | x_t)    = Σ_k w_k(x_t) N(m_k, diag(s_k)),  w_k ∝ π_k N(x_t; α·μ_k, α²·v_k + σ²),
                     m_k = μ_k + α·v_k·(x_t - α·μ_k)/(α²·v_k + σ²),  s_k = v_k·σ²/(α²·v_k + σ²)
    ε̂(x_t)         = -σ·∇log q_t(x_t) = σ·Σ_k w_k (x_t - α·μ_k)/(α²·v_k + σ²)

and tilting by a linear energy E(x) = wᵀx (:meth:`GaussianMixture.tilted`) or a quadratic
½k‖x − c‖² (:meth:`GaussianMixture.quadratic_tilted`) gives another mixture.
Used by tests, the demo and the benchmarks as ground truth.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..schedulers import SchedulerLike, from_eps_x0, noise_level, prediction_type


@dataclass
class GaussianMixture:
    """Mixture with weights (K,), means (K, d) and per-dimension variances (K, d)."""

    weights: Tensor
    means: Tensor
    variances: Tensor

    def __post_init__(self) -> None:
        self.weights = torch.as_tensor(self.weights, dtype=torch.float64)
        self.means = torch.as_tensor(self.means, dtype=torch.float64)
        k, d = self.means.shape
        self.variances = torch.as_tensor(self.variances, dtype=torch.float64).expand(k, d).clone()
        self.weights = self.weights / self.weights.sum()

    @classmethod
    def gaussian(cls, mean, variance) -> GaussianMixture:
        """A single Gaussian N(mean, diag(variance))."""
        mean = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
        return cls(torch.ones(1), mean, torch.as_tensor(variance, dtype=torch.float64))

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def mean(self) -> Tensor:
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Cov(x0) (d, d), by the law of total variance."""
        m = self.mean()
        centred = self.means - m
        within = torch.diag(self.weights @ self.variances)
        return within + centred.T @ (self.weights[:, None] * centred)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws (n, d), float32."""
        return self.sample_components(n, generator)[0].float()

    def sample_components(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n draws (n, d) in float64 and the component that drew each (n,): the draws of
        :meth:`sample` for the same generator state."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[comp] + self.variances[comp].sqrt() * noise, comp

    def _component_terms(self, x_t: Tensor, alpha: Tensor, sigma: Tensor):
        """Per-component log-weights (B, K) and marginal variances (B, K, d)."""
        x = x_t.to(torch.float64)[:, None, :]
        a = alpha.to(torch.float64).reshape(-1, 1, 1)
        s2 = sigma.to(torch.float64).reshape(-1, 1, 1) ** 2
        var_t = a**2 * self.variances[None] + s2
        diff = x - a * self.means[None]
        log_n = -0.5 * ((diff**2 / var_t) + torch.log(2 * math.pi * var_t)).sum(-1)
        return torch.log(self.weights)[None] + log_n, var_t, diff

    def log_prob(self, x: Tensor) -> Tensor:
        one = torch.ones(x.shape[0], dtype=torch.float64)
        log_w, _, _ = self._component_terms(x, one, 0 * one)
        return torch.logsumexp(log_w, dim=1)

    def noise_prediction(self, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """Exact ε̂(x_t) = -σ·∇log q_t(x_t) for α, σ of shape () or (B,)."""
        log_w, var_t, diff = self._component_terms(x_t, alpha, sigma)
        w = torch.softmax(log_w, dim=1)[..., None]
        s = sigma.to(torch.float64).reshape(-1, 1)
        return (s * (w * diff / var_t).sum(1)).to(x_t.dtype)

    def posterior(self, x_t: Tensor, alpha: Tensor, sigma: Tensor):
        """q(x0 | x_t) as (weights (B, K), means (B, K, d), variances (B, K, d))."""
        log_w, var_t, diff = self._component_terms(x_t, alpha, sigma)
        a = alpha.to(torch.float64).reshape(-1, 1, 1)
        s2 = sigma.to(torch.float64).reshape(-1, 1, 1) ** 2
        means = self.means[None] + a * self.variances[None] * diff / var_t
        variances = self.variances[None] * s2 / var_t
        return torch.softmax(log_w, dim=1), means, variances

    def posterior_mean(self, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """Exact E[x0 | x_t] (B, d)."""
        w, means, _ = self.posterior(x_t, alpha, sigma)
        return (w[..., None] * means).sum(1)

    def posterior_moments(self, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """Exact E[x0 | x_t] (B, d) and Cov[x0 | x_t] (B, d, d)."""
        w, means, variances = self.posterior(x_t, alpha, sigma)
        mean = (w[..., None] * means).sum(1)
        centred = means - mean[:, None]
        cov = torch.diag_embed((w[..., None] * variances).sum(1))
        cov = cov + torch.einsum("bk,bki,bkj->bij", w, centred, centred)
        return mean, cov

    def linear_log_potential(self, x_t: Tensor, alpha: Tensor, sigma: Tensor, w: Tensor, beta: float):
        """Exact L_t = log E[exp(-β·wᵀx0) | x_t] (B,) for the linear energy E(x) = wᵀx."""
        pw, means, variances = self.posterior(x_t, alpha, sigma)
        w = torch.as_tensor(w, dtype=torch.float64)
        log_mgf = -beta * means @ w + 0.5 * beta**2 * variances @ (w**2)
        return torch.logsumexp(torch.log(pw) + log_mgf, dim=1)

    def tilted(self, w, beta: float) -> GaussianMixture:
        """The exact target q(x)·exp(-β·wᵀx) / Z: means μ_k - β·v_k·w, reweighted components."""
        w = torch.as_tensor(w, dtype=torch.float64)
        log_mgf = -beta * self.means @ w + 0.5 * beta**2 * self.variances @ (w**2)
        weights = torch.softmax(torch.log(self.weights) + log_mgf, dim=0)
        return GaussianMixture(weights, self.means - beta * self.variances * w, self.variances)

    def quadratic_tilted(self, centre, k: float, beta: float) -> tuple[GaussianMixture, float]:
        """The exact target q(x)·exp(-β·½k‖x - c‖²) / Z and log Z = log E_q[exp(-β·E)].

        With a = β·k, per component and dimension N(x; μ, v)·exp(-a(x - c)²/2) is a Gaussian of
        precision 1/v + a (variance v/(1 + a·v), mean (μ + a·v·c)/(1 + a·v)) times the normaliser
        (1 + a·v)^-½·exp(-a(μ - c)²/(2(1 + a·v))): the components keep their shape and are
        reweighted by the product of their normalisers.
        """
        a = float(beta) * float(k)
        c = torch.as_tensor(centre, dtype=torch.float64)
        av1 = 1 + a * self.variances
        means = (self.means + a * self.variances * c) / av1
        log_norm = (-0.5 * torch.log(av1) - a * (self.means - c) ** 2 / (2 * av1)).sum(1)
        log_w = torch.log(self.weights) + log_norm
        return GaussianMixture(torch.softmax(log_w, 0), means, self.variances / av1), float(
            torch.logsumexp(log_w, 0)
        )

    def noise_model(self, scheduler: SchedulerLike) -> Callable[[Tensor, Tensor], Tensor]:
        """An exact model ``model(x_t, t)`` in ``scheduler``'s prediction type."""
        ptype = prediction_type(scheduler)

        def model(x_t: Tensor, timestep: Tensor) -> Tensor:
            alpha, sigma = (c.to(x_t) for c in noise_level(scheduler, timestep))
            eps = self.noise_prediction(x_t, alpha, sigma)
            # The posterior mean directly, not (x_t - σ·ε̂)/α, which is 0/0 at α = 0.
            x0 = self.posterior_mean(x_t, alpha, sigma).to(x_t)
            return from_eps_x0(eps, x0, alpha, sigma, ptype)

        return model
