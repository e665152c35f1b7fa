"""Ground truth for the intermediate energy: Monte Carlo and exact empirical estimators."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..callables import Energy, call_energy


def gaussian_log_potential_mc(
    energy: Energy,
    mean: Tensor,
    covariance: Tensor | float,
    beta: float,
    num_samples: int = 10_000,
    *,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Estimate L = log E_{x0 ~ N(mean, Σ)}[exp(-β·E(x0))] for each row of ``mean`` (B, d).

    ``covariance`` is a float (Σ = c·I), (d,) (diagonal) or (d, d). Returns the estimate (B,)
    and its delta-method standard error std(exp(-βE)) / (mean(exp(-βE))·√n), computed stably
    from the log-weights.
    """
    b, d = mean.shape
    noise = torch.randn(num_samples, b, d, generator=generator, dtype=mean.dtype).to(mean.device)
    cov = torch.as_tensor(covariance, dtype=mean.dtype, device=mean.device)
    if cov.dim() == 2:
        noise = noise @ torch.linalg.cholesky(cov).T
    else:
        noise = noise * cov.sqrt()
    x = (mean[None] + noise).reshape(num_samples * b, d)
    c = None if cond is None else cond.repeat(num_samples, *([1] * (cond.dim() - 1)))
    log_w = (-beta * call_energy(energy, x, c)).reshape(num_samples, b).to(torch.float64)
    estimate = torch.logsumexp(log_w, dim=0) - math.log(num_samples)
    rel = torch.exp(log_w - estimate[None])  # w / mean(w)
    stderr = rel.std(dim=0) / math.sqrt(num_samples)
    return estimate, stderr


def empirical_posterior_logits(data: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """log q(x0 = x_i | x_t) + const = -‖x_t - α·x_i‖²/(2σ²) (B, N) for the empirical set ``data``
    (N, ...), in float64; α and σ are numbers or (B,)."""
    a = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1, 1)
    s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
    x = x_t.reshape(x_t.shape[0], -1).to(torch.float64)
    d = data.reshape(data.shape[0], -1).to(torch.float64)
    sq = x.pow(2).sum(1, keepdim=True) - 2 * a * (x @ d.T) + a**2 * d.pow(2).sum(1)[None]
    return -sq / (2 * s**2)


def empirical_log_potential(
    data: Tensor, energies: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor, beta: float
) -> Tensor:
    """Exact L_t (B,) when the data distribution is the empirical set ``data`` (N, d).

    q(x0 | x_t) puts weight w_i ∝ exp(-‖x_t - α·x_i‖²/(2σ²)) on x_i, so
    L_t = logsumexp_i(log w_i - β·E(x_i)) - logsumexp_i(log w_i).
    ``energies`` (N,) are E(x_i); α and σ are numbers or (B,).
    """
    log_w = empirical_posterior_logits(data, x_t, alpha, sigma)
    tilted = log_w - beta * energies.to(torch.float64)[None]
    return torch.logsumexp(tilted, dim=1) - torch.logsumexp(log_w, dim=1)


def importance_resample(
    samples: Tensor, energies: Tensor, beta: float, n: int, generator: torch.Generator | None = None
) -> Tensor:
    """Draw ``n`` points of q·exp(-β·E) by resampling ``samples`` of q with weights exp(-β·E)."""
    weights = torch.softmax(-beta * energies.to(torch.float64), dim=0)
    idx = torch.multinomial(weights, n, replacement=True, generator=generator)
    return samples[idx]
