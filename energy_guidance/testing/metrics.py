"""Distances between sample sets, for comparing guided samples with an exact target.

The target may be a weighted point set (``y_weights``), e.g. data re-weighted by exp(-β·E):
then its terms are computed exactly instead of from resampled draws. The samples may be weighted
too (``x_weights``), e.g. SMC's particles. :class:`WeightedTarget` computes a target's own terms
once, for scoring many sample sets against one (large) target.
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


def _flat(x: Tensor) -> Tensor:
    return x.reshape(len(x), -1).double()


def _kernel_times(a: Tensor, b: Tensor, v: Tensor, bandwidths: Sequence[float], chunk: int = 512) -> Tensor:
    """k(a, b) @ v (len(a),) in row chunks of ``a``, k the sum of Gaussian kernels of ``bandwidths``."""
    parts = []
    for i in range(0, len(a), chunk):
        d2 = torch.cdist(a[i : i + chunk], b).pow(2)
        kernel = sum((torch.exp(-d2 / (2 * h**2)) for h in bandwidths), torch.zeros((), dtype=d2.dtype))
        parts.append(kernel @ v)
    return torch.cat(parts)


def _self_term(x: Tensor, w: Tensor, bandwidths: Sequence[float]) -> Tensor:
    """Σ_{i≠j} w_i w_j k(x_i, x_j) / (1 - Σw²): the unbiased x-x term for uniform weights."""
    diagonal = len(bandwidths)  # k(x, x) on the diagonal
    square = (w**2).sum()
    return (w @ _kernel_times(x, x, w, bandwidths) - diagonal * square) / (1 - square).clamp_min(1e-12)


def _normalised(weights: Tensor | None, n: int) -> Tensor:
    if weights is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    return weights.double() / weights.sum()


class WeightedTarget:
    """A target point set y (M, d), weighted by ``weights`` or not, and the distances of sample
    sets to it, the target's own terms computed once.

    SW2: ``num_projections`` random unit directions drawn from ``generator`` (at construction;
    none with ``num_projections=0``), quantiles on ``grid`` evenly spaced levels. MMD²: a sum of
    Gaussian kernels of ``bandwidths``, computed in row chunks (a target of 10⁴ points never holds
    a 10⁴ × 10⁴ kernel); its y-y term is exact for a weighted target and unbiased (the diagonal
    left out) for an unweighted one. Samples may be weighted (``x_weights``); their x-x term
    leaves out the diagonal and is renormalised by 1 - Σw², the unbiased term for uniform weights.
    """

    def __init__(
        self,
        points: Tensor,
        weights: Tensor | None = None,
        *,
        num_projections: int = 256,
        generator: torch.Generator | None = None,
        grid: int = 4096,
        bandwidths: Sequence[float] = (),
    ) -> None:
        self.points = _flat(points)
        self.weights = None if weights is None else weights.double() / weights.sum()
        self.bandwidths = tuple(bandwidths)
        self._self_term: float | None = None
        if not num_projections:  # MMD only: no directions drawn
            return
        theta = torch.randn(self.points.shape[1], num_projections, generator=generator, dtype=torch.float64)
        self.theta = theta / theta.norm(dim=0, keepdim=True)
        self.levels = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
        self.quantiles = weighted_quantiles(self.points @ self.theta, self.weights, self.levels)

    def sliced_wasserstein(self, x: Tensor, x_weights: Tensor | None = None) -> float:
        """SW2 of the samples x (N, d), weighted by ``x_weights`` or not, to the target."""
        qx = weighted_quantiles(_flat(x) @ self.theta, x_weights, self.levels)
        return float(((qx - self.quantiles) ** 2).mean().sqrt())

    def mmd(self, x: Tensor, x_weights: Tensor | None = None) -> float:
        """Squared MMD of the samples x (N, d), weighted by ``x_weights`` or not, to the target."""
        if not self.bandwidths:
            raise ValueError("WeightedTarget.mmd needs bandwidths")
        x = _flat(x)
        w = _normalised(x_weights, len(x))
        wy = self.weights if self.weights is not None else _normalised(None, len(self.points))
        if self._self_term is None:
            if self.weights is None:
                self._self_term = float(_self_term(self.points, wy, self.bandwidths))
            else:
                self._self_term = float(wy @ _kernel_times(self.points, self.points, wy, self.bandwidths))
        cross = w @ _kernel_times(x, self.points, wy, self.bandwidths)
        return float(_self_term(x, w, self.bandwidths) + self._self_term - 2 * cross)


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    num_projections: int = 256,
    generator: torch.Generator | None = None,
    *,
    y_weights: Tensor | None = None,
    x_weights: Tensor | None = None,
    grid: int = 4096,
) -> float:
    """Sliced Wasserstein-2 distance between samples x (N, d) and y (M, d), each weighted by its
    ``*_weights`` or not.

    SW₂² = E_θ W₂²(θᵀx, θᵀy) over random unit directions θ; each 1-D W₂² is the mean squared
    difference of the two quantile functions on ``grid`` evenly spaced levels.
    """
    target = WeightedTarget(y, y_weights, num_projections=num_projections, generator=generator, grid=grid)
    return target.sliced_wasserstein(x, x_weights)


def mmd(
    x: Tensor,
    y: Tensor,
    bandwidth: float | Sequence[float] | None = None,
    *,
    y_weights: Tensor | None = None,
    x_weights: Tensor | None = None,
) -> float:
    """Squared maximum mean discrepancy with a Gaussian kernel (a sum of kernels for several
    bandwidths; median heuristic when None). The x-x term is unbiased (for weighted samples, the
    diagonal left out and renormalised by 1 - Σw²); a weighted y enters exactly, an unweighted
    one unbiasedly."""
    if bandwidth is None:
        z = torch.cat([_flat(x), _flat(y)])[:2000]
        bandwidth = float(torch.cdist(z, z).median().clamp_min(1e-12))
    bandwidths = [bandwidth] if isinstance(bandwidth, int | float) else list(bandwidth)
    return WeightedTarget(y, y_weights, num_projections=0, bandwidths=bandwidths).mmd(x, x_weights)
