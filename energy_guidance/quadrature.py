"""The intermediate energy by quadrature of the Gaussian posterior: no expansion of E at all.

The closed forms (1) and (3) take the posterior as N(x̂0, Σ̂) *and* replace E by its Taylor
expansion at x̂0. The second step is what fails on the energies of practice: a bounded or
multimodal E is not its local quadratic over the posterior's spread, so (1) can reverse and (3)
over-damps. Keeping only the first approximation, the Gaussian integral is taken numerically with
a fixed rule (nodes ξ_j, weights w_j for N(0, I), x_j = x̂0 + Σ̂^½·ξ_j):

    E_t(x_t) ≈ -log Σ_j w_j·exp(-β·E(x_j)),                                           (7)
    ∇_{x_t} E_t ≈ (α/σ²)·(x̂0 - μ̃),   μ̃ = Σ_j π_j·x_j,   π = softmax_j(log w_j - β·E(x_j)).

The gradient is Tweedie's formula applied to the model and to the tilted posterior (∇ log q_t =
(α·x̂0 - x_t)/σ², and the same with the tilted mean μ̃), Σ̂ held fixed as in the ``"tweedie"``
gradient of :class:`~energy_guidance.closed_form.ClosedForm`: μ̃ is the mean of the discrete
posterior {x_j} reweighted by exp(-β·E). Properties (docs/math.md (7)):

- only values of E are needed: no gradient, no Hessian, no backward pass through the model (one
  through the model's Jacobian for ``variance="jacobian"``);
- the guidance can neither reverse nor overshoot: μ̃ lies in the convex hull of the nodes, and
  Σ_j π_j·E(x_j) ≤ Σ_j w_j·E(x_j) (reweighting by exp(-β·E) lowers the mean energy), whatever β;
- for small β, μ̃ - x̂0 = -β·Σ_j w_j·(x_j - x̂0)·E(x_j) + O(β²), the rule's value of
  -β·Cov(x0, E(x0)) = -β·Σ̂·E[∇E] (Stein's lemma): the first-order form with ∇E averaged over
  the posterior, which for a quadratic E agrees with (1) to first order in β;
- as the rule's order grows it converges to the exact Gaussian integral, for any E.

Rules: ``"gauss_hermite"`` (tensor product, ``points`` per dimension, points**d nodes, exact for
polynomials of degree 2·points - 1 in each coordinate: for small d, such as 2-D toys and short
action vectors) and ``"cubature"`` (the third-degree spherical rule: 2d nodes ±√d·e_i, equal
weights; for larger d). Σ̂ comes from any variance estimator with a ``covariance``; the Jacobian
one is the exact local posterior covariance for an exact noise model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .callables import Cond, Energy, NonFiniteError, call_energy
from .posterior import (
    CovarianceEstimator,
    VarianceEstimator,
    VarianceTable,
    has_covariance,
    variance_estimator,
)
from .schedulers import Prediction

RULES = ("gauss_hermite", "cubature")
NODES = "energy at the quadrature nodes x̂0 + Σ̂^½·ξ_j"
MAX_NODES = 4096  # per sample: points**d grows fast, and every node costs an energy evaluation


def gauss_hermite_rule(dim: int, points: int) -> tuple[Tensor, Tensor]:
    """Tensor-product Gauss-Hermite rule for N(0, I_dim): nodes (points**dim, dim), log-weights (float64).

    Exact for polynomials of degree ≤ 2·points - 1 in each coordinate.
    """
    z, w = np.polynomial.hermite_e.hermegauss(points)  # weight function exp(-z²/2)
    nodes = torch.from_numpy(z)
    log_w = torch.from_numpy(np.log(w / math.sqrt(2 * math.pi)))
    grids = torch.meshgrid(*([torch.arange(points)] * dim), indexing="ij")
    index = torch.stack([g.reshape(-1) for g in grids], dim=1)
    return nodes[index], log_w[index].sum(1)


def cubature_rule(dim: int) -> tuple[Tensor, Tensor]:
    """The third-degree spherical cubature rule for N(0, I_dim): nodes ±√dim·e_i (2·dim, dim),
    equal log-weights (float64); exact for polynomials of total degree ≤ 3."""
    eye = torch.eye(dim, dtype=torch.float64)
    nodes = math.sqrt(dim) * torch.cat([eye, -eye])
    return nodes, torch.full((2 * dim,), -math.log(2 * dim), dtype=torch.float64)


def _offsets(covariance: Tensor, nodes: Tensor) -> Tensor:
    """Σ̂^½·ξ_j (B, Q, d) for nodes ξ (Q, d) and Σ̂ as (B,) (times I), (B, d) (diagonal) or
    (B, d, d) (its PSD part, by eigendecomposition); the first two never form a d×d matrix."""
    covariance = covariance.to(torch.float64)
    if covariance.dim() == 1:
        return covariance.clamp(min=0).sqrt()[:, None, None] * nodes[None]
    if covariance.dim() == 2:
        return covariance.clamp(min=0).sqrt()[:, None, :] * nodes[None]
    values, vectors = torch.linalg.eigh(0.5 * (covariance + covariance.transpose(1, 2)))
    root = vectors * values.clamp(min=0).sqrt()[:, None, :]
    return torch.einsum("bij,qj->bqi", root, nodes)


@dataclass(frozen=True)
class GaussianQuadrature:
    """The intermediate-energy estimator (7): ``GaussianQuadrature(energy, beta, variance)``.

    Use it as ``AnalyticEnergyGuidance(scheduler, model, estimator=GaussianQuadrature(...))``,
    and as an SMC twist. ``variance`` is a :class:`~energy_guidance.posterior.VarianceEstimator`
    with a ``covariance`` or its shortcut (a table estimator named by string reads
    ``variance_table``); ``rule`` and ``points`` choose the nodes (module docstring). Guidance
    takes ∇_{x_t} E_t from :meth:`x_t_gradient` (no autograd through the model).
    """

    energy: Energy
    beta: float
    variance: CovarianceEstimator
    rule: str
    points: int

    def __init__(
        self,
        energy: Energy,
        beta: float,
        variance: VarianceEstimator | str | float = "jacobian",
        variance_table: VarianceTable | None = None,
        *,
        rule: str = "gauss_hermite",
        points: int = 3,
    ) -> None:
        if not (beta >= 0 and math.isfinite(beta)):
            raise ValueError(f"beta must be >= 0 (lower energy is better) and finite, got {beta}")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if isinstance(points, bool) or not isinstance(points, int) or points < 2:
            raise ValueError(f"points must be an integer >= 2 (nodes per dimension), got {points!r}")
        variance = variance_estimator(variance, variance_table)
        if not has_covariance(variance):
            raise TypeError(
                f"the quadrature needs the covariance matrix, which {type(variance).__name__} does not give"
            )
        object.__setattr__(self, "energy", energy)
        object.__setattr__(self, "beta", float(beta))
        object.__setattr__(self, "variance", variance)
        object.__setattr__(self, "rule", rule)
        object.__setattr__(self, "points", points)

    @property
    def model_derivatives(self) -> int:
        """1 where the variance reads the model's graph (the Jacobian's vector-Jacobian products),
        else 0: the gradient (7) is explicit, never autograd's through the model."""
        return int(bool(self.variance.uses_model_graph))

    def nodes(self, dim: int) -> tuple[Tensor, Tensor]:
        """The rule's nodes (Q, dim) and log-weights (Q,) for N(0, I_dim), float64."""
        if self.rule == "cubature":
            return cubature_rule(dim)
        if self.points**dim > MAX_NODES:
            raise ValueError(
                f"a Gauss-Hermite rule with {self.points} points in {dim} dimensions has "
                f"{self.points}**{dim} nodes (more than {MAX_NODES}); use rule='cubature' (2·d nodes)"
            )
        return gauss_hermite_rule(dim, self.points)

    def _tilt(
        self, x_t: Tensor, alpha: Tensor, sigma: Tensor, cond: Cond, prediction: Prediction
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(x̂0 (B, d), nodes x_j (B, Q, d), logits log w_j - β·E(x_j) (B, Q)), float64, detached."""
        x0 = prediction.x0.detach()
        b, d = x0.shape[0], x0[0].numel()
        cov = self.variance.covariance(alpha, sigma, dim=d, eps_hat=prediction.eps, x_t=x_t)
        z, log_w = (v.to(x0.device) for v in self.nodes(d))
        q = len(log_w)
        centre = x0.reshape(b, 1, d).to(torch.float64)
        points = centre + _offsets(cov.detach().to(x0.device), z)
        if cond is not None and not isinstance(cond, Tensor):
            raise TypeError(
                f"GaussianQuadrature needs cond as a tensor (B, ...) or None, got {type(cond).__name__}"
            )
        cond_q = None if cond is None else cond.repeat_interleave(q, dim=0)
        with torch.no_grad():
            try:
                e = call_energy(self.energy, points.reshape(b * q, *x0.shape[1:]).to(x0.dtype), cond_q)
            except NonFiniteError as error:  # name the nodes, and the samples (not B·Q rows)
                bad = error.bad.reshape(b, q).any(1)
                raise NonFiniteError(NODES, bad, "E is not finite on the posterior's spread") from None
        logits = log_w[None] - self.beta * e.to(torch.float64).reshape(b, q)
        return centre[:, 0], points, logits

    def __call__(
        self,
        x_t: Tensor,
        alpha: Tensor,
        sigma: Tensor,
        cond: Cond = None,
        *,
        prediction: Prediction | None = None,
    ) -> Tensor:
        """E_t (B,) of (7) at x_t (B, ...), per-sample α, σ (B,); not differentiable (guidance
        uses :meth:`x_t_gradient`)."""
        return self.value_and_x_t_gradient(x_t, alpha, sigma, cond, prediction=prediction)[0]

    def x_t_gradient(
        self, x_t: Tensor, alpha: Tensor, sigma: Tensor, cond: Cond = None, *, prediction: Prediction
    ) -> Tensor:
        """∇_{x_t} E_t = (α/σ²)·(x̂0 - μ̃) of (7), shaped like x_t."""
        return self.value_and_x_t_gradient(x_t, alpha, sigma, cond, prediction=prediction)[1]

    def value_and_x_t_gradient(
        self,
        x_t: Tensor,
        alpha: Tensor,
        sigma: Tensor,
        cond: Cond = None,
        *,
        prediction: Prediction | None = None,
        with_value: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """(E_t (B,), ∇_{x_t} E_t) of (7) from one set of nodes (both, whatever ``with_value``)."""
        if prediction is None:
            raise TypeError("GaussianQuadrature reads the model's prediction: pass prediction=(ε̂, x̂0)")
        x0, points, logits = self._tilt(x_t, alpha, sigma, cond, prediction)
        tilted = (torch.softmax(logits, dim=1)[..., None] * points).sum(1)
        scale = (alpha.to(torch.float64) / sigma.to(torch.float64) ** 2)[:, None]
        grad = (scale * (x0 - tilted)).to(prediction.x0.dtype).reshape(prediction.x0.shape)
        return -torch.logsumexp(logits, dim=1).to(prediction.x0.dtype), grad
