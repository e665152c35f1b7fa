"""The analytic intermediate energy (AEPO's closed form).

The guided marginal p_t(x_t) ∝ q_t(x_t) · exp(-E_t(x_t)) has the intermediate energy

    E_t(x_t) = -log E_{q(x0 | x_t)}[exp(-β·E(x0))].

Expanding E to first order around a point x̄, with g = ∇E(x̄), and taking the posterior as
N(x̂0, Σ̂), the Gaussian moment generating function E[exp(aᵀx)] = exp(aᵀμ + ½·aᵀΣa) gives

    E_t(x_t) ≈ β·E(x̄) + β·gᵀ(x̂0 - x̄) - ½·β²·gᵀ Σ̂ g.                        (1)

(1) is exact when E is linear and the posterior Gaussian. For a quadratic E its error is
-½·log det(I + βΣ̂A) + ½·β²·gᵀ[(Σ̂⁻¹ + βA)⁻¹ - Σ̂]g at x̄ = x̂0, whose x̂0-dependent part is
O(β³) (docs/math.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from .callables import Energy, energy_and_grad
from .posterior import VarianceEstimator, variance_estimator
from .schedules import Prediction


def analytic_intermediate_energy(
    beta: float,
    energy_bar: Tensor,
    grad_bar: Tensor,
    quad: Tensor,
    x0_hat: Tensor | None = None,
    x_bar: Tensor | None = None,
) -> Tensor:
    """Equation (1): E_t (B,) from its parts.

    energy_bar: E(x̄) (B,);  grad_bar: g = ∇E(x̄) (B, ...);  quad: gᵀ Σ̂ g (B,).
    ``x0_hat`` and ``x_bar`` (B, ...) enter only through x̂0 - x̄; leave both out when x̄ = x̂0.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0 (lower energy is better), got {beta}")
    value = beta * energy_bar - 0.5 * beta**2 * quad
    if (x0_hat is None) != (x_bar is None):
        raise ValueError("give both x0_hat and x_bar, or neither (meaning x̄ = x̂0)")
    if x0_hat is not None:
        delta = (x0_hat - x_bar).reshape(len(energy_bar), -1)
        value = value + beta * (grad_bar.reshape(len(energy_bar), -1) * delta).sum(1)
    return value


@dataclass(frozen=True)
class ClosedForm:
    """The training-free intermediate-energy estimator: equation (1) at x̄ = x̂0(x_t).

    ``ClosedForm(energy, beta, variance)`` with ``variance`` a
    :class:`~energy_guidance.posterior.VarianceEstimator` (or its name/number shortcut, resolved
    here; a table estimator named by string needs ``variance_table``). It reads the model's
    prediction (``uses_model_graph``), so guidance calls it with ``prediction=`` computed from
    x_t inside autograd, and ∇_{x_t} E_t back-propagates through the model.
    """

    energy: Energy
    beta: float
    variance: VarianceEstimator
    uses_model_graph: ClassVar[bool] = True

    def __init__(self, energy: Energy, beta: float, variance="jacobian", variance_table=None) -> None:
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0 (lower energy is better), got {beta}")
        object.__setattr__(self, "energy", energy)
        object.__setattr__(self, "beta", float(beta))
        object.__setattr__(self, "variance", variance_estimator(variance, variance_table))

    def __call__(
        self, x_t: Tensor, alpha: Tensor, sigma: Tensor, cond=None, *, prediction: Prediction
    ) -> Tensor:
        """E_t (B,) at x_t (B, ...) with per-sample α, σ (B,); ``prediction`` = (ε̂, x̂0) in x_t's graph."""
        energy_bar, grad_bar = energy_and_grad(self.energy, prediction.x0, cond, create_graph=True)
        quad = self.variance.quadratic(
            grad_bar, alpha, sigma, eps_hat=prediction.eps, x_t=x_t, create_graph=True
        )
        return analytic_intermediate_energy(self.beta, energy_bar, grad_bar, quad)
