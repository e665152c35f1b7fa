"""The benchmarks' noise model: ε_θ(x_t, t), an MLP over x_t and a sinusoidal embedding of t.

One definition for benchmarks/dimension.py (whose cached weights are stored under these module
names: ``net.*``) and benchmarks/toys (part 2, the learned model).
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import Timesteps
from torch import Tensor, nn


class EpsMLP(nn.Module):
    """(x_t, t) -> ε̂: an MLP (SiLU, 3 hidden layers of ``hidden``) over [x_t, a 32-wide sinusoidal
    embedding of the DDPM timestep t: sin then cos at frequencies 10000^(-i/16)]."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.embed = Timesteps(32, flip_sin_to_cos=False, downscale_freq_shift=0)
        self.net = nn.Sequential(
            nn.Linear(d + 32, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, d),
        )  # fmt: skip

    def forward(self, x: Tensor, t) -> Tensor:
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        return self.net(torch.cat([x, self.embed(t).to(x)], dim=1))
