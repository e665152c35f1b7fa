"""The exactly solvable case shared by the guidance and amortized tests: Gaussian data
N(m, v·I) with its exact noise model and a linear energy E(x) = wᵀx, whose tilted target is
N(m − β·v·w, v·I). Data and target means are symmetric about 0 (m' = −m), see
test_guidance.test_guided_samples_follow_the_tilted_gaussian."""

import torch

from energy_guidance.testing import GaussianMixture

BETA, V, STEPS, N = 1.5, 0.5, 24, 4000
W = torch.tensor([1.0, -1.0], dtype=torch.float64)
M_DATA = BETA * V * W / 2
M_TARGET = M_DATA - BETA * V * W
Z = 5.0


def linear_energy(x: torch.Tensor) -> torch.Tensor:
    return x @ W.to(x)


def data_model() -> GaussianMixture:
    return GaussianMixture.gaussian(M_DATA, V)


def target_model() -> GaussianMixture:
    return GaussianMixture.gaussian(M_TARGET, V)


def exact_guidance_term(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """σ·∇_{x_t}E_t for this problem: E_t = β·wᵀx̂0(x_t) + const, ∂x̂0/∂x_t = α·v/(α²v + σ²)."""
    return sigma * BETA * alpha * V / (alpha**2 * V + sigma**2) * W
