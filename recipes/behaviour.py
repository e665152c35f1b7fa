"""The behaviour policy μ(a | s): a state-conditioned noise model ε_θ(a_t, t, s) on the data's actions.

Training is the usual ε-prediction loss with a diffusers ``DDPMScheduler``:

    L(θ) = E_{(s,a)~D, t, ε} ‖ε_θ(α_t·a + σ_t·ε, t, s) − ε‖²

Sampling uses any scheduler the core supports (DPM-Solver++ with few steps by default).
``clip_sample`` clips the predicted clean action x̂0 to the action box [-1, 1] at every step,
which is what ``DDPMScheduler(clip_sample=True)`` does inside ``step``; :func:`clip_x0` does it
for every scheduler, after guidance, so the guided sampler stays in the box too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UniPCMultistepScheduler,
)
from torch import Tensor, nn

from energy_guidance import from_eps_x0, noise_level, prediction_type, to_eps_x0

SAMPLERS = {
    "dpmsolver++": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
}


@dataclass
class BehaviourConfig:
    hidden: int = 256  # width of the noise MLP
    depth: int = 3  # its hidden layers
    time_dim: int = 32  # sinusoidal timestep-embedding width
    num_train_timesteps: int = 1000  # DDPMScheduler training grid
    beta_schedule: str = "linear"  # a DDPMScheduler beta_schedule
    clip_sample: bool = True  # clip x̂0 to [-1, 1] at every sampling step
    sampler: str = "dpmsolver++"  # one of SAMPLERS
    lr: float = 3e-4  # Adam learning rate


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """[sin(t·ω_k), cos(t·ω_k)] with ω_k = 10000^(−k/(dim/2)), k < dim/2 (the transformer embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class NoiseMLP(nn.Module):
    """ε_θ(a_t, t, s) -> (B, act_dim): an MLP (Mish) over [a_t, embed(t), s]."""

    def __init__(self, act_dim: int, obs_dim: int, hidden: int = 256, depth: int = 3, time_dim: int = 32):
        super().__init__()
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, 2 * time_dim), nn.Mish(), nn.Linear(2 * time_dim, time_dim)
        )
        layers: list[nn.Module] = []
        width = act_dim + time_dim + obs_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.Mish()]
            width = hidden
        layers.append(nn.Linear(width, act_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        t = torch.as_tensor(t, device=x_t.device).expand(x_t.shape[0])
        embedding = self.time_mlp(timestep_embedding(t, self.time_dim))
        return self.mlp(torch.cat([x_t, embedding, cond], dim=1))


def training_scheduler(config: BehaviourConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        clip_sample=config.clip_sample,
        prediction_type="epsilon",
    )


def sampling_scheduler(config: BehaviourConfig, train: DDPMScheduler):
    """A fresh ``config.sampler`` scheduler sharing the training noise schedule."""
    if config.sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {tuple(SAMPLERS)}, got {config.sampler!r}")
    return SAMPLERS[config.sampler].from_config(train.config)


def diffusion_loss(
    model: nn.Module,
    scheduler: DDPMScheduler,
    actions: Tensor,
    states: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """mean ‖ε_θ(α_t·a + σ_t·ε, t, s) − ε‖² with t uniform on the training grid."""
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(actions),), generator=generator)
    noise = torch.randn(actions.shape, generator=generator)
    noisy = scheduler.add_noise(actions, noise, t)
    return (model(noisy, t, states) - noise).pow(2).mean()


def clip_x0(model_fn: Callable, scheduler, low: float = -1.0, high: float = 1.0) -> Callable:
    """Wrap ``model_fn(x_t, t, cond)`` so that its implied x̂0 is clipped to [low, high].

    The output is converted to (ε̂, x̂0), x̂0 is clipped, and ε̂ = (x_t − α·x̂0)/σ is recomputed:
    the same operation as diffusers' ``clip_sample``, for any scheduler and prediction type.
    """
    ptype = prediction_type(scheduler)

    def clipped(x_t: Tensor, t, cond=None):
        out = model_fn(x_t, t, cond)
        shape = (-1,) + (1,) * (x_t.dim() - 1)  # per-sample (B,) or shared () levels
        alpha, sigma = (c.to(x_t).reshape(shape) for c in noise_level(scheduler, t))
        _, x0 = to_eps_x0(out, x_t, alpha, sigma, ptype)
        x0 = x0.clamp(low, high)
        eps = (x_t - alpha * x0) / sigma
        return from_eps_x0(eps, x0, alpha.flatten(), sigma.flatten(), ptype)

    return clipped
