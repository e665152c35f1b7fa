"""The sampling loop: any supported diffusers scheduler, any (guided or plain) model function."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .callables import call_model


class StepInfo(NamedTuple):
    """What a guided step reports to callbacks: x̂0 after guidance (B, ...) and the norm of the
    change to ε̂, ‖ε̃ − ε̂‖ (B,), after ``scale`` and any rescale."""

    x0_hat: Tensor
    guidance_norm: Tensor


def sample(
    scheduler,
    model: Callable,
    shape: tuple[int, ...],
    *,
    cond=None,
    guidance=None,
    num_inference_steps: int = 50,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    callback: Callable[[dict], None] | None = None,
    progress: bool = False,
) -> Tensor:
    """Run ``scheduler`` from its initial noise for ``num_inference_steps`` steps.

    ``model(x_t, t[, cond])`` follows :mod:`energy_guidance.callables`; with ``guidance`` (an
    :class:`~energy_guidance.AnalyticEnergyGuidance`) each step uses its guided model output
    instead. ``x_t`` is the model input (``scheduler.scale_model_input`` applied). ``callback``
    receives a dict with ``step``, ``timestep``, ``sample`` (the scheduler's state after the
    step) and, when guided, ``x0_hat`` and ``guidance_norm``. Sampling is synchronous: one
    timestep for the whole batch, as diffusers' ``step`` requires. The scheduler's own x̂0
    clipping applies after guidance: ``clip_sample`` (DDPM, DDIM) or ``thresholding`` (DPM-Solver,
    UniPC, DEIS; with ``sample_max_value=1`` it clips to [-1, 1]), also for (B, d) vectors.
    """
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    scheduler.set_timesteps(num_inference_steps, device=device)  # resets multistep state
    init_sigma = float(getattr(scheduler, "init_noise_sigma", 1.0))
    x = torch.randn(shape, generator=generator, dtype=dtype).to(device) * init_sigma
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    extra = {"generator": generator} if takes_generator else {}
    scale_input = getattr(scheduler, "scale_model_input", lambda s, t: s)
    # diffusers' dynamic thresholding reshapes samples to (B, C, -1) and fails on (B, d) vectors;
    # it thresholds per sample either way, so the step sees a (B, d, 1) view.
    as_image = x.dim() == 2 and bool(scheduler.config.get("thresholding", False))
    for i, t in enumerate(tqdm(scheduler.timesteps, disable=not progress, desc="sampling")):
        x_in = scale_input(x, t)
        info = None
        if guidance is None:
            out = call_model(model, x_in, t, cond)
        else:
            out, info = guidance.guided_model_output(x_in, t, cond, return_info=True)
        if as_image:
            x = scheduler.step(out[..., None], t, x[..., None], **extra).prev_sample[..., 0]
        else:
            x = scheduler.step(out, t, x, **extra).prev_sample
        if callback is not None:
            record = {"step": i, "timestep": t, "sample": x}
            if info is not None:
                record.update(info._asdict())
            callback(record)
    return x
