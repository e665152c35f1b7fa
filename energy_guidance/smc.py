"""Sequential Monte Carlo over guided diffusion steps: guidance made exact in the limit of many particles.

The twisted diffusion sampler (Wu et al. 2023, arXiv 2306.17775), for any guidance of this package.
Target: p(x0) ∝ q(x0)·exp(-β·E(x0)), with q the distribution of the model's own (unguided) sampler.
Each of the B outputs comes from its own population of K particles; a population is a particle
approximation of the path measure

    γ_i(x_{0:i}) = q(x_0)·Π_{j<i} p(x_{j+1} | x_j)·exp(-E_{t_i}(x_i)),

p the model's (unguided) transition of the scheduler, E_{t_i} the guidance's intermediate energy
(the *twist*: closed form, network, CEP or an exact estimator) and, after the last step, β·E(x0) in
its place. Particles move by the guided step r(x_{i+1} | x_i) (the scheduler stepped with
``guidance.guided_model_output``) and carry the incremental importance weight

    log w = log p(x_{i+1} | x_i) - log r(x_{i+1} | x_i) - E_{t_{i+1}}(x_{i+1}) + E_{t_i}(x_i).

When the effective sample size 1/Σ W_k² of a population drops below ``ess_threshold``·K it is
resampled (systematic by default). The mean of the unnormalised weights, multiplied across steps,
is an unbiased estimate of Z = E_q[exp(-β·E(x0))] per population; ``log_normalizer`` is its log.
Any twist and any guided proposal give the exact target as K → ∞; a better twist needs fewer
particles, and the exact twist keeps the weights uniform up to the scheduler's discretisation.

Transition densities. Each supported step is Gaussian given the state,
x' = μ(model output) + s·z with z ~ N(0, I), and s does not depend on the model output, so
p and r share s and differ only in their means μ_u (unguided output) and μ_g (guided output):

    log p(x' | x) - log r(x' | x) = -z·δ - ½‖δ‖²,   δ = (μ_g - μ_u)/s,   x' = μ_g + s·z.

μ and s are read off ``scheduler.step`` itself (no formula is copied): μ is the step with the
noise set to 0 and s the step with noise 1 minus it, both by
:meth:`~energy_guidance.schedulers.SchedulerAdapter.step_with_noise`, which owns how the noise is
given to each scheduler.

- DDPM: x_{t'} ~ N(μ̃_t(x_t, x̂0), β̃_t·I), the posterior mean and (``fixed_small``) variance
  of DDPM's eq. (7); state = model input x_t.
- DDIM with η > 0 (``eta=``): x_{t'} ~ N(√ᾱ'·x̂0 + √(1-ᾱ'-s²)·ε̂, s²·I), s = η·σ_DDIM(t, t').
- Euler ancestral: the chain lives in the scheduler's variance-exploding coordinates
  y = x0 + σ·ε = x_t/α_t (``sample``); y' ~ N(y + (σ_down - σ)·(y - x̂0)/σ, σ_up²·I). p and r are
  densities of the same variable y, so their ratio does not depend on the coordinates (a change
  of variables multiplies both by the same Jacobian); the twist is evaluated on the model input
  ``scale_model_input(y)`` = x_t, as guidance always is.
- DPM-Solver++ SDE (``algorithm_type="sde-dpmsolver++"``, also ``"sde-dpmsolver"``):
  x' ~ N((σ'/σ)e^{-h}·x + α'(1 - e^{-2h})·D, σ'²(1 - e^{-2h})·I), D the multistep combination of
  the current and previous data predictions. The step is Markov in (x, past model outputs), and
  the past outputs are functions of the particle's past states: the model's density p uses the
  *unguided* outputs of its own path, the proposal r the guided ones. Two histories are kept per
  particle (the scheduler's state with guided outputs, and its per-particle entries with unguided
  ones); resampling permutes both.

Every one of these samplers ends with a deterministic step (ᾱ' = 1, or σ' = 0): a density ratio
of two point masses is undefined, so a step with s = 0 (below 1e-6 of the particles' scale: DDPM
clamps its last variance to 1e-20, not 0) moves every particle by the *model's*
step (no proposal ratio; the twist carries the guidance), and the weight after the last step is
exp(-β·E(x0))/exp(-E_{t_last}(x_{t_last})).

Scheduler state. ``scheduler.step`` mutates the scheduler (step index, multistep history), so every
trial step runs from a snapshot of its attributes, restored afterwards
(:meth:`~energy_guidance.schedulers.SchedulerAdapter.snapshot`). Per-particle state entries
are the tensors (or tensors in lists/tuples) of the particles' shape (B·K, ...); resampling indexes
them with the particles. Samples need at least one feature dimension (``shape`` = (B, d, ...)).

Which scheduler, and how good a twist. Weights degenerate where the last stochastic step is short
(DDPM's, DDIM's and Euler ancestral's default "leading" spacing): prefer
``timestep_spacing="trailing"`` (DDPM, DDIM with η = 1, Euler ancestral), or DPM-Solver++ SDE.
SMC is exact as K → ∞ for any twist, but the particles needed grow with the twist's error: read
``log_normalizer`` and ``ess`` as diagnostics (a log Z that still rises with K means K is too small
for that twist). The measurements behind both: docs/benchmarks.md, "SMC: the scheduler's last
step and poor twists".

Example (a two-mode Gaussian mixture, its exact noise model, a linear energy, DDPM)::

    import torch
    from diffusers import DDPMScheduler

    from energy_guidance import smc_sample
    from energy_guidance.baselines import dps_guidance
    from energy_guidance.testing import GaussianMixture

    data = GaussianMixture(torch.ones(2), torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), torch.full((2, 2), 0.25))
    scheduler = DDPMScheduler(clip_sample=False, timestep_spacing="trailing")
    model = data.noise_model(scheduler)


    def energy(x):  # lower is better: prefer large x_1
        return -x[:, 0]


    guided = dps_guidance(scheduler, model, energy, beta=2.0)  # the twist and the proposal
    result = smc_sample(scheduler, guided, (256, 2), num_particles=16, num_inference_steps=50,
                        generator=torch.Generator().manual_seed(0))
    result.samples          # (256, 2): one draw per population of 16 particles
    result.ess              # (51, 256): effective sample size after each weighting
    result.log_normalizer   # (256,): estimates of log Z = log E_q[exp(-β·E(x0))] (3.81 here)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .callables import Cond, Energy, NoiseModel, call_energy, call_model, check_beta
from .guidance import AnalyticEnergyGuidance
from .progress import progress_bar
from .sampling import check_shape
from .schedulers import SchedulerAdapter, SchedulerLike, check_num_inference_steps
from .tempering import Tempered

RESAMPLING = ("systematic", "multinomial")
# A step whose noise std is below this (relative to the particles' scale, at least 1) is deterministic:
# DDPM clamps the variance of its last step to 1e-20 rather than 0 (std 1e-10 with "trailing" spacing).
_NEGLIGIBLE_NOISE = 1e-6


class SMCResult(NamedTuple):
    """What :func:`smc_sample` returns.

    samples:        ``shape`` (one equally weighted draw per population) with ``resample=True``,
                    otherwise every particle, (B, K, ...).
    log_weights:    (B, K) normalised log-weights of the final particles (logsumexp over K is 0);
                    with ``resample=True`` the weights the draw was made from.
    ess:            (num_inference_steps + 1, B) effective sample size 1/Σ W_k² after each
                    weighting: row 0 the twist at the initial noise, row i after step i (the last
                    row includes the final correction exp(-β·E(x0))), before any resampling.
    log_normalizer: (B,) float64 estimate of log Z = log E_q[exp(-β·E(x0))] per population.
    resampled:      (num_inference_steps + 1, B) bool: where a population was resampled.
    """

    samples: Tensor
    log_weights: Tensor
    ess: Tensor
    log_normalizer: Tensor
    resampled: Tensor


# ---------------------------------------------------------------------------------------------
# Per-particle entries of the scheduler's state


def _holds_particles(value, particle_shape: torch.Size) -> bool:
    if isinstance(value, Tensor):
        return value.shape == particle_shape
    if isinstance(value, list | tuple):
        return any(isinstance(v, Tensor) and v.shape == particle_shape for v in value)
    return False


def _particle_entries(state: dict, particle_shape: torch.Size) -> dict:
    """The per-particle entries of a scheduler snapshot (e.g. DPM-Solver's ``model_outputs``)."""
    return {k: v for k, v in state.items() if _holds_particles(v, particle_shape)}


def _index_entries(state: dict, index: Tensor, particle_shape: torch.Size) -> dict:
    """``state`` with every per-particle tensor indexed by ``index`` (B·K,) along its first axis."""

    def take(v):
        if isinstance(v, Tensor) and v.shape == particle_shape:
            return v[index.to(v.device)]
        return v

    out = dict(state)
    for k, v in state.items():
        if isinstance(v, Tensor):
            out[k] = take(v)
        elif isinstance(v, list | tuple) and _holds_particles(v, particle_shape):
            out[k] = type(v)(take(e) for e in v)
    return out


# ---------------------------------------------------------------------------------------------
# Weights and resampling


def _reweight(log_w: Tensor, increment: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Normalised log-weights, log mean-weight increment of Z and ESS after multiplying by
    exp(``increment``) (all (B, K) or (B,), float64)."""
    if torch.isnan(increment).any():
        raise FloatingPointError("NaN in the incremental importance weights (twist or energy not finite)")
    unnormalised = log_w + increment
    log_mean = torch.logsumexp(unnormalised, dim=1)
    if not torch.isfinite(log_mean).all():
        raise FloatingPointError(
            "every particle of a population has zero (or infinite) weight; check the twist and energy"
        )
    log_w = unnormalised - log_mean[:, None]
    ess = torch.exp(-torch.logsumexp(2 * log_w, dim=1))
    return log_w, log_mean, ess


def _uniform(size: tuple[int, ...], generator: torch.Generator | None, device) -> Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(size, generator=generator, dtype=torch.float64, device=gen_device).to(device)


def _ancestors(log_w: Tensor, method: str, generator: torch.Generator | None) -> Tensor:
    """K ancestor indices per population (B, K), drawn from the normalised weights exp(log_w)."""
    b, k = log_w.shape
    weights = torch.softmax(log_w, dim=1)
    if method == "multinomial":
        gen_device = generator.device if generator is not None else weights.device
        return torch.multinomial(weights.to(gen_device), k, replacement=True, generator=generator).to(
            weights.device
        )
    # systematic: one uniform per population, K evenly spaced points through the weights' CDF
    cdf = weights.cumsum(dim=1)
    cdf[:, -1] = 1.0
    u = (_uniform((b, 1), generator, weights.device) + torch.arange(k, device=weights.device)) / k
    return torch.searchsorted(cdf, u).clamp(max=k - 1)


# ---------------------------------------------------------------------------------------------
# The sampler


def _twisted(
    scheduler: SchedulerLike, model: NoiseModel, beta: float | None, energy: Energy | None, temper: float
) -> tuple[Callable[[Tensor, Tensor, Cond], tuple[Tensor, Tensor, Tensor]], float, Energy]:
    """(parts(x_t, t, cond) -> (twist E_t, the model's output, the proposal's output), β, E) of a
    guided model (its intermediate energy and guided step) or of a plain one (no twist)."""
    if isinstance(model, AnalyticEnergyGuidance):
        if model.scheduler is not scheduler:
            raise ValueError(
                "model is guided on another scheduler than `scheduler`: build the guidance on the "
                "scheduler you sample with (or guidance.replace(scheduler=scheduler))"
            )
        if temper:
            model = model.replace(estimator=Tempered(model.estimator, temper))
        beta = model.beta if beta is None else check_beta(beta)
        energy = model.estimator.energy if energy is None else energy
        if not callable(energy):
            raise ValueError(
                f"the final correction needs the energy E(x0), and {type(model.estimator).__name__} has "
                "none: pass smc_sample(..., energy=E)"
            )
        return model.step_parts, beta, energy
    if temper:
        raise ValueError("temper tempers a guided model's twist; model is not guided")
    if beta is None or not callable(energy):
        raise ValueError("an unguided model needs the target's energy= and beta=")
    beta = check_beta(beta)

    def parts(x_t: Tensor, t: Tensor, cond: Cond) -> tuple[Tensor, Tensor, Tensor]:
        out = call_model(model, x_t, t, cond)
        return torch.zeros(len(x_t), dtype=x_t.dtype, device=x_t.device), out, out

    return parts, beta, energy


def smc_sample(
    scheduler: SchedulerLike,
    model: NoiseModel,
    shape: tuple[int, ...],
    num_particles: int = 16,
    *,
    cond: Tensor | None = None,
    num_inference_steps: int = 50,
    generator: torch.Generator | None = None,
    resample: bool = True,
    energy: Energy | None = None,
    beta: float | None = None,
    ess_threshold: float = 0.5,
    resampling: str = "systematic",
    eta: float | None = None,
    temper: float = 0.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> SMCResult:
    """Sample p(x0) ∝ q(x0)·exp(-β·E(x0)) by SMC over ``scheduler``'s steps of ``model``.

    Args:
        scheduler: a scheduler that steps stochastically (DDPM, DDIM with ``eta`` > 0, Euler
            ancestral, DPM-Solver++ SDE).
        model: a guided model (an :class:`~energy_guidance.AnalyticEnergyGuidance` built on
            ``scheduler``): its ``intermediate_energy`` is the twist and its guided step the
            proposal (with its ``scale`` and ``rescale``: any proposal is corrected by the
            weights). Or the noise model itself: no twist, the model's own steps as proposal
            (``energy`` and ``beta`` then required).
        shape: (B, ...) the output shape; B populations, samples of shape (...) (at least 1-D).
        num_particles: K, particles per population; B·K particles move as one batch.
        cond: None or a tensor (B, ...), one condition per population (repeated K times).
        num_inference_steps: scheduler steps.
        generator: drives the initial noise, every step's noise and the resampling.
        resample: True returns one draw per population from its final weighted particles
            (``samples`` of ``shape``); False returns all particles (B, K, ...).
        energy: E(x0) or E(x0, cond) -> (B·K,) for the final correction β·E(x0); defaults to the
            estimator's ``energy`` (closed form, DPS, Gaussian-mixture ground truth). Required for
            estimators without one (networks, CEP, :class:`EmpiricalIntermediateEnergy`).
        beta: the target's β; defaults to the guided model's. A twist built for another β (or a
            network trained at one) then only steers the particles.
        ess_threshold: resample a population when its ESS < ``ess_threshold``·K (0: never;
            1: whenever its weights are not uniform).
        resampling: "systematic" (default, lower variance) or "multinomial".
        eta: DDIM's η (default 1); an error for other schedulers.
        temper: p > 0 tempers the twist and the proposal's guidance by λ_t = (α²/(α²+σ²))^p
            (:class:`~energy_guidance.tempering.Tempered`): the target is unchanged, and a twist
            that is poor at high noise (DPS-style, the closed forms) moves the particles less far
            from the model's steps. 0 (default) uses the guidance as it is; leave it at 0 for an
            exact or near-exact twist.
        device, dtype: of the particles (default CPU, or ``cond``'s device; float32).
        progress: show a progress bar.

    Returns:
        An :class:`SMCResult`.
    """
    shape = check_shape(shape)
    b, k = shape[0], int(num_particles)  # check_shape: B >= 1
    if k < 1:
        raise ValueError(f"need at least one particle, got K={k}")
    num_inference_steps = check_num_inference_steps(scheduler, num_inference_steps)
    if not 0.0 <= ess_threshold <= 1.0:
        raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold}")
    if resampling not in RESAMPLING:
        raise ValueError(f"resampling must be one of {RESAMPLING}, got {resampling!r}")
    if cond is not None:
        if not isinstance(cond, Tensor):
            raise TypeError(f"cond must be a tensor (B, ...) or None, got {type(cond).__name__}")
        if cond.shape[0] != b:
            raise ValueError(f"cond has {cond.shape[0]} rows; expected one per population (B = {b})")
    parts, beta, energy = _twisted(scheduler, model, beta, energy, temper)
    if device is None:
        device = cond.device if cond is not None else torch.device("cpu")
    device = torch.device(device)

    n = b * k
    adapter = SchedulerAdapter(scheduler)
    x = adapter.start(num_inference_steps, (n, *shape[1:]), generator, device, dtype)  # resets its state
    options = adapter.stochastic_step_options(eta)  # also rejects deterministic schedulers
    particle_shape = adapter.state_shape(x)

    def step(out: Tensor, t: Tensor, x: Tensor, noise: Tensor) -> Tensor:
        return adapter.step_with_noise(out, t, x, noise, options)

    cond_k = None if cond is None else cond.repeat_interleave(k, dim=0)
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)

    log_w = torch.full((b, k), -math.log(k), dtype=torch.float64, device=device)
    log_z = torch.zeros(b, dtype=torch.float64, device=device)
    ess_rows, resampled_rows = [], []
    pending = torch.zeros(n, dtype=torch.float64, device=device)  # log p/r - log twist of the last state
    guided_state = adapter.snapshot()  # the scheduler's state along the proposal (guided outputs)
    model_entries: dict = {}  # its per-particle entries along the model's path (unguided outputs)

    def weigh(increment: Tensor) -> bool:
        nonlocal log_w, log_z
        log_w, log_mean, ess = _reweight(log_w, increment.reshape(b, k))
        log_z = log_z + log_mean
        ess_rows.append(ess)
        low = ess < ess_threshold * k * (1 - 1e-9)  # uniform weights' ESS rounds to just below K
        resampled_rows.append(low)
        return bool(low.any())

    def ancestors(low: Tensor) -> Tensor:
        nonlocal log_w
        chosen = _ancestors(log_w, resampling, generator)
        keep = torch.arange(k, device=device).expand(b, k)
        chosen = torch.where(low[:, None], chosen, keep)
        log_w = torch.where(low[:, None], torch.full_like(log_w, -math.log(k)), log_w)
        return (torch.arange(b, device=device)[:, None] * k + chosen).reshape(-1)

    timesteps = adapter.scheduler.timesteps
    for t in progress_bar(timesteps, progress=progress, desc="smc"):
        adapter.restore(guided_state)
        x_in = adapter.model_input(x, t)
        guided_state = adapter.snapshot()  # scale_model_input may set the step index
        # One model evaluation gives the twist and both steps' outputs (copied with a resampled particle).
        energy_t, out_model, out_guided = parts(x_in, t, cond_k)
        log_twist = -energy_t.to(torch.float64)
        if weigh(pending + log_twist):
            index = ancestors(resampled_rows[-1])
            x, x_in, log_twist = x[index], x_in[index], log_twist[index]
            out_model, out_guided = out_model[index], out_guided[index]
            guided_state = _index_entries(guided_state, index, particle_shape)
            model_entries = _index_entries(model_entries, index, particle_shape)
            adapter.restore(guided_state)

        model_state = {**guided_state, **model_entries}  # the model's own (unguided) history
        adapter.restore(model_state)
        std = step(out_model, t, x, ones)
        adapter.restore(model_state)
        mean_model = step(out_model, t, x, zeros)
        std = std - mean_model  # the noise's coefficient: the same for any model output
        model_entries = _particle_entries(adapter.snapshot(), particle_shape)
        adapter.restore(guided_state)

        if not float(std.abs().max()) > _NEGLIGIBLE_NOISE * max(1.0, float(x.abs().max())):
            # a deterministic step: move by the model's step, no proposal ratio
            step(out_model, t, x, zeros)  # advances the proposal's state
            guided_state = adapter.snapshot()
            x, pending = mean_model, -log_twist
            continue
        if not (std.abs() > 0).all():
            raise RuntimeError("the step's noise is zero for some elements only; cannot weigh it")
        adapter.restore(guided_state)
        mean_guided = step(out_guided, t, x, zeros)
        adapter.restore(guided_state)
        z = adapter.noise(x.shape, generator, device, dtype)
        x = step(out_guided, t, x, z)
        guided_state = adapter.snapshot()
        delta = ((mean_guided - mean_model).to(torch.float64) / std.to(torch.float64)).reshape(n, -1)
        log_ratio = -(z.to(torch.float64).reshape(n, -1) * delta).sum(1) - 0.5 * delta.pow(2).sum(1)
        pending = log_ratio - log_twist

    adapter.restore(guided_state)
    with torch.no_grad():
        final = call_energy(energy, x, cond_k).to(torch.float64)
    weigh(pending - beta * final)
    resampled_rows[-1] = torch.zeros_like(resampled_rows[-1])  # the final weights are returned as they are

    particles = x.reshape(b, k, *shape[1:])
    if resample:
        gen = generator.device if generator is not None else device
        probs = torch.softmax(log_w, dim=1).to(gen)
        pick = torch.multinomial(probs, 1, generator=generator).reshape(b).to(device)
        samples = particles[torch.arange(b, device=device), pick]
    else:
        samples = particles
    return SMCResult(
        samples=samples,
        log_weights=log_w,
        ess=torch.stack(ess_rows),
        log_normalizer=log_z,
        resampled=torch.stack(resampled_rows),
    )
