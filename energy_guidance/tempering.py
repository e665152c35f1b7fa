"""A tempered twist: the intermediate energy switched on as the noise falls.

    Ẽ_t(x_t) = λ_t·E_t(x_t),   λ_t = (α_t² / (α_t² + σ_t²))^p,   p ≥ 0.              (5)

λ_t rises from 0 (pure noise) to 1 (σ_t = 0); α²/(α² + σ²) is the share of a unit-variance
x0's variance that x_t explains (Var[x̂0]/Var[x0] for Gaussian data), and the power p makes the
switch later and sharper.

Why. In :func:`~energy_guidance.smc_sample` the twist only has to *steer*: the final correction
exp(-β·E(x0))/exp(-Ẽ_{t_last}) makes the target exact whatever the twist, and λ_t → 1 leaves
that correction small. What costs particles is a twist that is wrong at high noise and moves them
far from the model's steps: DPS-style β·E(x̂0), with x̂0 a blurred mean of far-apart modes,
pushes the proposal hard where the estimate is worst, and 64 particles cannot reweight the
damage away. Tempering keeps the early proposals near the model's own steps and hands the
energy over as x̂0 becomes accurate. Measured on QGPO's 2-D toys with the exact noise model
(docs/benchmarks.md, "SMC with a tempered twist").

Tempering changes the path, not SMC's target; used for plain guided sampling (no weights) it
samples a different distribution than p ∝ q·exp(-β·E).
"""

from __future__ import annotations

import math

from torch import Tensor

from .callables import Cond
from .protocols import IntermediateEnergyEstimator
from .schedulers import Prediction


class Tempered:
    """An :class:`~energy_guidance.protocols.IntermediateEnergyEstimator` that returns (5): λ_t·E_t
    and λ_t·∇E_t of ``estimator`` (any: the closed form, DPS-style, a network, CEP, an exact one),
    whose ``beta``, ``energy`` and ``model_derivatives`` it keeps. ``power`` is p of (5); 0 is the
    estimator itself.
    """

    def __init__(self, estimator: IntermediateEnergyEstimator, power: float = 3.0) -> None:
        power = float(power)
        if not (power >= 0 and math.isfinite(power)):
            raise ValueError(f"power must be finite and >= 0, got {power}")
        self.estimator = estimator
        self.power = power

    # the wrapped estimator's declared attributes (IntermediateEnergyEstimator)
    beta = property(lambda self: self.estimator.beta)
    energy = property(lambda self: self.estimator.energy)
    model_derivatives = property(lambda self: self.estimator.model_derivatives)

    def weight(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        """λ_t of (5), (B,) from per-sample α, σ (B,)."""
        return (alpha**2 / (alpha**2 + sigma**2)) ** self.power

    def _weighted(self, alpha: Tensor, sigma: Tensor, values: Tensor) -> Tensor:
        """λ_t times ``values`` (B, ...), per sample."""
        lam = self.weight(alpha, sigma).to(values)
        return lam.reshape((-1,) + (1,) * (values.dim() - 1)) * values

    def __call__(
        self,
        x_t: Tensor,
        alpha: Tensor,
        sigma: Tensor,
        cond: Cond = None,
        *,
        prediction: Prediction | None = None,
    ) -> Tensor:
        """λ_t·E_t (B,)."""
        return self._weighted(alpha, sigma, self.estimator(x_t, alpha, sigma, cond, prediction=prediction))

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
        """(λ_t·E_t, λ_t·∇_{x_t}E_t)."""
        value, grad = self.estimator.value_and_x_t_gradient(
            x_t, alpha, sigma, cond, prediction=prediction, with_value=with_value
        )
        weighted = None if value is None else self._weighted(alpha, sigma, value)
        return weighted, self._weighted(alpha, sigma, grad)

    def __repr__(self) -> str:
        return f"Tempered({self.estimator!r}, power={self.power:g})"
