"""The Gaussian posterior q(x0 | x_t) ≈ N(x̂0, Σ̂): Tweedie's mean and the variance estimators.

Every estimator is used only through the quadratic form gᵀ Σ̂ g with g = ∇E(x̄) (B, ...),
which is all the closed form (:mod:`energy_guidance.closed_form`) needs. Available by name:

``"eps_norm"``   Σ̂ = σ²/α² · (1 - E‖ε̂‖²/d) · I            (paper, first estimator)
``"data_var"``   Σ̂ = (Var(x0) - E‖x̂0 - E[x0]‖²/d) · I       (paper, second estimator)
``"diagonal"``   Σ̂ = diag_i(Var(x0_i) - E(x̂0_i - E[x0_i])²)  (per-dimension ``data_var``)
``"jacobian"``   Σ̂(x_t) = σ²/α² · (I - σ·∂ε̂/∂x_t)          (local, second-order Tweedie)
a float ``c``    Σ̂ = c · I                                   (constant)

The first three are marginal: by the law of total variance they estimate E_{x_t}[Cov(x0 | x_t)]
at each noise level, with expectations over data noised to that level; they are computed once
and stored in a :class:`VarianceTable`. ``"jacobian"`` is exact for any data when ε̂ is the
exact noise prediction, and needs one vector-Jacobian product through the model per use.

Clamping: every estimate is clamped to [0, σ²/α²] (per dimension for ``diagonal``; for
``jacobian`` the quadratic form is clamped to [0, σ²/α²·‖g‖²]). Negative values come from Monte
Carlo noise or an imperfect model. The upper bound is the posterior variance of a flat prior
and bounds the marginal estimators exactly (E‖ε̂‖² ≥ 0); for multimodal data the local
posterior variance can exceed it between modes, so there the clamp is a stability choice.
The marginal estimators are also clamped to the data variance Var(x0) (per dimension for
``diagonal``, its mean otherwise), which bounds them exactly by the law of total variance
E[Cov(x0 | x_t)] = Cov(x0) - Cov(E[x0 | x_t]). This matters for ``eps_norm`` at high noise,
where σ²/α² is large and a small error in E‖ε̂‖² becomes a large variance.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .callables import call_model
from .schedules import log_snr, noise_level, prediction_type, to_eps_x0, training_timesteps

TABLE_METHODS = ("eps_norm", "data_var", "diagonal")
VARIANCE_METHODS = (*TABLE_METHODS, "jacobian")


def tweedie_mean(x_t: Tensor, eps_hat: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """x̂0 = E[x0 | x_t] = (x_t - σ_t·ε̂(x_t)) / α_t."""
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    return (x_t - sigma.reshape(shape) * eps_hat) / alpha.reshape(shape)


@dataclass
class VarianceTable:
    """Marginal posterior variances per noise level, as fractions of σ²/α² (so in [0, 1]).

    Rows are sorted by log-SNR λ = log(α²/σ²); lookups interpolate linearly in λ, so a table
    built with one scheduler serves any other. Shapes: ``log_snr`` (L,), ``eps_norm`` (L,),
    ``data_var`` (L,), ``diagonal`` (L, d) with d the flattened sample size, and the per-dimension
    data variance ``data_variance`` (d,), the upper bound of every marginal estimate.
    """

    log_snr: Tensor
    eps_norm: Tensor
    data_var: Tensor
    diagonal: Tensor
    data_variance: Tensor | None = None

    def ratio(self, method: str, lam: Tensor) -> Tensor:
        """Clamped Σ̂ / (σ²/α²) at log-SNR ``lam`` (B,): shape (B,), or (B, d) for ``diagonal``."""
        if method not in TABLE_METHODS:
            raise ValueError(f"table method must be one of {TABLE_METHODS}, got {method!r}")
        values = getattr(self, method)
        grid = self.log_snr.to(lam)
        lam = lam.clamp(grid[0], grid[-1])
        hi = torch.searchsorted(grid, lam.contiguous()).clamp(1, len(grid) - 1)
        lo = hi - 1
        w = ((lam - grid[lo]) / (grid[hi] - grid[lo])).clamp(0, 1)
        values = values.to(lam)
        if values.dim() == 2:
            w = w[:, None]
        return ((1 - w) * values[lo] + w * values[hi]).clamp(0, 1)

    def variance(self, method: str, alpha: Tensor, sigma: Tensor) -> Tensor:
        """Σ̂ at per-sample (α, σ) (B,): shape (B,), or (B, d) for ``diagonal``; clamped as documented."""
        scale = sigma**2 / alpha**2
        r = self.ratio(method, log_snr(alpha, sigma))
        if method == "diagonal":
            value = scale[:, None] * r
            bound = None if self.data_variance is None else self.data_variance.to(value)
        else:
            value = scale * r
            bound = None if self.data_variance is None else self.data_variance.mean().to(value)
        return value if bound is None else torch.minimum(value, bound)

    def save(self, path: str) -> None:
        names = ("log_snr", *TABLE_METHODS) + (() if self.data_variance is None else ("data_variance",))
        save_file(
            {k: getattr(self, k).contiguous() for k in names},
            path,
            metadata={"format": json.dumps({"kind": "VarianceTable", "version": 1})},
        )

    @classmethod
    def load(cls, path: str) -> VarianceTable:
        return cls(**load_file(path))


@torch.no_grad()
def estimate_variance_table(
    scheduler,
    model: Callable,
    data: Tensor,
    cond=None,
    *,
    num_levels: int = 64,
    batch_size: int = 4096,
    generator: torch.Generator | None = None,
) -> VarianceTable:
    """Estimate the marginal variances at ``num_levels`` training timesteps from ``data`` (N, ...).

    At each level, every data point is noised once (x_t = α·x0 + σ·ε) and passed through the
    model. ``cond`` (N, ...) is sliced along with ``data`` for conditional models.
    """
    if data.shape[0] < 2:
        raise ValueError("estimating the variance table needs at least 2 data points")
    ptype = prediction_type(scheduler)
    valid = training_timesteps(scheduler)
    timesteps = valid[torch.linspace(0, len(valid) - 1, num_levels).round().long().unique()]
    flat = data.reshape(data.shape[0], -1).to(torch.float64)
    mean, var = flat.mean(0), flat.var(0)
    d = flat.shape[1]
    rows = []
    for t in timesteps:
        alpha, sigma = noise_level(scheduler, t)
        eps_sq = torch.zeros(d, dtype=torch.float64)
        dev_sq = torch.zeros(d, dtype=torch.float64)
        for start in range(0, data.shape[0], batch_size):
            x0 = data[start : start + batch_size]
            c = None if cond is None else cond[start : start + batch_size]
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
            x_t = alpha.to(x0) * x0 + sigma.to(x0) * noise
            out = call_model(model, x_t, t.to(x0.device), c)
            eps_hat, x0_hat = to_eps_x0(out, x_t, alpha, sigma, ptype)
            eps_sq += eps_hat.reshape(len(x0), -1).double().pow(2).sum(0).cpu()
            dev_sq += (x0_hat.reshape(len(x0), -1).double().cpu() - mean).pow(2).sum(0)
        n = data.shape[0]
        scale = float(sigma**2 / alpha**2)
        rows.append(
            (
                float(log_snr(alpha, sigma)),
                1 - float(eps_sq.sum()) / (n * d),
                (float(var.mean()) - float(dev_sq.sum()) / (n * d)) / scale,
                (var - dev_sq / n) / scale,
            )
        )
    rows.sort(key=lambda r: r[0])
    return VarianceTable(
        log_snr=torch.tensor([r[0] for r in rows], dtype=torch.float32),
        eps_norm=torch.tensor([r[1] for r in rows], dtype=torch.float32),
        data_var=torch.tensor([r[2] for r in rows], dtype=torch.float32),
        diagonal=torch.stack([r[3] for r in rows]).float(),
        data_variance=var.float(),
    )


def check_variance(method: str | float, table: VarianceTable | None) -> None:
    """Raise a clear error for an unknown estimator, a negative constant or a missing table."""
    if isinstance(method, int | float):
        if method < 0:
            raise ValueError(f"a constant posterior variance must be >= 0, got {method}")
    elif method not in VARIANCE_METHODS:
        raise ValueError(f"unknown posterior variance {method!r}; use one of {VARIANCE_METHODS} or a float")
    elif method in TABLE_METHODS and table is None:
        raise ValueError(
            f"variance {method!r} needs a VarianceTable; build one with "
            "estimate_variance_table(scheduler, model, data)"
        )


def variance_quadratic(
    g: Tensor,
    method: str | float,
    alpha: Tensor,
    sigma: Tensor,
    *,
    table: VarianceTable | None = None,
    eps_hat: Tensor | None = None,
    x_t: Tensor | None = None,
    create_graph: bool = False,
) -> Tensor:
    """gᵀ Σ̂ g (B,) for g (B, ...) and per-sample α, σ (B,), clamped as described above.

    ``table`` is needed for the table methods; ``eps_hat`` (computed from ``x_t`` inside the
    autograd graph) for ``"jacobian"``.
    """
    g = g.reshape(g.shape[0], -1)
    scale = (sigma**2 / alpha**2).to(g)
    g_sq = g.pow(2).sum(1)
    if isinstance(method, int | float):
        if method < 0:
            raise ValueError(f"a constant posterior variance must be >= 0, got {method}")
        return torch.minimum(torch.full_like(scale, float(method)), scale) * g_sq
    if method in TABLE_METHODS:
        if table is None:
            raise ValueError(
                f"variance {method!r} needs a VarianceTable; build one with "
                "estimate_variance_table(scheduler, model, data)"
            )
        var = table.variance(method, alpha.to(g), sigma.to(g))
        if method == "diagonal":
            return (var * g.pow(2)).sum(1)
        return var * g_sq
    if method == "jacobian":
        if eps_hat is None or x_t is None:
            raise ValueError("variance 'jacobian' needs eps_hat computed from x_t with autograd")
        # gᵀ J g with J = ∂ε̂/∂x_t, from one vector-Jacobian product (no d×d matrix).
        (vjp,) = torch.autograd.grad(
            eps_hat, x_t, grad_outputs=g.reshape(eps_hat.shape), create_graph=create_graph
        )
        gjg = (vjp.reshape(g.shape) * g).sum(1)
        quad = scale * (g_sq - sigma.to(g) * gjg)
        return torch.minimum(quad.clamp(min=0), scale * g_sq)
    raise ValueError(f"unknown posterior variance {method!r}; use one of {VARIANCE_METHODS} or a float")
