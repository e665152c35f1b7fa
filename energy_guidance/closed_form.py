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

from torch import Tensor


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


def analytic_log_potential(*args, **kwargs) -> Tensor:
    """L_t = log E[exp(-β·E(x0)) | x_t] ≈ -E_t; same arguments as :func:`analytic_intermediate_energy`."""
    return -analytic_intermediate_energy(*args, **kwargs)
