"""Adapting diffusers schedulers: timestep -> (α_t, σ_t), and prediction-type conversions.

Convention used everywhere in this package: ``x_t`` is the *model input*, the tensor the noise
model sees, and it is written

    x_t = α_t · x0 + σ_t · ε,        ε ~ N(0, I).

For variance-preserving schedulers (DDPM, DDIM, DPM-Solver++, UniPC) the model input is the
scheduler's ``sample`` and α_t² + σ_t² = 1. Karras-style schedulers (Euler) keep ``sample`` in
variance-exploding form x0 + s·ε and feed the model ``sample / sqrt(s² + 1)``; in model-input
coordinates that is again VP with α = 1/sqrt(1 + s²), σ = s/sqrt(1 + s²). Flow matching uses
x_t = (1 - s)·x0 + s·ε with s = t / num_train_timesteps, so α = 1 - s and σ = s.

Working in model-input coordinates makes the guidance independent of the scheduler: the guided
noise ε̃ = ε̂ + σ_t·∇_{x_t} E_t is the same whichever coordinates ``scheduler.step`` integrates in,
because σ_VE·∇_{sample} = σ·∇_{x_t}.
"""

from __future__ import annotations

from typing import NamedTuple

import diffusers
import numpy as np
import torch
from torch import Tensor

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction")

# How each supported scheduler family's noise level is read, matched with isinstance so that a
# subclass of a supported scheduler is supported too:
#   "cumprod":   α² = alphas_cumprod[t] on the integer training grid
#   "vp_sigmas": sigmas[i] = σ/α (VP), looked up by the position of t in scheduler.timesteps
#   "ve_sigmas": same sigmas, but the scheduler scales the model input (Euler family)
#   "flow":      σ = t / num_train_timesteps
_KINDS: tuple[tuple[type, str], ...] = (
    (diffusers.DDPMScheduler, "cumprod"),
    (diffusers.DDIMScheduler, "cumprod"),
    (diffusers.DPMSolverMultistepScheduler, "vp_sigmas"),
    (diffusers.DPMSolverSinglestepScheduler, "vp_sigmas"),
    (diffusers.UniPCMultistepScheduler, "vp_sigmas"),
    (diffusers.DEISMultistepScheduler, "vp_sigmas"),
    (diffusers.EulerDiscreteScheduler, "ve_sigmas"),
    (diffusers.EulerAncestralDiscreteScheduler, "ve_sigmas"),
    (diffusers.FlowMatchEulerDiscreteScheduler, "flow"),
)
SUPPORTED_SCHEDULERS = tuple(cls.__name__ for cls, _ in _KINDS)


def _kind(scheduler) -> str:
    kind = next((k for cls, k in _KINDS if isinstance(scheduler, cls)), None)
    if kind is None:
        raise TypeError(
            f"{type(scheduler).__name__} is not supported by energy_guidance; supported schedulers "
            f"(and their subclasses): {', '.join(SUPPORTED_SCHEDULERS)}."
        )
    if kind == "vp_sigmas" and scheduler.config.get("use_flow_sigmas", False):
        return "flow"
    return kind


def prediction_type(scheduler) -> str:
    """The scheduler's prediction type; flow-matching schedulers predict the velocity ε - x0."""
    if _kind(scheduler) == "flow" and "prediction_type" not in scheduler.config:
        return "flow_prediction"
    return scheduler.config.get("prediction_type", "epsilon")


def _training_sigmas(scheduler) -> Tensor:
    """σ/α on the integer training grid, from alphas_cumprod (VP and VE schedulers)."""
    acp = scheduler.alphas_cumprod.to(torch.float64)
    return ((1 - acp) / acp).sqrt()


def _scheduled_ratio(scheduler, t: Tensor, kind: str) -> Tensor:
    """s = σ/α (VP, VE) or σ (flow) for each timestep in ``t``.

    Timesteps of the scheduler's current schedule read ``scheduler.sigmas`` (exact, also for
    Karras or exponential sigmas); any other timestep uses the training noise schedule. During
    sampling the scheduler's own ``step_index`` decides, since a schedule may repeat a timestep.
    """
    sigmas = getattr(scheduler, "sigmas", None)
    timesteps = getattr(scheduler, "timesteps", None)
    if sigmas is None or timesteps is None or len(timesteps) == 0:
        return _training_ratio(scheduler, t, kind)
    ts = timesteps.detach().to("cpu", torch.float64)
    index = getattr(scheduler, "step_index", None)
    if len(t) == 1 and isinstance(index, int) and index < len(ts) and ts[index] == t[0]:
        return sigmas.detach().to("cpu", torch.float64)[index : index + 1]
    # Locate each t in the schedule by binary search (schedules may hold 1000 entries).
    order = torch.argsort(ts, stable=True)
    pos = torch.searchsorted(ts[order], t).clamp(max=len(ts) - 1)
    found = ts[order][pos] == t
    scheduled = sigmas.detach().to("cpu", torch.float64)[order[pos]]
    if found.all():
        return scheduled
    return torch.where(found, scheduled, _training_ratio(scheduler, t, kind))


def _training_ratio(scheduler, t: Tensor, kind: str) -> Tensor:
    """s of the training noise schedule, interpolated linearly in t as Euler does."""
    if kind == "flow":
        return t / scheduler.config.num_train_timesteps
    table = _training_sigmas(scheduler)
    grid = np.arange(len(table), dtype=np.float64)
    return torch.from_numpy(np.interp(t.numpy(), grid, table.numpy()))


def noise_level(scheduler, timestep: Tensor | float | int) -> tuple[Tensor, Tensor]:
    """Coefficients (α_t, σ_t) of the model input x_t = α_t·x0 + σ_t·ε at ``timestep``.

    ``timestep`` is a number or a tensor of any shape; α and σ are float64 tensors of its shape.
    This is the single place where the package reads a scheduler's noise schedule.
    """
    kind = _kind(scheduler)
    t = torch.as_tensor(timestep).detach().to("cpu", torch.float64)
    shape = t.shape
    t = t.reshape(-1)
    if kind == "cumprod":
        acp = scheduler.alphas_cumprod.to(torch.float64)
        if (t != t.round()).any() or (t < 0).any() or (t >= len(acp)).any():
            raise ValueError(f"{type(scheduler).__name__} needs integer timesteps in [0, {len(acp)})")
        alpha2 = acp[t.long()]
        alpha, sigma = alpha2.sqrt(), (1 - alpha2).sqrt()
    elif kind == "flow":
        s = _scheduled_ratio(scheduler, t, kind)
        alpha, sigma = 1 - s, s
    else:
        s = _scheduled_ratio(scheduler, t, kind)
        alpha = 1 / (1 + s**2).sqrt()
        sigma = s * alpha
    return alpha.reshape(shape), sigma.reshape(shape)


def training_timesteps(scheduler) -> Tensor:
    """The integer training timesteps with 0 < α and 0 < σ: where training targets and variance
    tables are defined (flow matching's t = 0 is noise-free, a zero-terminal-SNR end is pure noise).
    Build targets with the scheduler the model was trained with (no custom sampling sigmas)."""
    t = torch.arange(scheduler.config.num_train_timesteps)
    alpha, sigma = noise_level(scheduler, t)
    return t[(alpha > 0) & (sigma > 0)]


def _expand(c: Tensor, like: Tensor) -> Tensor:
    """Broadcast a per-sample coefficient of shape () or (B,) against a batch ``like`` (B, ...)."""
    c = c.to(device=like.device, dtype=like.dtype)
    return c.reshape(c.shape + (1,) * (like.dim() - c.dim()))


class Prediction(NamedTuple):
    """A model output in noise and data form: ε̂ and x̂0 (both shaped like x_t), x_t = α·x̂0 + σ·ε̂."""

    eps: Tensor
    x0: Tensor


def to_eps_x0(output: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor, prediction_type: str) -> Prediction:
    """Convert a model output to (ε̂, x̂0) with x_t = α·x̂0 + σ·ε̂.

    epsilon:          ε̂ = out,                x̂0 = (x_t - σ·ε̂)/α  (Tweedie's posterior mean)
    sample:           x̂0 = out,               ε̂ = (x_t - α·x̂0)/σ
    v_prediction:     v = α·ε - σ·x0,         x̂0 = (α·x_t - σ·v)/(α²+σ²), ε̂ = (σ·x_t + α·v)/(α²+σ²)
    flow_prediction:  v = ε - x0 (α = 1 - σ), x̂0 = x_t - σ·v,         ε̂ = x_t + α·v
    """
    a, s = _expand(alpha, x_t), _expand(sigma, x_t)
    if prediction_type == "epsilon":
        return Prediction(output, (x_t - s * output) / a)
    if prediction_type == "sample":
        return Prediction((x_t - a * output) / s, output)
    if prediction_type == "v_prediction":
        norm = a**2 + s**2
        return Prediction((s * x_t + a * output) / norm, (a * x_t - s * output) / norm)
    if prediction_type == "flow_prediction":
        return Prediction(x_t + a * output, x_t - s * output)
    raise ValueError(f"unknown prediction type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def from_eps_x0(eps: Tensor, x0: Tensor, alpha: Tensor, sigma: Tensor, prediction_type: str) -> Tensor:
    """Inverse of :func:`to_eps_x0`: the model output that encodes (ε, x0)."""
    a, s = _expand(alpha, eps), _expand(sigma, eps)
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        return a * eps - s * x0
    if prediction_type == "flow_prediction":
        return eps - x0
    raise ValueError(f"unknown prediction type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def log_snr(alpha: Tensor, sigma: Tensor) -> Tensor:
    """λ = log(α²/σ²), the scheduler-independent noise coordinate used by tables and networks."""
    return 2 * (torch.log(alpha) - torch.log(sigma))


def add_noise(x0: Tensor, noise: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """x_t = α·x0 + σ·ε in model-input coordinates (per-sample α, σ of shape () or (B,))."""
    return _expand(alpha, x0) * x0 + _expand(sigma, x0) * noise
