"""What the guided step asks of an intermediate-energy estimator, and what it reports.

The target is p(x0) ∝ q(x0)·exp(-β·E(x0)), E lower-is-better, β ≥ 0. Its marginal at noise
level (α_t, σ_t), with x_t = α_t·x0 + σ_t·ε the model input, is q_t(x_t)·exp(-E_t(x_t)) with the
intermediate energy

    E_t(x_t) = -log E_{q(x0 | x_t)}[exp(-β·E(x0))],                                   (0)

and guidance adds its gradient to the model's noise prediction:

    ε̃(x_t) = ε̂(x_t) + s·σ_t·∇_{x_t} E_t(x_t)                                          (2)

(s = ``scale``, 1 for the exact target). An estimator of E_t is any object with the attributes
and the two methods of :class:`IntermediateEnergyEstimator`; the guided step (one evaluation of
the model, then one call of :meth:`~IntermediateEnergyEstimator.value_and_x_t_gradient`) reads
nothing else. An estimator whose gradient is autograd's of its value inherits that method from
:class:`AutogradGradient`. docs/architecture.md walks through one guided step.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Protocol, TypedDict, overload, runtime_checkable

import torch
from torch import Tensor

from .callables import Cond, Energy, Timestep, check_finite, estimator_sources
from .schedulers import Prediction, SchedulerLike


@runtime_checkable
class IntermediateEnergyEstimator(Protocol):
    """An estimator of E_t (0): declared attributes and the methods the guided step calls.

    Shapes: x_t (B, ...) the model input; α, σ (B,) its noise level
    (:meth:`~energy_guidance.schedulers.SchedulerAdapter.levels`); ``cond`` the condition or
    None; ``prediction`` the model's (ε̂, x̂0) at x_t (:class:`~energy_guidance.schedulers.Prediction`),
    always given by the guided step, computed inside x_t's autograd graph exactly when
    ``model_derivatives`` > 0 (an estimator that does not read it ignores it).

    Attributes (read-only to the guided step; a plain attribute, a class attribute or a property):
        beta: the β the estimator was built (or trained) for; None if it does not know it (the
            guidance is then given ``beta=``).
        energy: E(x0[, cond]) -> (B,) where the estimator has it (the final correction of
            :func:`~energy_guidance.smc_sample` uses it), else None (a network).
        model_derivatives: how often the gradient differentiates the model's output: 0 (never:
            the prediction is computed without autograd), 1 (one backward pass through the
            model), 2 (the gradient of a model gradient: the model then runs with the math
            attention kernel, :func:`~energy_guidance.callables.double_backward_attention`).
    """

    @property
    def beta(self) -> float | None: ...

    @property
    def energy(self) -> Energy | None: ...

    @property
    def model_derivatives(self) -> int: ...

    def __call__(
        self,
        x_t: Tensor,
        alpha: Tensor,
        sigma: Tensor,
        cond: Cond = None,
        *,
        prediction: Prediction | None = None,
    ) -> Tensor:
        """E_t (B,) at x_t, differentiable in x_t where the gradient is autograd's."""
        ...

    def value_and_x_t_gradient(
        self,
        x_t: Tensor,
        alpha: Tensor,
        sigma: Tensor,
        cond: Cond = None,
        *,
        prediction: Prediction | None = None,
        with_value: bool = True,
    ) -> tuple[Tensor | None, Tensor]:
        """(E_t (B,), ∇_{x_t} E_t shaped like x_t); x_t requires grad. The value may be None when
        ``with_value`` is False and computing it would cost extra."""
        ...


class AutogradGradient:
    """The gradient of an estimator whose ``__call__`` is differentiable in x_t: autograd's.

    Inherit it (beside ``nn.Module`` for a network) to implement
    :meth:`IntermediateEnergyEstimator.value_and_x_t_gradient`; ``energy`` and
    ``model_derivatives`` default to None and 0 (an estimator that reads the prediction inside
    the model's graph says so by setting ``model_derivatives``).
    """

    energy: Energy | None = None
    model_derivatives: int = 0

    def value_and_x_t_gradient(
        self: IntermediateEnergyEstimator,  # a mixin: the class that inherits it is the estimator
        x_t: Tensor,
        alpha: Tensor,
        sigma: Tensor,
        cond: Cond = None,
        *,
        prediction: Prediction | None = None,
        with_value: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """(E_t, ∇_{x_t} E_t) by one backward pass (:func:`autograd_value_and_gradient`)."""
        return autograd_value_and_gradient(self, x_t, alpha, sigma, cond, prediction)


def autograd_value_and_gradient(
    estimator: IntermediateEnergyEstimator,
    x_t: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    cond: Cond,
    prediction: Prediction | None,
) -> tuple[Tensor, Tensor]:
    """(E_t, ∇_{x_t} E_t) of ``estimator`` by one backward pass from its value at x_t (which
    requires grad); a non-finite E_t is reported before it is differentiated."""
    with torch.enable_grad():
        value = estimator(x_t, alpha, sigma, cond, prediction=prediction)
        source, hint, _, _ = estimator_sources(estimator, estimator.model_derivatives > 0)
        check_finite(value, source, detail=hint)
        (grad,) = torch.autograd.grad(value.sum(), x_t)
    return value, grad


class StepInfo(NamedTuple):
    """What a guided step reports: x̂0 after guidance (B, ...) and the norm of the change to ε̂,
    ‖ε̃ − ε̂‖ (B,), after ``scale`` and any rescale."""

    x0_hat: Tensor
    guidance_norm: Tensor


class StepRecord(TypedDict, total=False):
    """What a ``callback`` of :func:`~energy_guidance.sample` receives after each step.

    ``step``, ``timestep`` and ``sample`` (the scheduler's state after the step) always;
    ``x0_hat`` and ``guidance_norm`` (:class:`StepInfo`) when the model is guided; ``nonfinite``
    (B,) the frozen or dropped samples when ``on_nonfinite`` is not ``"raise"``.
    """

    step: int
    timestep: Tensor
    sample: Tensor
    x0_hat: Tensor
    guidance_norm: Tensor
    nonfinite: Tensor


@runtime_checkable
class Guided(Protocol):
    """A guided model is a model: called as ``model(x_t, t, cond)`` it returns the guided output
    in its scheduler's prediction type; :meth:`guided_model_output` also returns the step's
    :class:`StepInfo`. :class:`~energy_guidance.AnalyticEnergyGuidance` is one. The samplers
    check that ``scheduler`` is the one they step."""

    @property
    def scheduler(self) -> SchedulerLike: ...

    def __call__(self, x_t: Tensor, timestep: Timestep, cond: Cond = None) -> Tensor: ...

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
