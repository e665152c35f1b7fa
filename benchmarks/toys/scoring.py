"""Scores of a sample set against the tilted target: SW2 and MMD² (energy_guidance.testing's
:class:`~energy_guidance.testing.WeightedTarget`), the mean label, escapes, and the floors."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from energy_guidance.testing import WeightedTarget, sliced_wasserstein

if TYPE_CHECKING:
    from .config import Config

BANDWIDTHS = (0.2, 0.5, 1.0)  # MMD²: a sum of Gaussian kernels
PROJECTIONS = 128  # SW2: fixed random directions
GRID = 4096  # SW2: quantile levels
SEED = 1234  # SW2: the directions' generator


def target_of(points: Tensor, weights: Tensor) -> WeightedTarget:
    """The weighted point set (points, weights) as the target that every sampler is scored against."""
    generator = torch.Generator().manual_seed(SEED)
    return WeightedTarget(
        points, weights, num_projections=PROJECTIONS, generator=generator, grid=GRID, bandwidths=BANDWIDTHS
    )


def draws_from(x: Tensor, weights: Tensor, n: int = 500) -> Tensor:
    """n draws from the weighted set (x, weights), for the pictures."""
    return x[torch.multinomial(weights, n, replacement=True, generator=torch.Generator().manual_seed(0))]


def kish_ess(weights: Tensor) -> float:
    w = weights.double() / weights.sum()
    return float(1 / (w**2).sum())


def label_of(ctx: dict, x: Tensor) -> Tensor:
    """The smooth label ℓ = -E of each point (float64)."""
    with torch.no_grad():
        return -ctx["energy"](x.double()).double()


def score(ctx: dict, x: Tensor | None, target: WeightedTarget) -> dict:
    """Distances to the target, mean label, and the fraction of samples that escaped (beyond twice
    the data's radius): a sampler that blew up without going non-finite."""
    if x is None:
        return {"sw2": math.inf, "mmd2": math.inf, "label": math.nan, "escaped": 1.0, "diverged": True}
    label = float(label_of(ctx, x).mean())
    radius = float(ctx["data"].norm(dim=1).max())
    escaped = float((x.norm(dim=1) > 2 * radius).double().mean())
    distances = {"sw2": target.sliced_wasserstein(x), "mmd2": target.mmd(x)}
    return {**distances, "label": label, "escaped": escaped, "diverged": False}


def floors(target: WeightedTarget, label: float, cfg: Config) -> tuple[dict, dict]:
    """The ``resampled`` and ``two_draws`` rows: i.i.d. target draws against the target and each other."""
    g = torch.Generator().manual_seed(cfg.seed + 2)
    draws = [
        target.points[
            torch.multinomial(target.weights, cfg.num_samples, replacement=True, generator=g)
        ].float()
        for _ in range(max(cfg.floor_repeats, 2))
    ]
    sw = torch.tensor([target.sliced_wasserstein(x) for x in draws])
    mm = torch.tensor([target.mmd(x) for x in draws])
    pairs = torch.tensor(
        [
            sliced_wasserstein(draws[i], draws[i + 1], PROJECTIONS, torch.Generator().manual_seed(SEED))
            for i in range(0, len(draws) - 1, 2)
        ]
    )
    resampled = {
        "sw2": float(sw.mean()),
        "sw2_sd": float(sw.std()),
        "mmd2": float(mm.mean()),
        "mmd2_sd": float(mm.std()),
        "label": label,
        "sample": draws[0],
    }
    return resampled, {"sw2": float(pairs.mean()), "mmd2": math.nan, "sample": draws[1]}
