"""Transitions (s, a, r, s', done) as tensors: what the critics train on."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class Transitions:
    """N transitions. Actions are in the normalised box [-1, 1]^d.

    observations (N, k), actions (N, d), rewards (N,), next_observations (N, k), and terminals (N,)
    = 1.0 where the episode *terminated* at s' (no bootstrapping); a time-limit truncation is not
    a terminal.
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    next_observations: Tensor
    terminals: Tensor

    def __post_init__(self) -> None:
        n = self.observations.shape[0]
        for f in fields(self):
            value = getattr(self, f.name)
            if value.shape[0] != n:
                raise ValueError(f"{f.name} has {value.shape[0]} rows, observations have {n}")
            if not torch.isfinite(value).all():
                raise ValueError(f"{f.name} contains NaN or infinite values")
        if self.rewards.dim() != 1 or self.terminals.dim() != 1:
            raise ValueError("rewards and terminals must have shape (N,)")
        if self.next_observations.shape != self.observations.shape:
            raise ValueError("next_observations must have the shape of observations")

    def __len__(self) -> int:
        return self.observations.shape[0]

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Transitions:
        """A batch of ``batch_size`` transitions drawn uniformly with replacement."""
        idx = torch.randint(0, len(self), (batch_size,), generator=generator).to(self.observations.device)
        return Transitions(*(getattr(self, f.name)[idx] for f in fields(self)))
