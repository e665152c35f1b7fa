"""The analytic intermediate energy (AEPO's closed form).

The guided marginal p_t(x_t) ∝ q_t(x_t) · exp(-E_t(x_t)) has the intermediate energy

    E_t(x_t) = -log E_{q(x0 | x_t)}[exp(-β·E(x0))].

Expanding E to first order around a point x̄, with g = ∇E(x̄), and taking the posterior as
N(x̂0, Σ̂), the Gaussian moment generating function E[exp(aᵀx)] = exp(aᵀμ + ½·aᵀΣa) gives

    E_t(x_t) ≈ β·E(x̄) + β·gᵀ(x̂0 - x̄) - ½·β²·gᵀ Σ̂ g.                        (1)

(1) is exact when E is linear and the posterior Gaussian. For a quadratic E its error is
-½·log det(I + βΣ̂A) + ½·β²·gᵀ[(Σ̂⁻¹ + βA)⁻¹ - Σ̂]g at x̄ = x̂0, whose x̂0-dependent part is
O(β³) (docs/math.md). At high β its variance term -½·β²·gᵀΣ̂g rewards steep regions of E and
can reverse the guidance: for a convex E it pushes away from the minimum once β·Σ̂·E'' > 1.

The second-order expansion, with H = ∇²E(x̄), integrates in closed form too. Re-centred at the
posterior mean (m = x̂0 - x̄, value c = E(x̄) + gᵀm + ½·mᵀHm, gradient g' = g + H·m):

    E_t(x_t) ≈ β·c + ½·log det(I + β·Σ̂H) - ½·β²·g'ᵀ Σ̂ (I + β·HΣ̂)⁻¹ g'.           (3)

(3) is exact when E is quadratic and the posterior Gaussian, as long as I + βΣ̂H is positive
definite. For a convex E the factor (I + βHΣ̂)⁻¹ shrinks the variance term so that it never
outweighs the first, and the guidance never reverses (for a 1-D quadratic E = ½k(x - a)² at
x̄ = x̂0, dE_t/dx̂0 = β·k·(x̂0 - a)/(1 + β·k·Σ̂), the exact value, where (1) gives
β·k·(x̂0 - a)·(1 - β·k·Σ̂)). Where E is not convex, I + βΣ̂H may not be positive definite and
the Gaussian integral of the quadratic does not exist: there (3) is damped, Levenberg–Marquardt
style, by adding δ·I with δ the smallest shift that lifts every eigenvalue of I + βΣ̂H to
``floor`` (default 1: negative curvature is never allowed to amplify the variance term).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .callables import Cond, Energy, check_finite, differentiable_energy, energy_and_grad, energy_grad_hessian
from .posterior import (
    Constant,
    VarianceEstimator,
    VarianceTable,
    full_covariance,
    has_covariance,
    variance_estimator,
)
from .protocols import autograd_value_and_gradient
from .schedulers import Prediction


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
    if x0_hat is not None and x_bar is not None:
        delta = (x0_hat - x_bar).reshape(len(energy_bar), -1)
        value = value + beta * (grad_bar.reshape(len(energy_bar), -1) * delta).sum(1)
    return value


def _covariance_matrix(covariance: Tensor, batch: int, dim: int) -> Tensor:
    """Σ̂ as (B, d, d) from a scalar (B,), a diagonal (B, d) or a full (B, d, d) covariance."""
    if covariance.dim() == 1:
        covariance = covariance[:, None].expand(batch, dim)
    if covariance.dim() == 2:
        return torch.diag_embed(covariance)
    return covariance


def _damped_identity(beta: float, cov: Tensor, h: Tensor, floor: float) -> Tensor:
    """(1 + δ)·I (B, d, d), δ ≥ 0 the smallest shift lifting every eigenvalue of I + βΣ̂H to
    ``floor`` (the non-convex treatment of the module docstring; not differentiated). βΣ̂H has
    real eigenvalues when Σ̂ is PSD (it is similar to βΣ̂^½HΣ̂^½)."""
    lowest = 1 + torch.linalg.eigvals(beta * (cov @ h).detach()).real.min(dim=1).values
    shift = (floor - lowest).clamp(min=0)[:, None, None]
    return (1 + shift) * torch.eye(h.shape[1], dtype=h.dtype, device=h.device)


def second_order_intermediate_energy(
    beta: float,
    energy_bar: Tensor,
    grad_bar: Tensor,
    hessian_bar: Tensor,
    covariance: Tensor,
    x0_hat: Tensor | None = None,
    x_bar: Tensor | None = None,
    *,
    floor: float = 1.0,
) -> Tensor:
    """Equation (3): E_t (B,) from the second-order expansion of E at x̄.

    energy_bar: E(x̄) (B,);  grad_bar: ∇E(x̄) (B, ...);  hessian_bar: ∇²E(x̄) (B, d, d) with d the
    flattened sample size;  covariance: Σ̂ as (B,) (times I), (B, d) (diagonal) or (B, d, d).
    ``x0_hat`` and ``x_bar`` (B, ...) enter through m = x̂0 - x̄; leave both out when x̄ = x̂0.
    ``floor`` > 0 is the smallest eigenvalue I + βΣ̂H may have (see the module docstring); the
    damping shift is not differentiated.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0 (lower energy is better), got {beta}")
    if not floor > 0:
        raise ValueError(f"floor must be > 0, got {floor}")
    if (x0_hat is None) != (x_bar is None):
        raise ValueError("give both x0_hat and x_bar, or neither (meaning x̄ = x̂0)")
    b = len(energy_bar)
    g = grad_bar.reshape(b, -1)
    d = g.shape[1]
    h = 0.5 * (hessian_bar + hessian_bar.transpose(1, 2))
    value = energy_bar
    if x0_hat is not None and x_bar is not None:
        m = (x0_hat - x_bar).reshape(b, -1)
        hm = (h @ m[..., None])[..., 0]
        value = value + (g * m).sum(1) + 0.5 * (m * hm).sum(1)
        g = g + hm
    cov = _covariance_matrix(covariance.to(g), b, d)
    check_finite(cov, "posterior covariance")  # else the solve below fails as "singular"
    check_finite(h, "energy Hessian")
    identity = _damped_identity(beta, cov, h, floor)
    solved = torch.linalg.solve(identity + beta * (h @ cov), g[..., None])  # (I + βHΣ̂)⁻¹g'
    quad = (g[..., None] * (cov @ solved)).sum((1, 2))
    logdet = torch.linalg.slogdet(identity + beta * (cov @ h)).logabsdet
    return beta * value + 0.5 * logdet - 0.5 * beta**2 * quad


@dataclass(frozen=True)
class ClosedForm:
    """The training-free intermediate-energy estimator: equation (1) (``order=1``, the paper's)
    or (3) (``order=2``) at x̄ = x̂0(x_t).

    ``ClosedForm(energy, beta, variance, order=1)`` with ``variance`` a
    :class:`~energy_guidance.posterior.VarianceEstimator` (or its name/number shortcut, resolved
    here; a table estimator named by string needs ``variance_table``). It reads the model's
    prediction (``uses_model_graph``), so guidance calls it with ``prediction=`` computed from
    x_t inside autograd, and ∇_{x_t} E_t back-propagates through the model. ``order=2`` needs
    the Hessian of E (d Hessian-vector products per call, d the flattened sample size) and the
    full covariance of ``variance``: meant for small d (actions, 2-D toys); ``floor`` is its
    treatment of non-convex E (module docstring).

    ``gradient`` chooses how guidance gets ∇_{x_t} E_t:

    - ``"autograd"`` (the paper's training-free guidance): differentiate E_t(x_t) through the
      model, the energy and the variance estimate;
    - ``"tweedie"``: ∇_{x_t} E_t = (α/σ²)·Σ̂·∇_{x̂0} E_t, the chain rule with the second-order
      Tweedie identity ∂x̂0/∂x_t = (α/σ²)·Cov[x0 | x_t], and Σ̂ and ∇²E held fixed:
      ∇_{x̂0} E_t = β·g - β²·HΣ̂g for (1) and β·(I + βHΣ̂)⁻¹g for (3), i.e. Tweedie's step to the
      tilted Gaussian's mean x̂0 - β·Σ̂·(I + βHΣ̂)⁻¹g. Where (3) is damped the step keeps this
      form, β·((1 + δ)·I + βHΣ̂)⁻¹g: it is *not* the derivative of the damped value, which is
      1 + δ times larger for an isotropic H (what ``"autograd"`` follows), since concave
      curvature then amplifies the step (measured worse on the 2-D toys, docs/benchmarks.md).
      No backward pass through the model (a learned model's Jacobian can be far larger than the
      true (α/σ²)·Cov), and with a table or constant variance no model gradient at all. Exact
      wherever the closed form is and the posterior covariance does not depend on x_t (Gaussian
      data).

    Derivatives taken (attention needs the math kernel exactly where one is differentiated twice;
    :func:`~energy_guidance.callables.double_backward_attention`):

    - order 1, ``Constant(0.0)`` (DPS-style), autograd: E_t = β·E(x̂0), one backward pass
      through energy and model; first derivatives only;
    - order 1, any other variance: ∇E is built with ``create_graph`` (the variance term's
      Hessian-vector product), so the energy is differentiated twice; the model once with
      autograd, and twice with autograd and a variance read from the model's graph (the Jacobian;
      :attr:`double_backward_model`); with ``"tweedie"`` the model at most once (the Jacobian's
      vector-Jacobian products);
    - order 2: the energy twice (d Hessian-vector products), three times with autograd; the model
      as for order 1.
    """

    energy: Energy
    beta: float
    variance: VarianceEstimator
    order: int
    floor: float
    gradient: str

    def __init__(
        self,
        energy: Energy,
        beta: float,
        variance: VarianceEstimator | str | float = "jacobian",
        variance_table: VarianceTable | None = None,
        *,
        order: int = 1,
        floor: float = 1.0,
        gradient: str = "autograd",
    ) -> None:
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0 (lower energy is better), got {beta}")
        if order not in (1, 2):
            raise ValueError(f"order must be 1 (the paper's closed form) or 2, got {order}")
        if not floor > 0:
            raise ValueError(f"floor must be > 0, got {floor}")
        if gradient not in ("autograd", "tweedie"):
            raise ValueError(f"gradient must be 'autograd' or 'tweedie', got {gradient!r}")
        variance = variance_estimator(variance, variance_table)
        if (order == 2 or gradient == "tweedie") and not has_covariance(variance):
            raise TypeError(
                f"order=2 and the Tweedie gradient need the full covariance, which "
                f"{type(variance).__name__} does not give"
            )
        object.__setattr__(self, "energy", energy)
        object.__setattr__(self, "beta", float(beta))
        object.__setattr__(self, "variance", variance)
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "floor", float(floor))
        object.__setattr__(self, "gradient", gradient)

    @property
    def model_derivatives(self) -> int:
        """How often ∇_{x_t} E_t differentiates the model's output: autograd through the model
        once, twice with a variance read from the model's graph (the Jacobian: the model's forward
        then needs the math attention kernel); the Tweedie gradient once with such a variance (its
        vector-Jacobian products), else never."""
        from_variance = int(bool(self.variance.uses_model_graph))
        return 1 + from_variance if self.gradient == "autograd" else from_variance

    @property
    def zero_variance(self) -> bool:
        """Σ̂ = 0 (``Constant(0.0)``): no variance term, so no derivative of ∇E is ever needed."""
        return isinstance(self.variance, Constant) and self.variance.value == 0

    def x_t_gradient(
        self,
        x_t: Tensor,
        alpha: Tensor,
        sigma: Tensor,
        cond: Cond = None,
        *,
        prediction: Prediction | None = None,
    ) -> Tensor:
        """∇_{x_t} E_t (shaped like x_t) by the Tweedie chain rule (class docstring)."""
        prediction = _required(prediction)
        x0 = prediction.x0.detach()
        b = x0.shape[0]
        d = x0[0].numel()
        variance = full_covariance(self.variance)  # checked in __init__
        cov = variance.covariance(alpha, sigma, dim=d, eps_hat=prediction.eps, x_t=x_t).detach().to(x0)

        def times_cov(v: Tensor) -> Tensor:  # Σ̂·v for v (B, d); Σ̂ diagonal (B, d) or full (B, d, d)
            return cov * v if cov.dim() == 2 else (cov @ v[..., None])[..., 0]

        if self.order == 2:
            _, grad, hessian = energy_grad_hessian(self.energy, x0, cond)
            g = grad.reshape(b, d)
            h = 0.5 * (hessian + hessian.transpose(1, 2))
            full = _covariance_matrix(cov, b, d)
            # the damped tilted mean's shift, not the derivative of the damped value (docstring)
            damped = _damped_identity(self.beta, full, h, self.floor) + self.beta * h @ full
            step = self.beta * torch.linalg.solve(damped, g[..., None])[..., 0]
        else:
            with torch.enable_grad():
                x = x0.requires_grad_(True)
                _, grad = energy_and_grad(self.energy, x, cond, create_graph=not self.zero_variance)
                g = grad.reshape(b, d)
                w = times_cov(g).detach()
                hw = None
                if g.requires_grad:  # a linear E has no curvature
                    (hw,) = torch.autograd.grad((g * w).sum(), x, allow_unused=True)
            hw = torch.zeros_like(g) if hw is None else hw.reshape(b, d)
            step = self.beta * g.detach() - self.beta**2 * hw
        scale = (alpha / sigma**2).to(x0)[:, None]
        return (scale * times_cov(step)).reshape(x0.shape)

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
        """(E_t (B,), ∇_{x_t} E_t): autograd's through the model, or the Tweedie chain rule
        (:meth:`x_t_gradient`; E_t then only ``with_value``, one more evaluation)."""
        prediction = _required(prediction)
        if self.gradient == "autograd":
            return autograd_value_and_gradient(self, x_t, alpha, sigma, cond, prediction)
        grad = self.x_t_gradient(x_t, alpha, sigma, cond, prediction=prediction)
        value = self(x_t, alpha, sigma, cond, prediction=prediction).detach() if with_value else None
        return value, grad

    def __call__(
        self,
        x_t: Tensor,
        alpha: Tensor,
        sigma: Tensor,
        cond: Cond = None,
        *,
        prediction: Prediction | None = None,
    ) -> Tensor:
        """E_t (B,) at x_t (B, ...) with per-sample α, σ (B,); ``prediction`` = (ε̂, x̂0) in x_t's graph."""
        prediction = _required(prediction)
        if self.order == 2:
            energy_bar, grad_bar, hessian = energy_grad_hessian(
                self.energy, prediction.x0, cond, create_graph=True
            )
            cov = full_covariance(self.variance).covariance(
                alpha, sigma, dim=hessian.shape[1], eps_hat=prediction.eps, x_t=x_t, create_graph=True
            )
            return second_order_intermediate_energy(
                self.beta, energy_bar, grad_bar, hessian, cov, floor=self.floor
            )
        if self.zero_variance:  # DPS-style: E_t = β·E(x̂0), first derivatives only
            return self.beta * differentiable_energy(self.energy, prediction.x0, cond)
        energy_bar, grad_bar = energy_and_grad(self.energy, prediction.x0, cond, create_graph=True)
        quad = self.variance.quadratic(
            grad_bar, alpha, sigma, eps_hat=prediction.eps, x_t=x_t, create_graph=True
        )
        return analytic_intermediate_energy(self.beta, energy_bar, grad_bar, quad)


def _required(prediction: Prediction | None) -> Prediction:
    if prediction is None:
        raise TypeError("ClosedForm reads the model's prediction: pass prediction=(ε̂, x̂0)")
    return prediction
