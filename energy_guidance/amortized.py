"""Amortized mode: a small network E_Θ(x_t, λ, cond) regressed on closed-form targets.

Training pairs are built as in AEPO: draw x0 (and its condition) from data, a training
timestep t and noise ε, form x_t = α_t·x0 + σ_t·ε, and evaluate the closed form (1) with
the expansion point x̄ = x0 (the clean sample; ``expansion="posterior_mean"`` uses x̂0):

    target = β·E(x̄) + β·∇E(x̄)ᵀ(x̂0 - x̄) - ½·β²·∇E(x̄)ᵀ Σ̂ ∇E(x̄).

With x̄ = x0 the target is noisy given x_t and its regression E[target | x_t] is the closed
form at x̂0 only for a linear E: for a curved one it carries -½β·tr(H·Cov[x0 | x_t]) at first
order in β (docs/math.md, "Amortized mode"); in exchange E(x0) and ∇E(x0) are computed once per
data point, not per step.
Any training-free estimator can give the targets instead (``targets=``, :func:`estimator_batches`):
e.g. the Gaussian quadrature (7), evaluated at x̂0(x_t), one model call per target.
The network takes the noise level (α, σ) instead of t, so it serves any scheduler.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .callables import Cond, Energy, NoiseModel, call_model, energy_and_grad, energy_grad_hessian
from .checkpoints import load_tensors, save_tensors
from .closed_form import analytic_intermediate_energy, second_order_intermediate_energy
from .posterior import VarianceEstimator, VarianceTable, full_covariance, variance_estimator
from .protocols import AutogradGradient, IntermediateEnergyEstimator
from .schedulers import (
    Prediction,
    SchedulerLike,
    add_noise,
    log_snr,
    noise_level,
    prediction_type,
    to_eps_x0,
    training_timesteps,
)
from .training import History, fit


class IntermediateEnergyNet(AutogradGradient, nn.Module):
    """E_Θ(x_t, α, σ, cond) -> (B,): an MLP over [x̃_t, Fourier features of λ, cond].

    The network sees the noise level as λ = log(α²/σ²) and the input in variance-preserving
    form x̃_t = x_t / sqrt(α² + σ²), so one network serves VP, VE and flow-matching schedulers.
    It is an :class:`~energy_guidance.protocols.IntermediateEnergyEstimator` (no ``energy``, the
    model never differentiated; its gradient autograd's,
    :class:`~energy_guidance.protocols.AutogradGradient`).

    ``beta`` records the β of the targets it was trained on. Outputs are de-normalized with
    the target mean and scale measured before training, so the raw MLP works at unit scale.
    """

    frequencies: Tensor  # buffers
    target_mean: Tensor
    target_scale: Tensor

    def __init__(
        self,
        dim: int,
        cond_dim: int = 0,
        *,
        hidden: int = 256,
        depth: int = 3,
        num_frequencies: int = 8,
        beta: float = 1.0,
    ) -> None:
        super().__init__()
        self.config = {
            "dim": dim,
            "cond_dim": cond_dim,
            "hidden": hidden,
            "depth": depth,
            "num_frequencies": num_frequencies,
            "beta": beta,
        }
        self.beta = beta
        self.register_buffer("frequencies", 2.0 ** torch.arange(num_frequencies) / 16)
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_scale", torch.ones(()))
        width = dim + cond_dim + 1 + 2 * num_frequencies
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(
        self,
        x_t: Tensor,
        alpha: Tensor,
        sigma: Tensor,
        cond: Tensor | None = None,
        *,
        prediction: Prediction | None = None,
    ) -> Tensor:
        """E_Θ (B,); ``prediction`` is not read."""
        alpha = alpha.to(x_t).expand(x_t.shape[0])[:, None]
        sigma = sigma.to(x_t).expand(x_t.shape[0])[:, None]
        lam = log_snr(alpha, sigma).clamp(-40, 40)  # finite at σ = 0 or α = 0
        phase = lam * self.frequencies
        x_vp = x_t.flatten(1) / (alpha**2 + sigma**2).sqrt()
        parts = [x_vp, lam / 10, phase.sin(), phase.cos()]
        cond_dim = self.config["cond_dim"]
        if cond_dim:
            if cond is None or cond.flatten(1).shape[1] != cond_dim:
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(f"this network takes cond of {cond_dim} features per sample; got {got}")
            parts.append(cond.flatten(1).to(x_t))
        elif cond is not None:
            raise ValueError("this network was built with cond_dim=0 and would ignore cond; set cond_dim")
        out = self.mlp(torch.cat(parts, dim=1)).squeeze(1)
        return self.target_mean + self.target_scale * out

    def save(self, path: str | Path) -> None:
        """One checksummed safetensors file: weights, with the constructor config as JSON metadata."""
        save_tensors(path, self.state_dict(), metadata={"config": json.dumps(self.config)})

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> IntermediateEnergyNet:
        tensors, metadata = load_tensors(path, device)
        net = cls(**json.loads(metadata["config"]))
        net.load_state_dict(tensors)
        return net.to(device)


def closed_form_targets(
    scheduler: SchedulerLike,
    model: NoiseModel,
    x0: Tensor,
    timestep: Tensor,
    noise: Tensor,
    beta: float,
    *,
    cond: Cond = None,
    variance: VarianceEstimator | str | float = "jacobian",
    variance_table: VarianceTable | None = None,
    energy: Energy | None = None,
    energy_bar: Tensor | None = None,
    grad_bar: Tensor | None = None,
    hessian_bar: Tensor | None = None,
    order: int = 1,
) -> tuple[Tensor, Tensor]:
    """(x_t, target E_t) for clean samples x0 (B, ...) at per-sample ``timestep`` (B,).

    Expansion point: x̄ = x0 when ``energy_bar`` = E(x0) and ``grad_bar`` = ∇E(x0) (and for
    ``order=2`` ``hessian_bar`` = ∇²E(x0)) are given (precomputed), otherwise x̄ = x̂0 evaluated
    with ``energy``. ``order`` selects the closed form: 1, the paper's (1); 2, the second-order (3).
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")
    variance = variance_estimator(variance, variance_table)
    alpha, sigma = (c.to(x0) for c in noise_level(scheduler, timestep))
    x_t = add_noise(x0, noise, alpha, sigma)
    needs_graph = variance.uses_model_graph
    with torch.set_grad_enabled(needs_graph):
        x_in, (eps_hat, x0_hat) = _predict(scheduler, model, x_t, timestep, alpha, sigma, cond, needs_graph)
        if energy_bar is None:
            if energy is None:
                raise ValueError("give the energy (x̄ = x̂0), or energy_bar and grad_bar at x̄ = x0")
            if order == 2:
                energy_bar, grad_bar, hessian_bar = energy_grad_hessian(energy, x0_hat.detach(), cond)
            else:
                energy_bar, grad_bar = energy_and_grad(energy, x0_hat.detach(), cond)
            x_bar = x0_hat
        else:
            x_bar = x0
        if grad_bar is None:
            raise ValueError("energy_bar = E(x0) needs grad_bar = ∇E(x0)")
        if order == 2:
            if hessian_bar is None:
                raise ValueError("order=2 with energy_bar = E(x0) needs hessian_bar = ∇²E(x0)")
            d = grad_bar[0].numel()
            cov = full_covariance(variance).covariance(alpha, sigma, dim=d, eps_hat=eps_hat, x_t=x_in)
            target = second_order_intermediate_energy(
                beta, energy_bar, grad_bar, hessian_bar, cov, x0_hat, x_bar
            )
        else:
            quad = variance.quadratic(grad_bar, alpha, sigma, eps_hat=eps_hat, x_t=x_in)
            target = analytic_intermediate_energy(beta, energy_bar, grad_bar, quad, x0_hat, x_bar)
    return x_t, target.detach()


class TargetBatch(NamedTuple):
    """One regression batch: inputs x_t (B, ...), their noise levels α, σ (B,), conditions, targets (B,)."""

    x_t: Tensor
    alpha: Tensor
    sigma: Tensor
    cond: Tensor | None
    target: Tensor


def closed_form_batches(
    scheduler: SchedulerLike,
    model: NoiseModel,
    energy: Energy,
    data: Tensor,
    cond: Tensor | None = None,
    *,
    beta: float,
    variance: VarianceEstimator | str | float = "jacobian",
    variance_table: VarianceTable | None = None,
    expansion: str = "data",
    order: int = 1,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> Callable[[], TargetBatch]:
    """A function drawing :class:`TargetBatch` es of closed-form targets from ``data`` (N, ...).

    Each call draws data points (with their conditions ``cond`` (N, ...)), training timesteps
    uniformly and noise, all from ``generator``. ``expansion`` is ``"data"`` (x̄ = x0; E and ∇E
    (and ∇²E for ``order=2``) of the data are computed once, here) or ``"posterior_mean"``
    (x̄ = x̂0, evaluated per batch). ``order`` 1 is the paper's closed form, 2 the second-order one.
    """
    if expansion not in ("data", "posterior_mean"):
        raise ValueError(f"expansion must be 'data' or 'posterior_mean', got {expansion!r}")
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")
    variance = variance_estimator(variance, variance_table)
    n = data.shape[0]
    valid = training_timesteps(scheduler)
    pre_energy = pre_grad = pre_hessian = None
    if expansion == "data":
        derivatives = energy_grad_hessian if order == 2 else energy_and_grad
        chunks: list[tuple[Tensor, ...]] = [
            derivatives(energy, data[i : i + 4096], _rows(cond, slice(i, i + 4096)))
            for i in range(0, n, 4096)
        ]
        pre_energy = torch.cat([c[0] for c in chunks]).detach()
        pre_grad = torch.cat([c[1] for c in chunks]).detach()
        if order == 2:
            pre_hessian = torch.cat([c[2] for c in chunks]).detach()

    def draw() -> TargetBatch:
        idx, t, noise = _draw_noised(data, valid, batch_size, generator)
        x_t, target = closed_form_targets(
            scheduler,
            model,
            data[idx],
            t,
            noise,
            beta,
            cond=_rows(cond, idx),
            variance=variance,
            energy=energy,
            energy_bar=_rows(pre_energy, idx),
            grad_bar=_rows(pre_grad, idx),
            hessian_bar=_rows(pre_hessian, idx),
            order=order,
        )
        alpha, sigma = (c.to(x_t) for c in noise_level(scheduler, t))
        return TargetBatch(x_t, alpha, sigma, _rows(cond, idx), target)

    return draw


def estimator_batches(
    scheduler: SchedulerLike,
    model: NoiseModel,
    estimator: IntermediateEnergyEstimator,
    data: Tensor,
    cond: Tensor | None = None,
    *,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> Callable[[], TargetBatch]:
    """Like :func:`closed_form_batches`, with the targets E_t(x_t) of a training-free ``estimator``
    that reads the model's prediction (a :class:`~energy_guidance.GaussianQuadrature`, or a
    :class:`~energy_guidance.ClosedForm`, then at x̄ = x̂0): one model call per target."""
    if not isinstance(estimator, IntermediateEnergyEstimator) or estimator.energy is None:
        raise TypeError(
            f"estimator must be a training-free IntermediateEnergyEstimator (one with an energy), got "
            f"{type(estimator).__name__}"
        )
    valid = training_timesteps(scheduler)
    in_graph = estimator.model_derivatives > 0

    def draw() -> TargetBatch:
        idx, t, noise = _draw_noised(data, valid, batch_size, generator)
        alpha, sigma = (c.to(data) for c in noise_level(scheduler, t))
        x_t = add_noise(data[idx], noise, alpha, sigma)
        rows = _rows(cond, idx)
        with torch.set_grad_enabled(in_graph):
            x_in, prediction = _predict(scheduler, model, x_t, t, alpha, sigma, rows, in_graph)
            target = estimator(x_in, alpha, sigma, rows, prediction=prediction)
        return TargetBatch(x_t, alpha, sigma, rows, target.detach())

    return draw


def _predict(
    scheduler: SchedulerLike,
    model: NoiseModel,
    x_t: Tensor,
    timestep: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    cond: Cond,
    in_graph: bool,
) -> tuple[Tensor, Prediction]:
    """(x_t as the model's input, its prediction (ε̂, x̂0)); with ``in_graph`` the input requires
    grad, so a variance read from the model's graph can differentiate it (call under
    ``torch.set_grad_enabled(in_graph)``)."""
    x_in = x_t.detach().requires_grad_(in_graph)
    out = call_model(model, x_in, timestep.to(x_t.device), cond)
    return x_in, to_eps_x0(out, x_in, alpha, sigma, prediction_type(scheduler))


def _draw_noised(
    data: Tensor, valid: Tensor, batch_size: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Data rows, training timesteps (uniform over ``valid``) and noise for one batch."""
    idx = torch.randint(0, data.shape[0], (batch_size,), generator=generator).to(data.device)
    t = valid[torch.randint(0, len(valid), (batch_size,), generator=generator)].to(data.device)
    noise = torch.randn(data[idx].shape, generator=generator).to(data)
    return idx, t, noise


def _rows(values: Tensor | None, index) -> Tensor | None:
    return None if values is None else values[index]


@torch.no_grad()
def calibrate(network: IntermediateEnergyNet, draw: Callable[[], TargetBatch], batches: int = 8) -> None:
    """Set the network's output location and scale to those of the targets (once, before training)."""
    targets = torch.cat([draw().target for _ in range(batches)])
    network.target_mean.fill_(float(targets.mean()))
    network.target_scale.fill_(max(float(targets.std()), 1e-6))


def regression_loss(network: IntermediateEnergyNet, batch: TargetBatch) -> Tensor:
    """Mean squared error of E_Θ against the targets, in units of the target scale."""
    pred = network(batch.x_t, batch.alpha, batch.sigma, batch.cond)
    return ((pred - batch.target) / network.target_scale).pow(2).mean()


def train_intermediate_energy(
    network: IntermediateEnergyNet,
    scheduler: SchedulerLike,
    model: NoiseModel,
    energy: Energy,
    data: Tensor,
    cond: Tensor | None = None,
    *,
    variance: VarianceEstimator | str | float = "jacobian",
    variance_table: VarianceTable | None = None,
    expansion: str = "data",
    order: int = 1,
    targets: IntermediateEnergyEstimator | None = None,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-3,
    generator: torch.Generator | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    log: Callable[[int, dict[str, float]], None] | None = None,
) -> History:
    """Regress ``network`` on closed-form targets (β = ``network.beta``); returns the loss history.

    ``data`` (N, ...) are clean samples of the model's distribution (with conditions ``cond``
    (N, ...)); see :func:`closed_form_batches` for the targets, or give ``targets``, a training-free
    estimator at ``network.beta`` whose E_t are regressed instead (:func:`estimator_batches`; then
    ``energy``, ``variance``, ``expansion`` and ``order`` are unused). The optimisation is
    :func:`energy_guidance.training.fit` (Adam, cosine decay); with ``checkpoint_dir`` it is
    resumable (pass the same ``generator`` seed), and ``log(step, means)`` sees the history.
    """
    if targets is not None:
        if targets.beta is not None and float(targets.beta) != float(network.beta):
            raise ValueError(f"the targets are for beta={targets.beta}, the network for beta={network.beta}")
        draw = estimator_batches(
            scheduler, model, targets, data, cond, batch_size=batch_size, generator=generator
        )
    else:
        draw = closed_form_batches(
            scheduler,
            model,
            energy,
            data,
            cond,
            beta=network.beta,
            variance=variance,
            variance_table=variance_table,
            expansion=expansion,
            order=order,
            batch_size=batch_size,
            generator=generator,
        )
    calibrate(network, draw)  # a resumed run overwrites these buffers from its checkpoint
    return fit(
        network,
        lambda: regression_loss(network, draw()),
        steps=steps,
        lr=lr,
        generator=generator,
        checkpoint_dir=checkpoint_dir,
        name="intermediate_energy",
        progress=progress,
        log=log,
    )
