"""DPS-style guidance (Chung et al. 2023, arXiv 2209.14687): E_t(x_t) ≈ β·E(x̂0(x_t)).

The closed form (1) with a zero posterior variance: the energy is evaluated at Tweedie's mean and
differentiated through the model, ∇_{x_t} E_t = β·(∂x̂0/∂x_t)ᵀ ∇E(x̂0). It ignores the spread of
q(x0 | x_t), so it is exact only as σ_t → 0; the baseline every variance estimator must beat.
"""

from __future__ import annotations

from typing import Any

from ..callables import Energy, NoiseModel
from ..guidance import AnalyticEnergyGuidance
from ..posterior import Constant
from ..schedulers import SchedulerLike


def dps_guidance(
    scheduler: SchedulerLike, model: NoiseModel, energy: Energy, beta: float, **kwargs: Any
) -> AnalyticEnergyGuidance:
    """:class:`~energy_guidance.AnalyticEnergyGuidance` with ``variance=Constant(0.0)``: the paper's
    closed form (order 1, autograd through the model) with Σ̂ = 0, not the library's default
    estimator; ``kwargs`` (``rescale``, ``scale``) are passed on."""
    return AnalyticEnergyGuidance(scheduler, model, energy, beta, variance=Constant(0.0), **kwargs)
