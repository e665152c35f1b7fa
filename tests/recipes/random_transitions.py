"""Random transitions for the critic tests: states, actions in [-1, 1], rewards, ~10 % terminals."""

import torch

from energy_guidance.recipes.transitions import Transitions


def random_transitions(n: int = 64, obs_dim: int = 3, act_dim: int = 2, seed: int = 1) -> Transitions:
    g = torch.Generator().manual_seed(seed)
    return Transitions(
        torch.randn(n, obs_dim, generator=g),
        torch.rand(n, act_dim, generator=g) * 2 - 1,
        torch.randn(n, generator=g),
        torch.randn(n, obs_dim, generator=g),
        (torch.rand(n, generator=g) < 0.1).float(),
    )
