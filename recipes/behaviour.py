"""The behaviour policy μ(a | s): a state-conditioned noise model ε_θ(a_t, t, s) on the data's actions.

Training is the usual ε-prediction loss with a diffusers ``DDPMScheduler``:

    L(θ) = E_{(s,a)~D, t, ε} ‖ε_θ(α_t·a + σ_t·ε, t, s) − ε‖²

Sampling uses any scheduler the core supports (DPM-Solver++ with few steps by default).
``clip_sample`` clips the predicted clean action x̂0 to the action box [-1, 1] at every step with
the sampling scheduler's own option (:func:`sampling_scheduler`): ``clip_sample`` for DDPM and
DDIM, ``thresholding`` with ``sample_max_value=1`` for DPM-Solver++ and UniPC (which then clips
to [-1, 1]). ``energy_guidance.sample`` hands the guided output to ``scheduler.step``, so the
guided sampler stays in the box too.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from diffusers.models.embeddings import Timesteps

# the classes from their modules: diffusers' top-level names are placeholders to type checkers
# (energy_guidance.schedulers.SchedulerLike); these are the real classes
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler
from torch import Tensor, nn

from energy_guidance.schedulers import Scheduler

Sampler = Literal["dpmsolver++", "unipc", "ddim", "ddpm"]
SAMPLERS = dict(
    zip(
        get_args(Sampler),
        (DPMSolverMultistepScheduler, UniPCMultistepScheduler, DDIMScheduler, DDPMScheduler),
        strict=True,
    )
)
CLIPS_BY_THRESHOLDING = ("dpmsolver++", "unipc")  # the others have `clip_sample`


@dataclass
class BehaviourConfig:
    """The diffusion behaviour policy: its noise model, training and sampling schedulers."""

    hidden: int = 256  # width of the noise MLP
    depth: int = 3  # its hidden layers
    time_dim: int = 32  # sinusoidal timestep-embedding width
    num_train_timesteps: int = 1000  # DDPMScheduler training grid
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"  # DDPM's β schedule
    clip_sample: bool = True  # clip x̂0 to [-1, 1] at every sampling step (evaluation only)
    sampler: Sampler = "dpmsolver++"  # the sampling scheduler (evaluation only)
    lr: float = 3e-4  # Adam learning rate


class NoiseMLP(nn.Module):
    """ε_θ(a_t, t, s) -> (B, act_dim): an MLP (Mish) over [a_t, embed(t), s]."""

    def __init__(self, act_dim: int, obs_dim: int, hidden: int = 256, depth: int = 3, time_dim: int = 32):
        super().__init__()
        # [sin(t·ω_k), cos(t·ω_k)], ω_k = 10000^(−k/(time_dim/2)): the transformer embedding
        self.time_embedding = Timesteps(time_dim, flip_sin_to_cos=False, downscale_freq_shift=0)
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
        embedding = self.time_mlp(self.time_embedding(t))
        return self.mlp(torch.cat([x_t, embedding, cond], dim=1))


def training_scheduler(config: BehaviourConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        clip_sample=config.clip_sample,
        prediction_type="epsilon",
    )


def sampling_scheduler(config: BehaviourConfig, train: DDPMScheduler) -> Scheduler:
    """A fresh ``config.sampler`` scheduler sharing the training noise schedule, clipping x̂0 to
    [-1, 1] at every step when ``config.clip_sample`` (module docstring)."""
    if config.sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {tuple(SAMPLERS)}, got {config.sampler!r}")
    if config.sampler in CLIPS_BY_THRESHOLDING:
        clipping = {"thresholding": config.clip_sample, "sample_max_value": 1.0}
    else:
        clipping = {"clip_sample": config.clip_sample, "clip_sample_range": 1.0, "thresholding": False}
    return SAMPLERS[config.sampler].from_config(train.config, **clipping)


def smc_scheduler(config: BehaviourConfig, train: Scheduler) -> DPMSolverMultistepScheduler:
    """DPM-Solver++ SDE on the noise schedule of ``train`` (the training scheduler, or one made from
    it), for SMC selection (SMC needs a stochastic step); clips x̂0 like the sampling scheduler
    when ``config.clip_sample``."""
    return DPMSolverMultistepScheduler.from_config(
        train.config,
        algorithm_type="sde-dpmsolver++",
        thresholding=config.clip_sample,
        sample_max_value=1.0,
    )


def diffusion_loss(
    model: nn.Module,
    scheduler: DDPMScheduler,
    actions: Tensor,
    states: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """mean ‖ε_θ(α_t·a + σ_t·ε, t, s) − ε‖² with t uniform on the training grid."""
    # Drawn on the generator's device (the CPU here), then moved: the same numbers on any device.
    t = torch.randint(0, scheduler.config["num_train_timesteps"], (len(actions),), generator=generator)
    noise = torch.randn(actions.shape, generator=generator)
    t, noise = t.to(actions.device), noise.to(actions)
    noisy = scheduler.add_noise(actions, noise, typing.cast(torch.IntTensor, t))  # any integer tensor
    return (model(noisy, t, states) - noise).pow(2).mean()
