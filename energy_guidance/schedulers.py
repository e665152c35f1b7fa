"""Adapting diffusers schedulers: timestep -> (α_t, σ_t), and prediction-type conversions.

Convention used everywhere in this package: ``x_t`` is the *model input*, the tensor the noise
model sees, and it is written

    x_t = α_t · x0 + σ_t · ε,        ε ~ N(0, I).

Four families of schedulers, recognised by class (a subclass belongs to its parent's family),
each read generically:

- **cumprod** (DDPM, DDIM, PNDM, LCM, TCD): the model input is the scheduler's ``sample`` and
  α² = ``alphas_cumprod[t]`` on the integer training grid, σ² = 1 − α². PNDM's Runge–Kutta
  warm-up evaluates the model at half steps (t − Δ/2, repeated), each at its own ``t``.
- **sigmas** (DPM-Solver++ single/multistep and SDE, UniPC, DEIS, Euler, Euler ancestral, Heun,
  LMS, KDPM2, KDPM2 ancestral): ``scheduler.sigmas`` holds s = σ/α. The VP solvers feed ``sample``
  itself; the k-diffusion ones keep ``sample`` = x0 + s·ε and feed ``scale_model_input``'s
  ``sample / sqrt(s² + 1)``. In model-input coordinates both are α = 1/sqrt(1 + s²), σ = s·α.
- **edm** (EDM Euler, EDM DPM-Solver++): ``sample`` = x0 + s·ε and the model sees
  ``precondition_inputs``' c_in·sample, c_in = 1/sqrt(s² + σ_d²), so α = c_in and σ = s·c_in
  (α²·σ_d² + σ² = 1); timesteps are c_noise = ¼·log s.
- **flow** (flow-matching Euler and Heun, and the sigma solvers with ``use_flow_sigmas``):
  x_t = (1 − s)·x0 + s·ε with s = ``sigmas[i]`` = t / num_train_timesteps.

s is read from ``scheduler.sigmas`` at the scheduler's current ``step_index`` while it samples,
which is the level of the input actually being evaluated also where a step evaluates the model
twice: Heun (and flow-matching Heun) evaluate at ``sigmas[step_index]`` both times (its
``timesteps`` repeat), KDPM2 evaluates its second time at the interpolated ``sigmas_interpol``
and DPM-Solver SDE at its midpoint sigma. Timesteps outside a sampling run are looked up in
``scheduler.timesteps`` (or, off the schedule, in the training noise schedule).

Working in model-input coordinates makes the guidance independent of the scheduler: the guided
noise ε̃ = ε̂ + σ_t·∇_{x_t} E_t is the same whichever coordinates ``scheduler.step`` integrates in,
because a rescaling x ↦ c·x multiplies σ by c and the gradient by 1/c.
"""

from __future__ import annotations

import inspect
import numbers
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, Protocol, TypeAlias, cast

import diffusers
import numpy as np
import torch
from torch import Tensor


class Scheduler(Protocol):
    """A diffusers scheduler as this package reads it (any ``SchedulerMixin`` subclass; which ones
    can be guided: :data:`SUPPORTED_SCHEDULERS`).

    ``config`` is diffusers' frozen config (a mapping with attribute access); ``timesteps`` the
    current schedule, set by ``set_timesteps``; ``step(model_output, timestep, sample, ...)``
    returns an object with ``.prev_sample``. What only some schedulers have (``alphas_cumprod``,
    ``sigmas``, ``step_index``, ``scale_model_input``, ``init_noise_sigma``, ...) is read by
    :class:`SchedulerAdapter` and the functions of this module for the families that have it.

    The functions and classes of this package take a :data:`SchedulerLike`.
    """

    @property
    def config(self) -> Any: ...

    @property
    def timesteps(self) -> Tensor: ...

    def set_timesteps(self, num_inference_steps: int, *args: Any, **kwargs: Any) -> Any: ...

    def step(self, model_output: Tensor, timestep: Any, sample: Tensor, *args: Any, **kwargs: Any) -> Any: ...


class _Placeholder(Protocol):
    """A diffusers scheduler as type checkers see ``from diffusers import DDPMScheduler``: diffusers'
    ``__init__`` imports its torch-less placeholder classes (``utils.dummy_pt_objects``) ahead of
    the real ones under TYPE_CHECKING, and those have none of :class:`Scheduler`'s members."""

    _backends: list[str]


SchedulerLike: TypeAlias = Scheduler | _Placeholder
"""What the package's functions take as ``scheduler``: a :class:`Scheduler`, also as type checkers
see diffusers' top-level scheduler names (:class:`_Placeholder`)."""


def as_scheduler(scheduler: SchedulerLike) -> Scheduler:
    """``scheduler`` as the :class:`Scheduler` it is at run time (a placeholder class cannot be
    instantiated: without torch it raises, with torch diffusers gives the real class)."""
    return cast(Scheduler, scheduler)


class _TrainingSchedule(Protocol):
    """The cumprod and sigmas families' discrete training schedule: ᾱ_t for t = 0 … T - 1."""

    alphas_cumprod: Tensor


def _alphas_cumprod(scheduler: Scheduler) -> Tensor:
    """ᾱ of a cumprod- or sigmas-family scheduler, float64."""
    return cast(_TrainingSchedule, scheduler).alphas_cumprod.to(torch.float64)


class _Interpolated(Protocol):
    """KDPM2's (and KDPM2 ancestral's) sigmas of its second, interpolated evaluations."""

    sigmas_interpol: Tensor


class _BrownianSeeded(Protocol):
    """DPM-Solver SDE's seed of its Brownian tree (None: drawn from torch's global generator)."""

    noise_sampler_seed: int | None


PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction", "edm_epsilon", "edm_v_prediction")

# Each family's members, matched with isinstance so that a subclass is supported too. Only the
# family is recognised by class; the noise level itself is read from the scheduler's own state.
_FAMILIES: tuple[tuple[str, tuple[type, ...]], ...] = (
    (
        "cumprod",
        (
            diffusers.DDPMScheduler,
            diffusers.DDIMScheduler,
            diffusers.PNDMScheduler,
            diffusers.LCMScheduler,
            diffusers.TCDScheduler,
        ),
    ),
    (
        "sigmas",
        (
            diffusers.DPMSolverMultistepScheduler,
            diffusers.DPMSolverSinglestepScheduler,
            diffusers.DPMSolverSDEScheduler,  # needs torchsde; a placeholder class without it
            diffusers.UniPCMultistepScheduler,
            diffusers.DEISMultistepScheduler,
            diffusers.EulerDiscreteScheduler,
            diffusers.EulerAncestralDiscreteScheduler,
            diffusers.HeunDiscreteScheduler,
            diffusers.LMSDiscreteScheduler,
            diffusers.KDPM2DiscreteScheduler,
            diffusers.KDPM2AncestralDiscreteScheduler,
        ),
    ),
    ("edm", (diffusers.EDMEulerScheduler, diffusers.EDMDPMSolverMultistepScheduler)),
    ("flow", (diffusers.FlowMatchEulerDiscreteScheduler, diffusers.FlowMatchHeunDiscreteScheduler)),
)
SUPPORTED_SCHEDULERS = tuple(cls.__name__ for _, members in _FAMILIES for cls in members)

# Schedulers that cannot be guided at all, and why (matched by class name along the MRO, so that
# these optional classes need not be importable).
_NOT_GUIDABLE = {
    "ScoreSdeVeScheduler": (
        "it samples with a predictor-corrector pair (step_pred/step_correct) that takes a score, "
        "not a model output through step()"
    ),
    "VQDiffusionScheduler": (
        "it is a discrete (categorical) diffusion over codebook indices: there is no Gaussian noise "
        "level α_t, σ_t and no gradient of a continuous sample to guide with"
    ),
    "AmusedScheduler": (
        "it generates masked tokens: there is no Gaussian noise level α_t, σ_t and no gradient of a "
        "continuous sample to guide with"
    ),
}


def _family(scheduler: Scheduler) -> str:
    for family, members in _FAMILIES:
        if isinstance(scheduler, members):
            if family == "sigmas" and scheduler.config.get("use_flow_sigmas", False):
                return "flow"
            return family
    name = type(scheduler).__name__
    known = [_NOT_GUIDABLE[c.__name__] for c in type(scheduler).__mro__ if c.__name__ in _NOT_GUIDABLE]
    reason = known[0] if known else None
    if reason is None:
        reason = (
            "energy guidance needs the noise level (α_t, σ_t) of the model input at every model "
            "evaluation, and it reads that level only for the scheduler families it knows"
        )
    raise TypeError(
        f"{name} is not supported by energy_guidance: {reason}. Supported schedulers (and their "
        f"subclasses): {', '.join(SUPPORTED_SCHEDULERS)}."
    )


def check_num_inference_steps(scheduler: SchedulerLike, num_inference_steps: object) -> int:
    """``num_inference_steps`` as an int ≥ 1, or a one-line error naming it. The cumprod and
    sigmas families sample on their discrete training grid of ``num_train_timesteps`` steps, so
    for them it is also at most that (more would repeat timesteps: DDPM refuses, DPM-Solver's
    update overflows); the edm and flow families' schedules are continuous."""
    n = num_inference_steps
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"num_inference_steps must be an integer >= 1, got {type(n).__name__} {n!r}")
    n = int(n)
    if n < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {n}")
    scheduler = as_scheduler(scheduler)
    if _family(scheduler) in ("cumprod", "sigmas"):
        trained = int(scheduler.config.num_train_timesteps)
        if n > trained:
            raise ValueError(
                f"num_inference_steps must be at most the scheduler's {trained} training steps "
                f"(num_train_timesteps), got {n}"
            )
    return n


def prediction_type(scheduler: SchedulerLike) -> str:
    """The scheduler's prediction type, as :func:`to_eps_x0` names it.

    Flow-matching schedulers predict the velocity ε − x0 (``"flow_prediction"``). EDM schedulers
    predict the raw network output F of Karras et al.'s preconditioning, D = c_skip·sample +
    c_out·F, named ``"edm_epsilon"`` or ``"edm_v_prediction"`` after their config (the sign of c_out).
    """
    scheduler = as_scheduler(scheduler)
    family = _family(scheduler)
    if family == "flow" and "prediction_type" not in scheduler.config:
        return "flow_prediction"
    ptype = scheduler.config.get("prediction_type", "epsilon")
    if family == "edm":
        if ptype not in ("epsilon", "v_prediction"):
            raise ValueError(f"EDM schedulers predict 'epsilon' or 'v_prediction', got {ptype!r}")
        return f"edm_{ptype}"
    return ptype


class ClippingWarning(UserWarning):
    """The scheduler clips x̂0 after guidance, which changes the guided target."""


_WARNED_CLIPPING: weakref.WeakSet = weakref.WeakSet()


def clipping_options(scheduler: SchedulerLike) -> dict[str, bool]:
    """The scheduler's x̂0 clipping options that are on: ``clip_sample`` (DDPM, DDIM, LCM, TCD,
    Heun, ...) and ``thresholding`` (dynamic thresholding: DDPM, DDIM, DPM-Solver, UniPC, DEIS)."""
    scheduler = as_scheduler(scheduler)
    config = scheduler.config
    accepted = inspect.signature(type(scheduler).__init__).parameters  # from_config may carry others'
    return {name: False for name in ("clip_sample", "thresholding") if name in accepted and config.get(name)}


def warn_if_clipping(scheduler: SchedulerLike) -> None:
    """Warn once per scheduler (a :class:`ClippingWarning`) when it clips x̂0 inside ``step``.

    Guidance moves x̂0 (equation (2) of docs/math.md) and the scheduler clips it afterwards, so
    with clipping on the samples do not follow q·exp(−β·E): a shift of x̂0 beyond the range is
    cut off, which can erase or reverse the guidance. Opt in with
    ``AnalyticEnergyGuidance(..., allow_clipping=True)`` or a warnings filter on this category.
    """
    scheduler = as_scheduler(scheduler)
    options = clipping_options(scheduler)
    if not options or scheduler in _WARNED_CLIPPING:
        return
    _WARNED_CLIPPING.add(scheduler)
    name = type(scheduler).__name__
    config = scheduler.config
    what = []
    if "clip_sample" in options:
        what.append(f"clip_sample=True clips x̂0 to ±{config.get('clip_sample_range', 1.0):g}")
    if "thresholding" in options:
        limit = config.get("sample_max_value", 1.0)
        what.append(f"thresholding=True clips x̂0 dynamically (to at most ±{limit:g})")
    fix = ""
    if "use_clipped_model_output" in inspect.signature(scheduler.step).parameters:
        fix = (
            " energy_guidance.sample, smc_sample and guide_pipeline step with use_clipped_model_output=True,"
            " so there clipping saturates the guidance instead of reversing it; in a loop of your own pass"
            " use_clipped_model_output=True to step()."
        )
    off = ", ".join(f"{key}=False" for key in options)
    warnings.warn(
        f"{name}: {' and '.join(what)} inside step(), after guidance, so guided samples do not follow "
        f"q·exp(-β·E): a guidance shift of x̂0 beyond the range is cut off.{fix} For the exact target "
        f"turn clipping off with {name}.from_config(scheduler.config, {off}) (data outside the range need "
        "it off anyway); pass allow_clipping=True if clipped samples are intended.",
        ClippingWarning,
        stacklevel=3,
    )


def _float64(values) -> Tensor:
    return torch.as_tensor(values).detach().to("cpu", torch.float64)


def _second_evaluation_sigmas(scheduler: Scheduler, sigmas: Tensor, index: Tensor) -> Tensor | None:
    """s at the second model evaluation of a two-evaluation step, at positions ``index`` of the
    schedule, for the schedulers that do not evaluate it at ``sigmas[index]`` (as their
    ``scale_model_input`` does); None for every other scheduler."""
    if isinstance(scheduler, diffusers.KDPM2AncestralDiscreteScheduler):
        return _float64(cast(_Interpolated, scheduler).sigmas_interpol)[index - 1]
    if isinstance(scheduler, diffusers.KDPM2DiscreteScheduler):
        return _float64(cast(_Interpolated, scheduler).sigmas_interpol)[index]
    if isinstance(scheduler, diffusers.DPMSolverSDEScheduler):
        return (sigmas[index - 1] * sigmas[index]).sqrt()  # the midpoint in log sigma
    return None


def _live_sigma(scheduler: Scheduler, index: int, sigmas: Tensor) -> Tensor:
    """s of the evaluation the scheduler is at (``step_index``), from its own state."""
    if not getattr(scheduler, "state_in_first_order", True):
        midpoint = getattr(scheduler, "mid_point_sigma", None)  # DPM-Solver SDE keeps it
        if midpoint is not None:
            return _float64(midpoint).reshape(1)
        second = _second_evaluation_sigmas(scheduler, sigmas, torch.tensor([index]))
        if second is not None:
            return second
    return sigmas[index : index + 1]


def _evaluation_sigmas(scheduler: Scheduler, n: int, sigmas: Tensor) -> Tensor:
    """s of the model evaluation at each of the n entries of ``scheduler.timesteps``: two-evaluation
    schedulers alternate first (even positions) and second (odd positions) evaluations."""
    table = sigmas[:n].clone()
    odd = torch.arange(1, n, 2)
    second = _second_evaluation_sigmas(scheduler, sigmas, odd)
    if second is not None:
        table[odd] = second
    return table


def _scheduled_sigma(scheduler: Scheduler, t: Tensor, family: str) -> Tensor:
    """s = σ/α (sigmas), the VE sigma (edm) or σ (flow) for each timestep in ``t``.

    While the scheduler samples, its ``step_index`` and state decide (a schedule may repeat a
    timestep, and a second evaluation may sit at an interpolated sigma). Otherwise timesteps of
    the current schedule read ``scheduler.sigmas`` (exact, also for Karras or exponential sigmas)
    and any other timestep, or any timestep before a schedule is set, the training noise schedule.
    """
    sigmas = getattr(scheduler, "sigmas", None)
    timesteps = getattr(scheduler, "timesteps", None)
    # Before set_timesteps, DPM-Solver, UniPC and DEIS hold the training sigmas in ascending order
    # beside descending timesteps: no schedule is set, so the training one decides.
    unset = getattr(scheduler, "num_inference_steps", None) is None
    if unset or sigmas is None or timesteps is None or len(timesteps) == 0:
        return _training_sigma(scheduler, t, family)
    ts = _float64(timesteps)
    sigmas = _float64(sigmas)
    index = getattr(scheduler, "step_index", None)
    if len(t) == 1 and isinstance(index, int) and 0 <= index < len(ts) and ts[index] == t[0]:
        return _live_sigma(scheduler, index, sigmas)
    table = _evaluation_sigmas(scheduler, len(ts), sigmas)
    # Locate each t in the schedule by binary search (schedules may hold 1000 entries).
    order = torch.argsort(ts, stable=True)
    pos = torch.searchsorted(ts[order], t).clamp(max=len(ts) - 1)
    found = ts[order][pos] == t
    scheduled = table[order[pos]]
    if found.all():
        return scheduled
    return torch.where(found, scheduled, _training_sigma(scheduler, t, family))


def _training_sigma(scheduler: Scheduler, t: Tensor, family: str) -> Tensor:
    """s of the training noise schedule: σ = t/T (flow), s = exp(4·c_noise) (EDM's c_noise =
    ¼·log s), otherwise σ/α from alphas_cumprod, interpolated linearly in t as Euler does."""
    if family == "flow":
        return t / scheduler.config.num_train_timesteps
    if family == "edm":
        return torch.exp(4 * t)
    acp = _alphas_cumprod(scheduler)
    table = ((1 - acp) / acp).sqrt()
    grid = np.arange(len(table), dtype=np.float64)
    return torch.from_numpy(np.interp(t.numpy(), grid, table.numpy()))


def noise_level(scheduler: SchedulerLike, timestep: Tensor | float | int) -> tuple[Tensor, Tensor]:
    """Coefficients (α_t, σ_t) of the model input x_t = α_t·x0 + σ_t·ε at ``timestep``.

    ``timestep`` is a number or a tensor of any shape; α and σ are float64 tensors of its shape.
    During sampling (after ``scale_model_input`` or a ``step``) it is the level of the input the
    model is evaluated at, also at the second evaluation of Heun, KDPM2 or DPM-Solver SDE steps.
    This is the single place where the package reads a scheduler's noise schedule.
    """
    scheduler = as_scheduler(scheduler)
    family = _family(scheduler)
    t = _float64(timestep)
    shape = t.shape
    t = t.reshape(-1).contiguous()
    if family == "cumprod":
        acp = _alphas_cumprod(scheduler)
        if (t != t.round()).any() or (t < 0).any() or (t >= len(acp)).any():
            raise ValueError(f"{type(scheduler).__name__} needs integer timesteps in [0, {len(acp)})")
        alpha2 = acp[t.long()]
        alpha, sigma = alpha2.sqrt(), (1 - alpha2).sqrt()
    else:
        s = _scheduled_sigma(scheduler, t, family)
        if family == "flow":
            alpha, sigma = 1 - s, s
        else:
            data_sigma = float(scheduler.config.sigma_data) if family == "edm" else 1.0
            alpha = 1 / (s**2 + data_sigma**2).sqrt()
            sigma = s * alpha
    return alpha.reshape(shape), sigma.reshape(shape)


def training_timesteps(scheduler: SchedulerLike) -> Tensor:
    """The training timesteps with 0 < α and 0 < σ: where training targets and variance tables
    are defined (flow matching's t = 0 is noise-free, a zero-terminal-SNR end is pure noise).
    Integers below ``num_train_timesteps``; for EDM schedulers, whose training noise is
    continuous, the c_noise = ¼·log s of ``num_train_timesteps`` sigmas spaced evenly in log s
    over [sigma_min, sigma_max]. Build targets with the scheduler the model was trained with (no
    custom sampling sigmas)."""
    scheduler = as_scheduler(scheduler)
    config = scheduler.config
    if _family(scheduler) == "edm":
        low, high = np.log(config.sigma_min), np.log(config.sigma_max)
        return 0.25 * torch.linspace(low, high, config.num_train_timesteps, dtype=torch.float64).float()
    t = torch.arange(config.num_train_timesteps)
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


def _edm_sign(prediction_type: str) -> float:
    return 1.0 if prediction_type == "edm_epsilon" else -1.0


def to_eps_x0(output: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor, prediction_type: str) -> Prediction:
    """Convert a model output to (ε̂, x̂0) with x_t = α·x̂0 + σ·ε̂.

    epsilon:          ε̂ = out,                x̂0 = (x_t - σ·ε̂)/α  (Tweedie's posterior mean)
    sample:           x̂0 = out,               ε̂ = (x_t - α·x̂0)/σ
    v_prediction:     v = α·ε - σ·x0,         x̂0 = (α·x_t - σ·v)/(α²+σ²), ε̂ = (σ·x_t + α·v)/(α²+σ²)
    flow_prediction:  v = ε - x0 (α = 1 - σ), x̂0 = x_t - σ·v,         ε̂ = x_t + α·v
    edm_epsilon, edm_v_prediction: F with D = c_skip·sample + c_out·F (sample = x_t/α, c_out > 0
                      for edm_epsilon, < 0 for edm_v_prediction); with k = 1 - σ² = α²·σ_d²,
                      x̂0 = (k·x_t ± σ·√k·F)/α,  ε̂ = (x_t - α·x̂0)/σ
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
    if prediction_type in ("edm_epsilon", "edm_v_prediction"):
        keep = 1 - s**2
        x0 = (keep * x_t + _edm_sign(prediction_type) * s * keep.sqrt() * output) / a
        return Prediction((x_t - a * x0) / s, x0)
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
    if prediction_type in ("edm_epsilon", "edm_v_prediction"):
        root = (1 - s**2).sqrt()
        return _edm_sign(prediction_type) * (s * a * x0 / root - root * eps)
    raise ValueError(f"unknown prediction type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def log_snr(alpha: Tensor, sigma: Tensor) -> Tensor:
    """λ = log(α²/σ²), the scheduler-independent noise coordinate used by tables and networks."""
    return 2 * (torch.log(alpha) - torch.log(sigma))


def add_noise(x0: Tensor, noise: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """x_t = α·x0 + σ·ε in model-input coordinates (per-sample α, σ of shape () or (B,))."""
    return _expand(alpha, x0) * x0 + _expand(sigma, x0) * noise


# ---------------------------------------------------------------------------------------------
# The adapter: every scheduler quirk the samplers meet, in one place

_SDE_DPM = ("sde-dpmsolver++", "sde-dpmsolver")
_NOISE_LOCK = threading.RLock()


class SchedulerAdapter:
    """A diffusers scheduler as the samplers of this package see it.

    ``SchedulerAdapter(scheduler)`` rejects unsupported schedulers (:data:`SUPPORTED_SCHEDULERS`)
    and owns what differs between them: the noise level (α_t, σ_t) of the model input
    (:meth:`levels`), the prediction type and its conversions to and from (ε̂, x̂0)
    (:meth:`prediction`, :meth:`output`), the initial noise (``init_noise_sigma``,
    :meth:`start`), ``scale_model_input`` (:meth:`model_input`), a step with the sampler's
    generator (:meth:`step`) or with given noise (:meth:`step_with_noise`, what SMC needs),
    dynamic thresholding on (B, d) vectors (diffusers' reshapes to (B, C, -1): the step sees a
    (B, d, 1) view), and snapshots of the scheduler's mutable state (:meth:`snapshot`).
    """

    def __init__(self, scheduler: SchedulerLike) -> None:
        self.scheduler = as_scheduler(scheduler)

    @property
    def _step_parameters(self):
        return inspect.signature(self.scheduler.step).parameters

    @property
    def prediction_type(self) -> str:
        """:func:`prediction_type` (an unsupported scheduler raises here, at its first guided use:
        an unguided sampler steps any scheduler)."""
        return prediction_type(self.scheduler)

    # -- noise levels and prediction types

    def levels(self, timestep: Tensor | float, batch: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample (α, σ) of shape (B,) at ``timestep``, on ``like``'s device and dtype."""
        alpha, sigma = noise_level(self.scheduler, timestep)
        return (
            alpha.to(like.device, like.dtype).expand(batch),
            sigma.to(like.device, like.dtype).expand(batch),
        )

    def prediction(self, output: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Prediction:
        """The model's ``output`` as (ε̂, x̂0) (:func:`to_eps_x0`)."""
        return to_eps_x0(output, x_t, alpha, sigma, self.prediction_type)

    def output(self, eps: Tensor, x0: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """(ε, x0) as a model output in the scheduler's prediction type (:func:`from_eps_x0`)."""
        return from_eps_x0(eps, x0, alpha, sigma, self.prediction_type)

    # -- sampling

    @staticmethod
    def noise(shape, generator: torch.Generator | None, device, dtype: torch.dtype) -> Tensor:
        """Standard normal noise drawn on the generator's device (else ``device``) and moved to
        ``device``, so that a seed gives the same noise on any device."""
        where = generator.device if generator is not None else device
        return torch.randn(shape, generator=generator, dtype=dtype, device=where).to(device)

    def start(self, num_inference_steps: int, shape, generator, device, dtype: torch.dtype) -> Tensor:
        """Set the timesteps (which resets multistep state) and return the initial noise, scaled
        by ``init_noise_sigma``."""
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        init_sigma = float(getattr(self.scheduler, "init_noise_sigma", 1.0))
        return self.noise(shape, generator, device, dtype) * init_sigma

    def model_input(self, x: Tensor, t: Tensor | float) -> Tensor:
        """``scale_model_input`` where the scheduler has one (the k-diffusion family), else x."""
        scale = getattr(self.scheduler, "scale_model_input", None)
        return x if scale is None else scale(x, t)

    def _as_image(self, x: Tensor) -> bool:
        return x.dim() == 2 and bool(self.scheduler.config.get("thresholding", False))

    def step(
        self,
        out: Tensor,
        t: Tensor | float,
        x: Tensor,
        *,
        generator: torch.Generator | None = None,
        guided: bool = False,
    ) -> Tensor:
        """``scheduler.step``'s new state, with ``generator`` where the step draws noise. ``guided``:
        DDIM steps with ``use_clipped_model_output=True`` (it clips x̂0 but by default steps with
        the unclipped ε̂, so a guided ε̃ that pushes x̂0 past the clip would move the sample the
        opposite way; recomputing ε from the clipped x̂0 makes clipping saturate the guidance)."""
        extra: dict[str, Any] = {"generator": generator} if "generator" in self._step_parameters else {}
        if guided and "use_clipped_model_output" in self._step_parameters:
            extra["use_clipped_model_output"] = True
        if self._as_image(x):
            return self.scheduler.step(out[..., None], t, x[..., None], **extra).prev_sample[..., 0]
        return self.scheduler.step(out, t, x, **extra).prev_sample

    def seed_brownian_noise(self, generator: torch.Generator | None) -> Callable[[], None]:
        """Seed DPM-Solver SDE's Brownian tree from ``generator`` for one run (it otherwise draws
        its seed from torch's global generator); returns what puts the scheduler back."""
        scheduler = cast(_BrownianSeeded, self.scheduler)
        if generator is None or getattr(scheduler, "noise_sampler_seed", 0) is not None:
            return lambda: None
        scheduler.noise_sampler_seed = int(
            torch.randint(0, 2**62, (), generator=generator, device=generator.device)
        )

        def restore() -> None:
            scheduler.noise_sampler_seed = None

        return restore

    # -- stepping with given noise (SMC)

    def stochastic_step_options(self, eta: float | None) -> dict[str, Any]:
        """The step arguments under which ``scheduler.step`` is x' = μ(out) + s·z with z ~ N(0, I)
        given to :meth:`step_with_noise`; rejects deterministic schedulers (ODE solvers, DDIM with
        η = 0). ``eta``: DDIM's η (default 1), an error for other schedulers."""
        scheduler = self.scheduler
        ddim = isinstance(scheduler, diffusers.DDIMScheduler)
        if eta is not None and not ddim:
            raise ValueError(f"eta is DDIM's argument; {type(scheduler).__name__} does not take it")
        if ddim:
            eta = 1.0 if eta is None else float(eta)
            if not eta > 0:
                raise ValueError(
                    f"DDIM with eta={eta} is deterministic; SMC needs eta > 0 (eta=1 is DDPM-like)"
                )
            return {"eta": eta}
        if isinstance(scheduler, diffusers.DPMSolverMultistepScheduler):
            if scheduler.config.algorithm_type not in _SDE_DPM:
                raise ValueError(
                    f"DPMSolverMultistepScheduler with algorithm_type={scheduler.config.algorithm_type!r} is "
                    "deterministic; SMC needs a stochastic step: use algorithm_type='sde-dpmsolver++'"
                )
            return {}
        if isinstance(scheduler, diffusers.DDPMScheduler | diffusers.EulerAncestralDiscreteScheduler):
            return {}
        raise ValueError(
            f"{type(scheduler).__name__} is deterministic (an ODE solver) or unsupported; SMC needs a "
            "stochastic step: DDPMScheduler, DDIMScheduler (eta > 0), EulerAncestralDiscreteScheduler or "
            "DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++')"
        )

    def state_shape(self, x: Tensor) -> torch.Size:
        """The shape of the per-sample tensors the scheduler keeps for samples ``x`` (the (B, d, 1)
        view under thresholding)."""
        return torch.Size((*x.shape, 1)) if self._as_image(x) else x.shape

    def step_with_noise(
        self, out: Tensor, t: Tensor | float, x: Tensor, noise: Tensor, options: dict[str, Any]
    ) -> Tensor:
        """``scheduler.step`` with its noise z given (``options`` from :meth:`stochastic_step_options`).

        DDIM and DPM-Solver take it as ``variance_noise``; DDPM and Euler ancestral draw it inside
        ``step`` with their module's ``randn_tensor``, which diffusers offers no argument to
        replace, so for the duration of the call (under a lock) that function returns ``noise``.
        """
        image = self._as_image(x)
        if image:
            out, x, noise = out[..., None], x[..., None], noise[..., None]
        if "variance_noise" in self._step_parameters:
            prev = self.scheduler.step(out, t, x, variance_noise=noise, **options).prev_sample
        else:
            with _given_noise(self.scheduler, noise):
                prev = self.scheduler.step(out, t, x, **options).prev_sample
        return prev[..., 0] if image else prev

    # -- the scheduler's mutable state

    def snapshot(self) -> dict[str, Any]:
        """The scheduler's attributes (lists copied: steps mutate them in place)."""
        return _copied(vars(self.scheduler))

    def restore(self, state: dict[str, Any]) -> None:
        """Put back a :meth:`snapshot`."""
        attributes = vars(self.scheduler)
        attributes.clear()
        attributes.update(_copied(state))


def _copied(state: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, list) else v for k, v in state.items()}


@contextmanager
def _given_noise(scheduler: Scheduler, noise: Tensor) -> Iterator[None]:
    """Make the step's ``randn_tensor`` return ``noise`` while inside the block."""
    owner = next(c for c in type(scheduler).__mro__ if "step" in vars(c))
    module = sys.modules[owner.__module__]
    original = getattr(module, "randn_tensor", None)
    if original is None:
        raise TypeError(
            f"cannot give noise to {type(scheduler).__name__}.step: its module has no randn_tensor"
        )

    def given(shape, generator=None, device=None, dtype=None, **kwargs):
        if tuple(shape) != tuple(noise.shape):
            raise RuntimeError(f"the step drew noise of shape {tuple(shape)}, expected {tuple(noise.shape)}")
        return noise.to(device=device or noise.device, dtype=dtype or noise.dtype)

    with _NOISE_LOCK:
        vars(module)["randn_tensor"] = given
        try:
            yield
        finally:
            vars(module)["randn_tensor"] = original
