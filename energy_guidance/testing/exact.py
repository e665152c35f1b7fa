"""Exact intermediate energies, usable as ``estimator=`` in :class:`AnalyticEnergyGuidance`.

For data q(x0) and x_t = α·x0 + σ·ε the guided marginal's intermediate energy is

    E_t(x_t) = -L_t(x_t),    L_t = log E_{q(x0 | x_t)}[exp(-β·E(x0))].

When q is an empirical set or a Gaussian mixture, q(x0 | x_t) is known in closed form and so is
E_t (up to quadrature for a non-linear E on mixture components of non-zero width). Guidance with
these estimators samples the tilted target q·exp(-β·E)/Z up to the sampler's discretisation error
alone: the ground truth the learned and analytic estimators are measured against.

Both classes are :class:`~energy_guidance.protocols.IntermediateEnergyEstimator` s differentiable
in x_t (:class:`~energy_guidance.protocols.AutogradGradient`), so
``AnalyticEnergyGuidance(scheduler, model, estimator=...)`` uses them exactly like a trained
:class:`~energy_guidance.amortized.IntermediateEnergyNet`.
Pair them with the matching exact noise model: :class:`EmpiricalNoiseModel` for an empirical set
(also available, slower, as :func:`empirical_mixture` with zero-width components) and
:meth:`GaussianMixture.noise_model` for a mixture.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..callables import Cond, Energy, Timestep, call_energy
from ..protocols import AutogradGradient
from ..quadrature import gauss_hermite_rule
from ..schedulers import SchedulerLike, from_eps_x0, noise_level, prediction_type
from .mixtures import GaussianMixture
from .montecarlo import empirical_log_potential, empirical_posterior_logits


def empirical_mixture(data: Tensor) -> GaussianMixture:
    """The empirical distribution of ``data`` (N, d) as a mixture of N point masses.

    Its :meth:`~GaussianMixture.noise_model` is the exact (memorising) noise prediction of the set.
    """
    data = data.reshape(data.shape[0], -1)
    return GaussianMixture(torch.ones(data.shape[0]), data, torch.zeros(()))


class EmpiricalNoiseModel(nn.Module):
    """The exact noise model of the empirical set ``data`` (N, ...): a memorising diffusion model.

    x̂0(x_t) = Σ_i w_i x_i with w = softmax_i(-‖x_t - α·x_i‖²/(2σ²)) and ε̂ = (x_t - α·x̂0)/σ,
    returned in ``scheduler``'s prediction type; ``model(x_t, t)`` like any noise model. The same
    as ``empirical_mixture(data).noise_model(scheduler)`` with B·N instead of B·N·d temporaries.
    """

    data: Tensor  # a buffer

    def __init__(self, data: Tensor, scheduler: SchedulerLike) -> None:
        super().__init__()
        self.scheduler = scheduler
        self.prediction_type = prediction_type(scheduler)
        self.register_buffer("data", data.detach().reshape(data.shape[0], -1).to(torch.float64))

    def forward(self, x_t: Tensor, timestep: Timestep) -> Tensor:
        alpha, sigma = noise_level(self.scheduler, timestep)
        alpha = alpha.to(x_t.device).expand(x_t.shape[0])
        sigma = sigma.to(x_t.device).expand(x_t.shape[0])
        w = torch.softmax(empirical_posterior_logits(self.data, x_t, alpha, sigma), dim=1)
        x0 = (w @ self.data).reshape(x_t.shape)
        shape = (-1,) + (1,) * (x_t.dim() - 1)
        eps = (x_t.to(torch.float64) - alpha.reshape(shape) * x0) / sigma.reshape(shape)
        return from_eps_x0(eps, x0, alpha, sigma, self.prediction_type).to(x_t.dtype)


class EmpiricalIntermediateEnergy(AutogradGradient, nn.Module):
    """Exact E_t for the empirical distribution of ``data`` (N, ...).

    q(x0 | x_t) puts weight w_i ∝ exp(-‖x_t - α·x_i‖²/(2σ²)) on each x_i, so
    E_t = logsumexp_i(log w_i) - logsumexp_i(log w_i - β·E(x_i)) (the negative of
    :func:`~energy_guidance.montecarlo.empirical_log_potential`). The energies E(x_i) are
    computed once (or given as ``energies`` (N,)); the cost per call is B·N distances.
    Unconditional: pass ``cond=None``.
    """

    data: Tensor  # buffers
    energies: Tensor

    def __init__(
        self, data: Tensor, beta: float, *, energy: Energy | None = None, energies: Tensor | None = None
    ) -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be >= 0 (lower energy is better), got {beta}")
        if energies is None:
            if energy is None:
                raise ValueError("give exactly one of `energy` (a callable) or `energies` (N,)")
            with torch.no_grad():
                energies = call_energy(energy, data)
        elif energy is not None:
            raise ValueError("give exactly one of `energy` (a callable) or `energies` (N,)")
        if energies.shape != (data.shape[0],):
            raise ValueError(f"energies must have shape ({data.shape[0]},), got {tuple(energies.shape)}")
        self.beta = float(beta)
        self.energy = energy
        self.register_buffer("data", data.detach().reshape(data.shape[0], -1).to(torch.float64))
        self.register_buffer("energies", energies.detach().to(torch.float64))

    def forward(
        self, x_t: Tensor, alpha: Tensor, sigma: Tensor, cond: Cond = None, *, prediction: object = None
    ) -> Tensor:
        if cond is not None:
            raise ValueError("EmpiricalIntermediateEnergy is unconditional; pass cond=None")
        alpha = torch.as_tensor(alpha).to(torch.float64).expand(x_t.shape[0])
        sigma = torch.as_tensor(sigma).to(torch.float64).expand(x_t.shape[0])
        log_potential = empirical_log_potential(self.data, self.energies, x_t, alpha, sigma, self.beta)
        return -log_potential.to(x_t.dtype)


class GaussianMixtureIntermediateEnergy(AutogradGradient, nn.Module):
    """Exact E_t for data given as a :class:`GaussianMixture` and any differentiable energy.

    q(x0 | x_t) = Σ_k w_k(x_t) N(m_k(x_t), diag(s_k)) (see :mod:`energy_guidance.toys`), so

        L_t = logsumexp_{k,j}( log w_k + log ω_j - β·E(m_k + sqrt(s_k)·z_j) )

    with a Gauss-Hermite rule (z_j, ω_j) of ``order`` nodes per dimension for each component's
    Gaussian expectation. The rule is exact for point masses (zero variances: one node is used)
    and converges geometrically for smooth E; for a linear E, order 8 agrees with the closed form
    :meth:`GaussianMixture.linear_log_potential` to float64 precision for β·‖w‖·sqrt(s) ≲ 2.
    Cost per call: B·K·order^d energy evaluations, so this suits low-dimensional data.
    ``cond`` (B, ...) is passed to ``energy(x0, cond)`` for every node of its row.
    """

    energy: Energy
    nodes: Tensor  # buffers
    log_weights: Tensor

    def __init__(
        self, mixture: GaussianMixture, energy: Energy, beta: float, *, order: int = 8, max_nodes: int = 4096
    ) -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be >= 0 (lower energy is better), got {beta}")
        self.mixture = mixture
        self.energy = energy
        self.beta = float(beta)
        if float(mixture.variances.max()) == 0:
            order = 1  # point masses: the expectation is the value at the mean
        if order**mixture.dim > max_nodes:
            raise ValueError(
                f"order {order} in dimension {mixture.dim} needs {order**mixture.dim} nodes per "
                f"component (max_nodes={max_nodes}); lower the order"
            )
        nodes, log_weights = gauss_hermite_rule(mixture.dim, order)
        self.register_buffer("nodes", nodes)
        self.register_buffer("log_weights", log_weights)

    def forward(
        self, x_t: Tensor, alpha: Tensor, sigma: Tensor, cond: Cond = None, *, prediction: object = None
    ) -> Tensor:
        batch = x_t.shape[0]
        alpha = torch.as_tensor(alpha).to(torch.float64).expand(batch)
        sigma = torch.as_tensor(sigma).to(torch.float64).expand(batch)
        w, means, variances = self.mixture.posterior(x_t.reshape(batch, -1), alpha, sigma)
        # x0 at every (row b, component k, node j): (B, K, Q, d)
        x0 = means[:, :, None, :] + variances.sqrt()[:, :, None, :] * self.nodes[None, None]
        k, q = x0.shape[1], x0.shape[2]
        c = None
        if cond is not None:
            if not isinstance(cond, Tensor):
                raise TypeError(f"cond must be a tensor (B, ...) or None, got {type(cond).__name__}")
            c = cond.repeat_interleave(k * q, dim=0)
        energies = call_energy(self.energy, x0.reshape(batch * k * q, -1).to(x_t.dtype), c)
        log_terms = (
            torch.log(w.clamp_min(1e-300))[:, :, None]
            + self.log_weights[None, None]
            - self.beta * energies.reshape(batch, k, q).to(torch.float64)
        )
        return -torch.logsumexp(log_terms.reshape(batch, -1), dim=1).to(x_t.dtype)
