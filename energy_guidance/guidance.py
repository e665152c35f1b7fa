"""AnalyticEnergyGuidance: steer a diffusion model toward p(x) ∝ q(x)·exp(-β·E(x)).

The guided marginal's score is the model's plus -∇E_t (see :mod:`energy_guidance.closed_form`),
which in noise-prediction form is

    ε̃(x_t) = ε̂(x_t) + scale · σ_t · ∇_{x_t} E_t(x_t).                         (2)

ε̃ is converted back to the scheduler's prediction type and handed to ``scheduler.step``
unchanged, so any supported scheduler integrates the guided model. A guided model is a model:
``guidance(x_t, t, cond)`` is (2), called like the model it wraps, and every sampler takes it in
the model's place (``sample(scheduler, guidance, shape)``). The step makes one model evaluation
and one call of the estimator's ``value_and_x_t_gradient`` (the protocol:
:mod:`energy_guidance.protocols`; the flow: docs/architecture.md).

Estimators of E_t:
- the default (an ``energy`` and nothing else): :class:`~energy_guidance.importance.ImportanceTilt`,
  importance sampling of the Gaussian posterior around a safeguarded Newton step, the guided x̂0
  kept within the data's range; its posterior variance and range come from ``variance_table``
  or, without one, from the model's own samples (:mod:`energy_guidance.calibration`, once);
- the paper's closed form (an ``energy`` with any of ``variance``, ``order``, ``gradient``,
  ``floor``, or ``estimator=ClosedForm(energy, beta)``): (1) or (3) with x̄ = x̂0, by default
  differentiated through the model with autograd (:class:`~energy_guidance.closed_form.ClosedForm`);
- amortized (``estimator=`` an :class:`~energy_guidance.amortized.IntermediateEnergyNet`, or any
  :class:`IntermediateEnergyEstimator`): only the estimator is differentiated.

``rescale`` bounds the guidance term: ``True`` caps ‖ε̃ - ε̂‖ at ‖ε̂‖ per sample (a positive
multiple of the guidance, so it can only shorten the step toward lower energy); ``"paper"`` is
AEPO's guidance rescale ε̃ ← ε̃·‖ε̂‖/‖ε̃‖, which also shrinks the model's own denoising direction
and can raise the energy (docs/math.md).

A guided step whose change to ε̂ exceeds :data:`EXPLOSION_RATIO` times ‖ε̂‖ raises a
:class:`GuidanceExplosionWarning` naming the step and the fix.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, Literal, overload

import torch
from torch import Tensor

from .calibration import draw_pilot
from .callables import (
    GUIDED_OUTPUT,
    Cond,
    Energy,
    NoiseModel,
    Timestep,
    call_model,
    check_beta,
    check_finite,
    estimator_sources,
    located,
)
from .closed_form import ClosedForm
from .importance import ImportanceTilt
from .posterior import VarianceEstimator, VarianceTable
from .protocols import IntermediateEnergyEstimator, StepInfo, StepRecord
from .sampling import sample
from .schedulers import Prediction, SchedulerAdapter, SchedulerLike, warn_if_clipping
from .tempering import Tempered

# Below this α the model input is pure noise: E_t no longer depends on x_t and the
# ε -> x0 conversion divides by ~0 (only the first step of a flow-matching schedule).
_MIN_ALPHA = 1e-6

# A guided change to ε̂ larger than this many times ‖ε̂‖ is reported (GuidanceExplosionWarning).
EXPLOSION_RATIO = 100.0


class GuidanceExplosionWarning(RuntimeWarning):
    """A guided step changed the model's prediction by far more than the prediction itself."""


def _number(timestep: Timestep) -> str:
    value = timestep.item() if isinstance(timestep, torch.Tensor) and timestep.numel() == 1 else timestep
    return f"{value:g}" if isinstance(value, int | float) else str(value)


class AnalyticEnergyGuidance:
    """Energy guidance for a diffusers scheduler and a noise/velocity/sample-prediction model.

    ``AnalyticEnergyGuidance(scheduler, model, energy, beta)`` is the safe default: the
    estimator :class:`~energy_guidance.importance.ImportanceTilt`, calibrated once from the
    model's own samples unless ``variance_table`` is given. Giving any of ``variance``,
    ``order``, ``gradient`` or ``floor`` selects the paper's closed form
    :class:`~energy_guidance.closed_form.ClosedForm` instead (the others at the paper's values:
    ``variance="jacobian"``, ``order=1``, ``gradient="autograd"``). Any other estimator:
    ``AnalyticEnergyGuidance(scheduler, model, estimator=net)``; β is the estimator's own.

    Args:
        scheduler: a supported diffusers scheduler (:data:`SUPPORTED_SCHEDULERS`) or a subclass.
        model: ``model(x_t, t)`` or ``model(x_t, t, cond)``; output in the scheduler's
            prediction type (tensor, or object with ``.sample``).
        energy: ``energy(x0)`` or ``energy(x0, cond)`` -> (B,), lower is better, differentiable.
        beta: inverse temperature β ≥ 0 of the target q(x)·exp(-β·E(x)).
        estimator: an :class:`IntermediateEnergyEstimator`; replaces ``energy`` and the options below.
        variance: the closed form's posterior-variance estimator, an object of
            :mod:`energy_guidance.posterior` or its shortcut (a name, or a number c for c·I).
        variance_table: a :class:`~energy_guidance.posterior.VarianceTable` from the user's data:
            the default estimator's variance and range (instead of calibrating from the model),
            or the table a closed-form variance named by string reads.
        order: the closed form's order: 1 for the paper's (1), 2 for (3), exact for quadratic
            energies (:mod:`energy_guidance.closed_form`).
        floor: order 2 only: the smallest eigenvalue I + βΣ̂H may keep.
        gradient: the closed form's ∇_{x_t}E_t: ``"autograd"`` (through the model, the paper's)
            or ``"tweedie"`` (the Tweedie chain rule, no backward pass through the model).
        rescale: ``True`` caps the guidance term at the norm of ε̂ per sample; ``"paper"`` is
            AEPO's guidance rescale (module docstring); ``False`` (default) neither.
        scale: multiplies the guidance term of (2); 1 is the exact target.
        allow_clipping: the scheduler clips x̂0 (``clip_sample``, ``thresholding``) on purpose; without
            it such a scheduler gets a :class:`~energy_guidance.schedulers.ClippingWarning` once,
            since clipping after guidance changes the target (docs/usage.md, schedulers).
    """

    def __init__(
        self,
        scheduler: SchedulerLike,
        model: NoiseModel,
        energy: Energy | None = None,
        beta: float | None = None,
        *,
        estimator: IntermediateEnergyEstimator | None = None,
        variance: VarianceEstimator | str | float | None = None,
        variance_table: VarianceTable | None = None,
        order: int | None = None,
        floor: float | None = None,
        gradient: str | None = None,
        rescale: bool | str = False,
        scale: float = 1.0,
        allow_clipping: bool = False,
    ) -> None:
        if beta is not None:
            beta = check_beta(beta)
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
            raise ValueError(f"scale must be a finite number, got {scale!r}")
        if not (rescale is True or rescale is False or rescale == "paper"):
            raise ValueError(
                f"rescale must be False, True (cap the guidance at ‖ε̂‖) or 'paper', got {rescale!r}"
            )
        if estimator is not None and not isinstance(estimator, IntermediateEnergyEstimator):
            raise TypeError(
                "estimator must be an IntermediateEnergyEstimator (beta, energy, model_derivatives, "
                f"__call__, value_and_x_t_gradient), got {type(estimator).__name__}"
            )
        closed_form_options = {"variance": variance, "order": order, "floor": floor, "gradient": gradient}
        if estimator is None:
            if energy is None or beta is None:
                raise ValueError("give an energy and beta (training-free) or an estimator (e.g. a network)")
            if not callable(energy):
                raise TypeError(
                    f"energy must be a callable energy(x0[, cond]) -> (B,), got {type(energy).__name__}"
                )
            if all(v is None for v in closed_form_options.values()):
                estimator = ImportanceTilt(energy, beta, variance_table)
            else:
                estimator = ClosedForm(
                    energy,
                    beta,
                    "jacobian" if variance is None else variance,
                    variance_table,
                    order=1 if order is None else order,
                    floor=1.0 if floor is None else floor,
                    gradient="autograd" if gradient is None else gradient,
                )
        elif energy is not None:
            raise ValueError("give an energy (training-free) or an estimator, not both")
        elif any(v is not None for v in closed_form_options.values()):
            given = sorted(k for k, v in closed_form_options.items() if v is not None)
            raise ValueError(
                f"{', '.join(given)} configure the closed form built from an energy, not an estimator"
            )
        estimator_beta = estimator.beta
        if beta is None:
            if estimator_beta is None:
                raise ValueError(f"{type(estimator).__name__} has no .beta; pass beta=")
            beta = check_beta(estimator_beta)
        elif estimator_beta is not None and float(estimator_beta) != float(beta):
            raise ValueError(
                f"the estimator was built for beta={estimator_beta}, not beta={beta}; "
                "retrain it or use `scale` to strengthen or weaken its guidance"
            )
        self.scheduler = scheduler
        self.model = model
        self.estimator = estimator
        self.beta = float(beta)
        self.rescale = rescale
        self.scale = float(scale)
        self.adapter = SchedulerAdapter(scheduler)
        self.prediction_type = self.adapter.prediction_type  # also rejects unsupported schedulers
        self.allow_clipping = bool(allow_clipping)
        self._warned = {"explosion": False}  # shared with every replace() copy: one warning for all
        if not self.allow_clipping:
            warn_if_clipping(scheduler)

    def replace(self, **changes: Any) -> AnalyticEnergyGuidance:
        """A new guidance with some of ``scheduler``, ``model``, ``estimator``, ``rescale``,
        ``scale`` changed (e.g. the scheduler a pipeline actually steps with); it shares this one's
        warnings (a :class:`GuidanceExplosionWarning` is given once for both)."""
        fields = {
            "scheduler": self.scheduler,
            "model": self.model,
            "estimator": self.estimator,
            "rescale": self.rescale,
            "scale": self.scale,
            "allow_clipping": self.allow_clipping,
        }
        unknown = set(changes) - set(fields)
        if unknown:
            raise TypeError(f"unknown arguments {sorted(unknown)}; expected some of {sorted(fields)}")
        copy = AnalyticEnergyGuidance(**{**fields, **changes}, beta=self.beta)
        copy._warned = self._warned  # a pipeline or SMC call makes a copy each time: warn once in all
        return copy

    @property
    def amortized(self) -> bool:
        """True when only the estimator is differentiated (no backward pass through the model)."""
        return self.estimator.model_derivatives == 0

    def _ready(self, x_t: Tensor, timestep: Timestep, cond: Cond) -> None:
        """Calibrate the default estimator from the model's own samples on first use (once; the
        table is shared with every :meth:`replace` copy, which holds the same estimator)."""
        inner = self.estimator
        while isinstance(inner, Tempered):
            inner = inner.estimator
        if isinstance(inner, ImportanceTilt) and inner.table is None:
            # the caller's own batch first, so that a bad model is reported at its shapes
            call_model(self.model, x_t, timestep, cond)
            pilot = draw_pilot(
                self.scheduler, self.model, tuple(x_t.shape[1:]), cond, device=x_t.device, dtype=x_t.dtype
            )
            inner.table = pilot.table(self.model)

    def _predict(
        self, x_t: Tensor, timestep: Timestep, alpha: Tensor, sigma: Tensor, cond: Cond
    ) -> Prediction:
        twice = self.estimator.model_derivatives == 2  # the math attention kernel
        out = call_model(self.model, x_t, timestep, cond, double_backward=twice)
        if x_t.requires_grad and not out.requires_grad:
            raise TypeError(
                f"the model's output does not depend differentiably on x_t (wrapped in torch.no_grad(), "
                f"detached, or through numpy?), but {type(self.estimator).__name__} differentiates through "
                "the model: use the default estimator (no variance/order/gradient) or gradient='tweedie', "
                "which need no model gradient"
            )
        return self.adapter.prediction(out, x_t, alpha, sigma)

    def _prediction_at(
        self, x: Tensor, timestep: Timestep, alpha: Tensor, sigma: Tensor, cond: Cond
    ) -> Prediction:
        """The model's (ε̂, x̂0) at ``x`` (which requires grad), inside x's autograd graph exactly
        when the estimator differentiates the model (``model_derivatives`` > 0)."""
        in_graph = self.estimator.model_derivatives > 0
        with torch.set_grad_enabled(in_graph):
            return self._predict(x if in_graph else x.detach(), timestep, alpha, sigma, cond)

    def _estimate(
        self, x_t: Tensor, timestep: Timestep, alpha: Tensor, sigma: Tensor, cond: Cond
    ) -> tuple[Tensor, Prediction]:
        """E_t (B,) in the graph of ``x_t`` (which requires grad), and the model's prediction."""
        prediction = self._prediction_at(x_t, timestep, alpha, sigma, cond)
        return self.estimator(x_t, alpha, sigma, cond, prediction=prediction), prediction

    def intermediate_energy(self, x_t: Tensor, timestep: Timestep, cond: Cond = None) -> Tensor:
        """E_t(x_t) = -L_t (B,) as this guidance's estimator computes it."""
        self._ready(x_t, timestep, cond)
        alpha, sigma = self.adapter.levels(timestep, x_t.shape[0], x_t)
        with torch.enable_grad():
            value, _ = self._estimate(x_t.detach().requires_grad_(True), timestep, alpha, sigma, cond)
        return value.detach()

    def energy_gradient(self, x_t: Tensor, timestep: Timestep, cond: Cond = None) -> Tensor:
        """∇_{x_t} E_t, with x_t's shape."""
        self._ready(x_t, timestep, cond)
        alpha, sigma = self.adapter.levels(timestep, x_t.shape[0], x_t)
        return self._gradient(x_t, timestep, alpha, sigma, cond)[0]

    def _gradient(
        self,
        x_t: Tensor,
        timestep: Timestep,
        alpha: Tensor,
        sigma: Tensor,
        cond: Cond,
        with_value: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(∇_{x_t} E_t, ε̂, x̂0, E_t or None) at x_t, all detached: the guided step's one model
        evaluation and one call of the estimator's ``value_and_x_t_gradient``."""
        estimator = self.estimator
        sources = estimator_sources(estimator, estimator.model_derivatives > 0)  # diagnostics
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            prediction = self._prediction_at(x, timestep, alpha, sigma, cond)
            value, grad = estimator.value_and_x_t_gradient(
                x, alpha, sigma, cond, prediction=prediction, with_value=with_value
            )
        if value is not None:
            check_finite(value, sources[0], detail=sources[1], timestep=timestep)
        check_finite(grad, sources[2], detail=sources[3], timestep=timestep)
        value = value.detach() if with_value and value is not None else None
        return grad.detach(), prediction.eps.detach(), prediction.x0.detach(), value

    def step_parts(self, x_t: Tensor, timestep: Timestep, cond: Cond = None) -> tuple[Tensor, Tensor, Tensor]:
        """(E_t (B,), the model's output, the guided output) at ``x_t`` from one evaluation of
        the model, both outputs in the scheduler's prediction type: what a particle sampler
        needs at every step (:func:`~energy_guidance.smc_sample`), where
        :meth:`intermediate_energy`, the model and :meth:`guided_model_output` would evaluate
        the model three times."""
        self._ready(x_t, timestep, cond)
        alpha, sigma = self.adapter.levels(timestep, x_t.shape[0], x_t)
        if float(alpha.min()) < _MIN_ALPHA:  # pure noise: no guidance, as in guided_model_output
            with located(timestep):
                out = call_model(self.model, x_t, timestep, cond)
            return self.intermediate_energy(x_t, timestep, cond), out, out
        with located(timestep):
            grad, eps_hat, x0_hat, value = self._gradient(x_t, timestep, alpha, sigma, cond, with_value=True)
            model_output = self.adapter.output(eps_hat, x0_hat, alpha, sigma)
            guided, _ = self._combine(x_t, timestep, alpha, sigma, grad, eps_hat, x0_hat)
        if value is None:  # the protocol: E_t whenever with_value is True
            raise TypeError(
                f"{type(self.estimator).__name__}.value_and_x_t_gradient returned no value E_t with "
                "with_value=True"
            )
        return value, model_output, guided

    def __call__(self, x_t: Tensor, timestep: Timestep, cond: Cond = None) -> Tensor:
        """The guided model: ``guidance(x_t, t, cond)`` is equation (2) in the scheduler's prediction
        type, called like the model it wraps (:meth:`guided_model_output`)."""
        return self.guided_model_output(x_t, timestep, cond)

    @overload
    def guided_model_output(
        self, x_t: Tensor, timestep: Timestep, cond: Cond = None, *, return_info: Literal[False] = False
    ) -> Tensor: ...

    @overload
    def guided_model_output(
        self, x_t: Tensor, timestep: Timestep, cond: Cond = None, *, return_info: Literal[True]
    ) -> tuple[Tensor, StepInfo]: ...

    @overload
    def guided_model_output(
        self, x_t: Tensor, timestep: Timestep, cond: Cond = None, *, return_info: bool
    ) -> Tensor | tuple[Tensor, StepInfo]: ...

    def guided_model_output(
        self, x_t: Tensor, timestep: Timestep, cond: Cond = None, *, return_info: bool = False
    ) -> Tensor | tuple[Tensor, StepInfo]:
        """Equation (2) for one step, returned in the scheduler's prediction type.

        ``x_t`` is the model input (after ``scheduler.scale_model_input``). With ``return_info``
        also returns a :class:`StepInfo` (x̂0 and the guidance norm) for callbacks.
        """
        self._ready(x_t, timestep, cond)
        alpha, sigma = self.adapter.levels(timestep, x_t.shape[0], x_t)
        if float(alpha.min()) < _MIN_ALPHA:  # pure noise: the exact guidance vanishes
            with located(timestep):
                out = call_model(self.model, x_t, timestep, cond)
            if not return_info:
                return out
            x0_hat = self.adapter.prediction(out, x_t, alpha, sigma).x0
            return out, StepInfo(x0_hat=x0_hat, guidance_norm=torch.zeros(len(x_t), device=x_t.device))
        with located(timestep):
            grad, eps_hat, x0_hat, _ = self._gradient(x_t, timestep, alpha, sigma, cond)
        guided, info = self._combine(x_t, timestep, alpha, sigma, grad, eps_hat, x0_hat)
        return (guided, info) if return_info else guided

    def _combine(
        self,
        x_t: Tensor,
        timestep: Timestep,
        alpha: Tensor,
        sigma: Tensor,
        grad: Tensor,
        eps_hat: Tensor,
        x0_hat: Tensor,
    ) -> tuple[Tensor, StepInfo]:
        """Equation (2) from ∇E_t, ε̂ and x̂0: the guided output and its :class:`StepInfo`."""
        shape = (-1,) + (1,) * (x_t.dim() - 1)
        delta = self.scale * sigma.reshape(shape) * grad
        own = eps_hat.flatten(1).norm(dim=1)
        size = delta.flatten(1).norm(dim=1)
        self._check_explosion(size, own, eps_hat[0].numel(), timestep)
        if self.rescale is True:  # cap ‖ε̃ - ε̂‖ at ‖ε̂‖: a positive multiple of the guidance
            delta = delta * (own / size.clamp_min(torch.finfo(size.dtype).tiny)).clamp(max=1).reshape(shape)
        elif self.rescale == "paper":  # AEPO: ε̃ ← ε̃·‖ε̂‖/‖ε̃‖
            eps = eps_hat + delta
            eps = eps * (own / eps.flatten(1).norm(dim=1).clamp_min(1e-12)).reshape(shape)
            delta = eps - eps_hat
        eps = eps_hat + delta
        x0 = x0_hat - (sigma / alpha).reshape(shape) * delta
        guided = self.adapter.output(eps, x0, alpha, sigma)
        check_finite(guided, GUIDED_OUTPUT, input_dtype=x_t.dtype, timestep=timestep)
        return guided, StepInfo(x0_hat=x0, guidance_norm=delta.flatten(1).norm(dim=1))

    def _check_explosion(self, size: Tensor, own: Tensor, dim: int, timestep: Timestep) -> None:
        """Warn (once per guidance and its :meth:`replace` copies) when the guidance term ‖σ·∇E_t‖
        is over :data:`EXPLOSION_RATIO` times the model's own ‖ε̂‖, or √d where ‖ε̂‖ is smaller (ε̂
        estimates unit-variance noise, so a sample whose ε̂ happens to be near 0 is not flagged for
        a modest step)."""
        if self._warned["explosion"]:
            return
        ratio = size / own.clamp_min(math.sqrt(dim))
        worst = float(ratio.max()) if ratio.numel() else 0.0
        if not worst > EXPLOSION_RATIO:
            return
        count = int((ratio > EXPLOSION_RATIO).sum())
        self._warned["explosion"] = True
        if isinstance(self.estimator, ClosedForm) and self.estimator.gradient == "autograd":
            fix = (
                "the paper's closed form is differentiated through the model, whose Jacobian a trained model "
                "gets far wrong at high noise: use the default (AnalyticEnergyGuidance(scheduler, model, "
                "energy, beta) with no variance/order/gradient), or gradient='tweedie'"
            )
        elif isinstance(self.estimator, ImportanceTilt):
            fix = "lower beta or scale, or pass rescale=True to cap the guidance at ‖ε̂‖"
        else:
            fix = "lower beta or scale, use the default estimator, or rescale=True to cap the guidance at ‖ε̂‖"
        warnings.warn(
            f"guidance exploded at timestep {_number(timestep)}: the guided change to ε̂ is {worst:.3g}× the "
            f"model's own ‖ε̂‖ for {count} of {ratio.numel()} samples; {fix}",
            GuidanceExplosionWarning,
            stacklevel=2,
        )

    @overload
    def sample(
        self,
        shape: tuple[int, ...],
        cond: Cond = None,
        num_inference_steps: int = 50,
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        callback: Callable[[StepRecord], None] | None = None,
        progress: bool = False,
        on_nonfinite: str = "raise",
        return_mask: Literal[False] = False,
    ) -> Tensor: ...

    @overload
    def sample(
        self,
        shape: tuple[int, ...],
        cond: Cond = None,
        num_inference_steps: int = 50,
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        callback: Callable[[StepRecord], None] | None = None,
        progress: bool = False,
        on_nonfinite: str = "raise",
        return_mask: Literal[True],
    ) -> tuple[Tensor, Tensor]: ...

    @overload
    def sample(
        self,
        shape: tuple[int, ...],
        cond: Cond = None,
        num_inference_steps: int = 50,
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        callback: Callable[[StepRecord], None] | None = None,
        progress: bool = False,
        on_nonfinite: str = "raise",
        return_mask: bool,
    ) -> Tensor | tuple[Tensor, Tensor]: ...

    def sample(
        self,
        shape: tuple[int, ...],
        cond: Cond = None,
        num_inference_steps: int = 50,
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        callback: Callable[[StepRecord], None] | None = None,
        progress: bool = False,
        on_nonfinite: str = "raise",
        return_mask: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``sample(self.scheduler, self, shape, ...)``: ``shape`` samples of the guided model with
        its scheduler (the arguments: :func:`~energy_guidance.sampling.sample`)."""
        return sample(
            self.scheduler,
            self,
            shape,
            cond=cond,
            num_inference_steps=num_inference_steps,
            generator=generator,
            device=device,
            dtype=dtype,
            callback=callback,
            progress=progress,
            on_nonfinite=on_nonfinite,
            return_mask=return_mask,
        )
