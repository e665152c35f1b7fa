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
    embedding of the DDPM timestep t: sin then cos at frequencies 10000^(-i/16)].

    With ``sigma_data`` (and the DDPM schedule's ``alphas_cumprod``) the MLP is a residual on the
    exact ε of Gaussian data N(0, σ_d²·I): ε̂ = σ_t·x_t/(σ_d²·α_t² + σ_t²) + MLP(x_t, t). At high
    noise ε ≈ x_t, which a plain MLP has to reproduce to within about α_t·σ_d (0.013 at t = 999 for
    σ_d = 2): a sampler's x̂0 = (x_t - σ_t·ε̂)/α_t multiplies ε̂'s error by σ_t/α_t (156 at t = 999).
    The skip term carries that part exactly and leaves the MLP a residual near 0 there. Still a
    plain ε-prediction model (any diffusers scheduler on the same ``alphas_cumprod``)."""

    def __init__(
        self, d: int, hidden: int, sigma_data: float | None = None, alphas_cumprod: Tensor | None = None
    ) -> None:
        super().__init__()
        self.embed = Timesteps(32, flip_sin_to_cos=False, downscale_freq_shift=0)
        self.net = nn.Sequential(
            nn.Linear(d + 32, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, d),
        )  # fmt: skip
        if (sigma_data is None) != (alphas_cumprod is None):
            raise ValueError("sigma_data and alphas_cumprod go together")
        self.sigma_data = None if sigma_data is None else float(sigma_data)
        if alphas_cumprod is not None:  # not persistent: the saved weights stay net.*
            acp = torch.as_tensor(alphas_cumprod, dtype=torch.float32).clone()
            self.register_buffer("alphas_cumprod", acp, persistent=False)

    def forward(self, x: Tensor, t) -> Tensor:
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        out = self.net(torch.cat([x, self.embed(t).to(x)], dim=1))
        if self.sigma_data is None:
            return out
        a2 = self.alphas_cumprod.to(x)[t.long()][:, None]
        return (1 - a2).sqrt() * x / (self.sigma_data**2 * a2 + (1 - a2)) + out
