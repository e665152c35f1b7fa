"""The six 2-D toy data sets of QGPO (Lu et al. 2023, arXiv 2304.12824) with differentiable energies.

Each data set draws points x (n, 2) and a label (n,) in [0, 1] where higher is preferred, as in
QGPO's toy experiments, whose ground truth is the data re-weighted by softmax(β·label). Guidance
needs a differentiable energy, so every data set also defines a *smooth label* ℓ(x), a function of
the point alone, and the energy is

    E(x) = -ℓ(x)        (lower is better; the target is q(x)·exp(-β·E(x)) = q(x)·exp(β·ℓ(x))).

The smooth labels (each agrees with the discrete label on almost all data; ``tests`` check this):

- ``swissroll``:   ℓ = ‖x‖²/9, already smooth (QGPO's label).
- ``8gaussians``:  centre index k/7 of the generating Gaussian; ℓ = Σ_k w_k(x)·k/7 with
                   w = softmax_k(-‖x - c_k‖²/(2τ²)), τ = 0.7 (the posterior mean of the label
                   under equal-weight Gaussians of width τ, wider than the data's 0.354 so that
                   ∇ℓ is informative between the modes).
- ``moons``:       class (0 upper moon, 1 lower moon); ℓ = posterior probability of class 1
                   under Gaussians of width τ = 0.3 around 64 points on each moon's centre line.
- ``rings``:       four rings of radii 3, 2.25, 1.5, 0.75 with labels 2/3, 1/3, 1, 0 (QGPO's
                   r² bands, assigned by generating ring); ℓ = Σ_k w_k·label_k with
                   w = softmax_k(-(‖x‖ - r_k)²/(2τ²)), τ = 0.2.
- ``checkerboard``: 1 on alternating columns of cells (x₁ ∈ (0, 2] ∪ (-4, -2], QGPO's rule);
                   ℓ = sigmoid(8·sin(π·x₁/2)), a smooth step with the same sign everywhere.
- ``2spirals``:    ℓ = clip(1 - n/10, 0, 1) with n the angle along the spiral; n ≈ 3‖x‖ (the
                   spiral (−n·cos n, n·sin n)/3 has radius n/3), so ℓ = 1 - 0.3·sqrt(‖x‖² + 0.01).

Generators follow QGPO's (scales, noise levels, label rules), written here in torch; angles and
positions along curves are drawn at random where QGPO uses evenly spaced ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

DatasetName = Literal["swissroll", "8gaussians", "moons", "rings", "checkerboard", "2spirals"]
DATASETS: tuple[str, ...] = get_args(DatasetName)


def _rand(n: int, generator: torch.Generator | None, *shape: int) -> Tensor:
    return torch.rand(n, *shape, generator=generator, dtype=torch.float64)


def _randn(n: int, generator: torch.Generator | None, *shape: int) -> Tensor:
    return torch.randn(n, *shape, generator=generator, dtype=torch.float64)


def _soft_label(sq_dist: Tensor, labels: Tensor, tau: float) -> Tensor:
    """Σ_k softmax_k(-sq_dist_k/(2τ²))·label_k for sq_dist (n, K) and labels (K,)."""
    w = torch.softmax(-sq_dist / (2 * tau**2), dim=1)
    return w @ labels.to(w)


def _sq_dist(x: Tensor, points: Tensor) -> Tensor:
    """‖x_i - p_k‖² (n, K), from the differences: smooth everywhere, exact for large ‖x‖
    (torch.cdist's matmul form loses precision there and its gradient is NaN at zero distance)."""
    return (x[:, None, :] - points.to(x)[None]).pow(2).sum(-1)


# --- swiss roll -------------------------------------------------------------------------------


def _swissroll(n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    # sklearn.datasets.make_swiss_roll(noise=1.0) keeps (t·cos t, t·sin t) in columns 0 and 2.
    t = 1.5 * math.pi * (1 + 2 * _rand(n, generator))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) + _randn(n, generator, 2)
    x = x / 5
    return x, x.pow(2).sum(1) / 9


def _swissroll_label(x: Tensor) -> Tensor:
    return x.pow(2).sum(1) / 9


# --- 8 gaussians ------------------------------------------------------------------------------

_ANGLES8 = math.pi / 2 + torch.arange(8, dtype=torch.float64) * math.pi / 4
_CENTRES8 = 4.0 * torch.stack([torch.cos(_ANGLES8), torch.sin(_ANGLES8)], dim=1) / 1.414
_LABELS8 = torch.arange(8, dtype=torch.float64) / 7


def _gaussians8(n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    k = torch.randint(0, 8, (n,), generator=generator)
    x = _CENTRES8[k] + 0.5 / 1.414 * _randn(n, generator, 2)
    return x, _LABELS8[k]


def _gaussians8_label(x: Tensor) -> Tensor:
    return _soft_label(_sq_dist(x, _CENTRES8), _LABELS8, tau=0.7)


# --- moons ------------------------------------------------------------------------------------


def _moon_points(theta: Tensor, lower: Tensor) -> Tensor:
    """Centre lines of sklearn's make_moons, then QGPO's transform x·2 + (-1, -0.2)."""
    upper_pts = torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)
    lower_pts = torch.stack([1 - torch.cos(theta), 0.5 - torch.sin(theta)], dim=-1)
    pts = torch.where(lower[..., None], lower_pts, upper_pts)
    return pts * 2 + torch.tensor([-1.0, -0.2], dtype=pts.dtype)


_GRID = torch.linspace(0, math.pi, 64, dtype=torch.float64)
_MOON_LINES = torch.cat(
    [
        _moon_points(_GRID, torch.zeros(64, dtype=torch.bool)),
        _moon_points(_GRID, torch.ones(64, dtype=torch.bool)),
    ]
)
_MOON_LABELS = torch.cat([torch.zeros(64), torch.ones(64)]).double()


def _moons(n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    lower = torch.rand(n, generator=generator) < 0.5
    theta = math.pi * _rand(n, generator)
    x = _moon_points(theta, lower) + 2 * 0.1 * _randn(n, generator, 2)
    return x, lower.double()


def _moons_label(x: Tensor) -> Tensor:
    return _soft_label(_sq_dist(x, _MOON_LINES), _MOON_LABELS, tau=0.3)


# --- rings ------------------------------------------------------------------------------------

_RING_RADII = torch.tensor([3.0, 2.25, 1.5, 0.75], dtype=torch.float64)
_RING_LABELS = torch.tensor([0.667, 0.333, 1.0, 0.0], dtype=torch.float64)


def _rings(n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    k = torch.randint(0, 4, (n,), generator=generator)
    angle = 2 * math.pi * _rand(n, generator)
    x = _RING_RADII[k, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return x + 0.08 * _randn(n, generator, 2), _RING_LABELS[k]


def _rings_label(x: Tensor) -> Tensor:
    radius = (x.pow(2).sum(1, keepdim=True) + 1e-12).sqrt()
    return _soft_label((radius - _RING_RADII.to(x)).pow(2), _RING_LABELS, tau=0.2)


# --- checkerboard -----------------------------------------------------------------------------


def _checkerboard(n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    x1 = 4 * _rand(n, generator) - 2
    row = torch.randint(0, 2, (n,), generator=generator).double()
    x2 = _rand(n, generator) - 2 * row + torch.floor(x1) % 2
    x = 2 * torch.stack([x1, x2], dim=1)
    px = x[:, 0]
    label = ((px > 0) & (px <= 2)) | (px <= -2)
    return x, label.double()


def _checkerboard_label(x: Tensor) -> Tensor:
    return torch.sigmoid(8 * torch.sin(math.pi * x[:, 0] / 2))


# --- two spirals ------------------------------------------------------------------------------


def _spirals(n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    angle = _rand(n, generator).sqrt() * 3 * math.pi
    offset = 0.5 * _rand(n, generator, 2)
    arm = torch.stack([-torch.cos(angle) * angle, torch.sin(angle) * angle], dim=1) + offset
    sign = torch.where(torch.rand(n, generator=generator) < 0.5, 1.0, -1.0).double()
    x = sign[:, None] * arm / 3 + 0.1 * _randn(n, generator, 2)
    return x, (1 - angle / 10).clamp(0, 1)


def _spirals_label(x: Tensor) -> Tensor:
    return 1 - 0.3 * (x.pow(2).sum(1) + 0.01).sqrt()


# --- registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Toy2D:
    """A 2-D data set: ``sample(n)`` -> (x (n, 2), label (n,)); ``energy(x)`` = -smooth label."""

    name: str
    sampler: Callable[[int, torch.Generator | None], tuple[Tensor, Tensor]]
    smooth_label: Callable[[Tensor], Tensor]

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n points (float32) and their discrete QGPO labels (float32, higher preferred)."""
        x, label = self.sampler(n, generator)
        return x.float(), label.float()

    def energy(self, x: Tensor) -> Tensor:
        """E(x) = -ℓ(x) (n,), differentiable, lower is better."""
        return -self.smooth_label(x)


_REGISTRY = {
    "swissroll": Toy2D("swissroll", _swissroll, _swissroll_label),
    "8gaussians": Toy2D("8gaussians", _gaussians8, _gaussians8_label),
    "moons": Toy2D("moons", _moons, _moons_label),
    "rings": Toy2D("rings", _rings, _rings_label),
    "checkerboard": Toy2D("checkerboard", _checkerboard, _checkerboard_label),
    "2spirals": Toy2D("2spirals", _spirals, _spirals_label),
}


def toy_dataset(name: str) -> Toy2D:
    """One of :data:`DATASETS` by name."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown 2-D data set {name!r}; choose one of {DATASETS}")
    return _REGISTRY[name]
