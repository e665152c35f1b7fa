"""Distances between sample sets, for comparing guided samples with an exact target.

The target may be a weighted point set (``y_weights``), e.g. data re-weighted by exp(-β·E):
then its terms are computed exactly instead of from resampled draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def weighted_quantiles(projected: Tensor, weights: Tensor | None, levels: Tensor) -> Tensor:
    """Quantile functions (G, P) of the columns of ``projected`` (N, P) at ``levels`` (G,)."""
    values, order = projected.sort(dim=0)
    n = projected.shape[0]
    if weights is None:
        cum = (torch.arange(1, n + 1, dtype=torch.float64) / n)[:, None].expand(n, projected.shape[1])
    else:
        cum = weights.double()[order].cumsum(0)
        cum = cum / cum[-1]
    index = torch.searchsorted(cum.T.contiguous(), levels.expand(projected.shape[1], -1).contiguous()).T
    return torch.gather(values, 0, index.clamp(max=n - 1))


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    num_projections: int = 256,
    generator: torch.Generator | None = None,
    *,
    y_weights: Tensor | None = None,
    grid: int = 4096,
) -> float:
    """Sliced Wasserstein-2 distance between samples x (N, d) and y (M, d) (weighted by ``y_weights``).

    SW₂² = E_θ W₂²(θᵀx, θᵀy) over random unit directions θ; each 1-D W₂² is the mean squared
    difference of the two quantile functions on ``grid`` evenly spaced levels.
    """
    x, y = x.reshape(len(x), -1).double(), y.reshape(len(y), -1).double()
    theta = torch.randn(x.shape[1], num_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    levels = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    qx = weighted_quantiles(x @ theta, None, levels)
    qy = weighted_quantiles(y @ theta, y_weights, levels)
    return float(((qx - qy) ** 2).mean().sqrt())


def mmd(
    x: Tensor,
    y: Tensor,
    bandwidth: float | Sequence[float] | None = None,
    *,
    y_weights: Tensor | None = None,
) -> float:
    """Squared maximum mean discrepancy with a Gaussian kernel (a sum of kernels for several
    bandwidths; median heuristic when None). The x-x term is unbiased; a weighted y enters
    exactly, an unweighted one unbiasedly."""
    x, y = x.reshape(len(x), -1).double(), y.reshape(len(y), -1).double()
    if bandwidth is None:
        z = torch.cat([x, y])[:2000]
        bandwidth = float(torch.cdist(z, z).median().clamp_min(1e-12))
    bandwidths = [bandwidth] if isinstance(bandwidth, int | float) else list(bandwidth)

    def k(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b).pow(2)
        kernels = [torch.exp(-d2 / (2 * h**2)) for h in bandwidths]
        total = kernels[0]
        for kernel in kernels[1:]:
            total = total + kernel
        return total

    def unbiased_mean(gram: Tensor) -> Tensor:
        n = len(gram)
        return (gram.sum() - gram.diagonal().sum()) / (n * (n - 1))

    term_x = unbiased_mean(k(x, x))
    if y_weights is None:
        return float(term_x + unbiased_mean(k(y, y)) - 2 * k(x, y).mean())
    w = y_weights.double() / y_weights.sum()
    return float(term_x + w @ k(y, y) @ w - 2 * (k(x, y) @ w).mean())
