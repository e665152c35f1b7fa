"""SMC runs under the two protocols (``--smc-protocol``): an equal particle budget scored on the
pooled weighted particles, or one output per population."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import torch
from diffusers import DDPMScheduler

from energy_guidance import AnalyticEnergyGuidance, smc_sample
from energy_guidance.testing import WeightedTarget

from .methods import METHODS, TWISTS
from .scoring import label_of, score

if TYPE_CHECKING:
    from .config import Config

# How a sampler that produced non-finite values fails: the library's FloatingPointError, or (second
# order) a linear solve on a non-finite Hessian or covariance.
DIVERGENCE = (FloatingPointError, torch.linalg.LinAlgError)


def run_smc(
    ctx: dict,
    guidance,
    k: int,
    beta: float,
    cfg: Config,
    target: WeightedTarget,
    label: float,
    log_z: float,
    temper: float = 0.0,
) -> dict:
    """One SMC run with K particles per population, under ``cfg.smc_protocol`` (``temper``: p of
    the tempered twist, 0 for the guidance as it is; ``label``, ``log_z``: the target's).

    budget: B = smc_particles/K populations in one call (``resample=False``), scored on their
    pooled weighted particles. populations: B = num_samples populations in calls of at most
    smc_chunk particles (``resample=True``), scored on their B outputs like any sampler's samples.
    """
    populations = cfg.smc_protocol == "populations"
    b = cfg.num_samples if populations else max(cfg.smc_particles // k, 1)
    per_call = max(cfg.smc_chunk // k, 1) if populations else b
    g = torch.Generator().manual_seed(cfg.seed + 3)
    start = time.perf_counter()
    try:
        results = [
            smc_sample(
                guidance.scheduler,
                guidance,
                (min(per_call, b - i), 2),
                num_particles=k,
                num_inference_steps=cfg.num_inference_steps,
                generator=g,
                resample=populations,
                energy=ctx["energy"],
                beta=beta,
                temper=temper,
            )
            for i in range(0, b, per_call)
        ]
    except DIVERGENCE:  # non-finite weights or values inside a step
        results = []
    seconds = time.perf_counter() - start
    row = {"sample_s": seconds, "populations": b, "K": k}
    if not results or not all(bool(torch.isfinite(r.samples).all()) for r in results):
        return {**row, **score(ctx, None, target), "cloud": None}
    ess = torch.cat([r.ess for r in results], 1) / k  # (steps + 1, B)
    row |= {
        "ess_mean": float(ess.mean()),
        "ess_min": float(ess.min(dim=0).values.mean()),
        "ess_final": float(ess[-1].mean()),
        "resamplings": float(torch.cat([r.resampled for r in results], 1).sum(0).double().mean()),
        "logz_err": float(torch.cat([r.log_normalizer for r in results]).mean()) - log_z,
    }
    if populations:
        x = torch.cat([r.samples for r in results]).float()
        labels = label_of(ctx, x)  # one output per population: the label's spread is the sample's
    else:
        (result,) = results
        x = result.samples.reshape(b * k, 2).float()
        w_pop = result.log_weights.exp()  # (B, K), each row sums to 1
        labels = (w_pop * label_of(ctx, x).reshape(b, k)).sum(1)  # each population's estimate of E_p[ℓ]
    row |= {
        "label_err": abs(float(labels.mean()) - label),
        "label_se": float(labels.std() / math.sqrt(len(labels))) if len(labels) > 1 else math.nan,
    }
    if populations:
        return {**row, **score(ctx, x, target), "sample": x}
    w = (w_pop / b).reshape(-1)
    distances = {"sw2": target.sliced_wasserstein(x, w), "mmd2": target.mmd(x, w)}
    return {**row, **distances, "diverged": False, "label": float(labels.mean()), "cloud": (x, w)}


def smc_guidance(guidance: AnalyticEnergyGuidance, cfg: Config) -> AnalyticEnergyGuidance:
    """The guidance SMC steps with: the same model and estimator on a DDPM scheduler with
    ``cfg.smc_spacing`` (the models here take any training timestep, so only the spacing changes)."""
    if cfg.smc_spacing == "leading":
        return guidance
    spacing = cfg.smc_spacing
    return guidance.replace(
        scheduler=DDPMScheduler(num_train_timesteps=1000, clip_sample=False, timestep_spacing=spacing)
    )


def run_twists(
    twists: tuple[str, ...],
    guidances: dict,
    ctx: dict,
    beta: float,
    cfg: Config,
    target: WeightedTarget,
    label: float,
    log_z: float,
) -> dict[str, dict]:
    """The rows ``smc_<twist>_K<K>`` of each twist and K. ``guidances`` holds the samplers' guidance
    by method; a twist whose sampler did not run builds it (a network is trained for it at the
    samplers' budget)."""
    found = {}
    for name in twists:
        twist = TWISTS[name]
        if twist.method not in guidances:
            guidances[twist.method], _ = METHODS[twist.method].build(ctx, beta, cfg)
        temper = cfg.temper if twist.tempered else 0.0
        guidance = smc_guidance(guidances[twist.method], cfg)
        for k in cfg.smc_k:
            found[f"smc_{name}_K{k}"] = run_smc(ctx, guidance, k, beta, cfg, target, label, log_z, temper)
    return found
