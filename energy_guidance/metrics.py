"""Distances between sample sets, for comparing guided samples with an exact target."""

from __future__ import annotations

import torch
from torch import Tensor


def sliced_wasserstein(
    x: Tensor, y: Tensor, num_projections: int = 256, generator: torch.Generator | None = None
) -> float:
    """Sliced Wasserstein-2 distance between samples x (N, d) and y (M, d).

    SW₂² = E_θ W₂²(θᵀx, θᵀy) over random unit directions θ; each 1-D W₂ compares quantiles
    (the smaller set's size of evenly spaced quantiles of both).
    """
    x, y = x.reshape(len(x), -1).double(), y.reshape(len(y), -1).double()
    theta = torch.randn(x.shape[1], num_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    n = min(len(x), len(y))
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    px = torch.quantile((x @ theta), q, dim=0)
    py = torch.quantile((y @ theta), q, dim=0)
    return float(((px - py) ** 2).mean().sqrt())


def mmd(x: Tensor, y: Tensor, bandwidth: float | None = None) -> float:
    """Unbiased squared maximum mean discrepancy with a Gaussian kernel (median-heuristic bandwidth)."""
    x, y = x.reshape(len(x), -1).double(), y.reshape(len(y), -1).double()
    if bandwidth is None:
        z = torch.cat([x, y])[:2000]
        bandwidth = float(torch.cdist(z, z).median().clamp_min(1e-12))

    def k(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * bandwidth**2))

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = len(x), len(y)
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2 * kxy.mean())
