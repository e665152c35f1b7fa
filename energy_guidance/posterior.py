"""The posterior variance of q(x0 | x_t) ≈ N(x̂0, Σ̂): the estimators and their table.

Tweedie's mean x̂0 = (x_t - σ_t·ε̂)/α_t comes from the model (:func:`~energy_guidance.schedulers.to_eps_x0`).
Every variance estimator is an object with one method, ``quadratic(g, alpha, sigma)`` = gᵀ Σ̂ g
with g = ∇E(x̄) (B, ...), which is all the closed form (:mod:`energy_guidance.closed_form`)
needs (:class:`VarianceEstimator`). Each has a name, accepted as a shortcut wherever an
estimator is (:func:`variance_estimator`):

:class:`EpsNorm`   ``"eps_norm"``   Σ̂ = σ²/α² · (1 - E‖ε̂‖²/d) · I            (paper, first estimator)
:class:`DataVar`   ``"data_var"``   Σ̂ = (Var(x0) - E‖x̂0 - E[x0]‖²/d) · I       (paper, second estimator)
:class:`Diagonal`  ``"diagonal"``   Σ̂ = diag_i(Var(x0_i) - E(x̂0_i - E[x0_i])²)  (per-dimension ``data_var``)
:class:`Jacobian`  ``"jacobian"``   Σ̂(x_t) = σ²/α² · (I - σ·∂ε̂/∂x_t)          (local, second-order Tweedie)
:class:`Constant`  a number ``c``  Σ̂ = c · I                                   (constant)

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
import operator
from dataclasses import dataclass
from typing import ClassVar, Protocol, TypeGuard, runtime_checkable

import torch
from torch import Tensor

from .callables import NoiseModel, call_model
from .checkpoints import load_tensors, save_tensors
from .schedulers import SchedulerLike, log_snr, noise_level, prediction_type, to_eps_x0, training_timesteps


@dataclass
class VarianceTable:
    """Marginal posterior variances per noise level, as fractions of σ²/α² (so in [0, 1]).

    Rows are sorted by log-SNR λ = log(α²/σ²); lookups interpolate linearly in λ, so a table
    built with one scheduler serves any other. Shapes: ``log_snr`` (L,), ``eps_norm`` (L,),
    ``data_var`` (L,), ``diagonal`` (L, d) with d the flattened sample size, the per-dimension
    data variance ``data_variance`` (d,), the upper bound of every marginal estimate, and the
    per-dimension data range ``data_low``, ``data_high`` (d,) (the default estimator's box,
    :mod:`energy_guidance.importance`), and for samples of up to :data:`MAX_COVARIANCE_DIM`
    values the data covariance's eigenvectors ``principal_axes`` (d, d, columns) and eigenvalues
    ``principal_variance`` (d,); ``samples`` (N, d), up to :data:`MAX_SAMPLES` of the data's
    samples, flattened (the default estimator's prior at high noise).
    """

    log_snr: Tensor
    eps_norm: Tensor
    data_var: Tensor
    diagonal: Tensor
    data_variance: Tensor | None = None
    data_low: Tensor | None = None
    data_high: Tensor | None = None
    principal_axes: Tensor | None = None
    principal_variance: Tensor | None = None
    samples: Tensor | None = None

    def ratio(self, method: str, lam: Tensor) -> Tensor:
        """Clamped Σ̂ / (σ²/α²) at log-SNR ``lam`` (B,): shape (B,), or (B, d) for ``diagonal``."""
        if method not in ("eps_norm", "data_var", "diagonal"):
            raise ValueError(f"table method must be eps_norm, data_var or diagonal, got {method!r}")
        self.require_levels()
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

    def require_levels(self) -> None:
        """Raise a one-line ValueError if the table holds no noise levels (``num_levels=0``)."""
        if len(self.log_snr) == 0:
            raise ValueError(
                "this VarianceTable holds no noise levels (built with num_levels=0, which only the default "
                "estimator can use, through its covariance); estimate_variance_table(scheduler, model, "
                "data) with num_levels >= 2 builds one that this variance can read"
            )

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
        optional = (
            "data_variance",
            "data_low",
            "data_high",
            "principal_axes",
            "principal_variance",
            "samples",
        )
        names = ("log_snr", *TABLE_METHODS, *(k for k in optional if getattr(self, k) is not None))
        save_tensors(
            path,
            {k: getattr(self, k) for k in names},
            metadata={"format": json.dumps({"kind": "VarianceTable", "version": 1})},
        )

    @classmethod
    def load(cls, path: str) -> VarianceTable:
        return cls(**load_tensors(path)[0])


MAX_COVARIANCE_DIM = 512  # the table keeps the full data covariance up to this sample size


def keeps_covariance(values: int) -> bool:
    """Whether a table of samples of ``values`` values keeps their covariance (the default
    estimator's Σ̂ then follows from it, and it reads no noise levels)."""
    return values <= MAX_COVARIANCE_DIM


MAX_SAMPLES = 1024  # the table keeps a random subset of at most this many of the data's samples


@torch.no_grad()
def estimate_variance_table(
    scheduler: SchedulerLike,
    model: NoiseModel,
    data: Tensor,
    cond: Tensor | None = None,
    *,
    num_levels: int = 64,
    batch_size: int = 4096,
    generator: torch.Generator | None = None,
) -> VarianceTable:
    """Estimate the marginal variances at ``num_levels`` training timesteps from ``data`` (N, ...).

    At each level, every data point is noised once (x_t = α·x0 + σ·ε) and passed through the
    model. ``cond`` (N, ...) is sliced along with ``data`` for conditional models.
    ``num_levels=0`` passes nothing through the model: the table then holds only what the data
    give (variance, range, covariance, samples), which is all the default estimator reads where
    the covariance is kept (samples of up to :data:`MAX_COVARIANCE_DIM` values); a closed-form
    variance that reads the levels refuses such a table (:meth:`VarianceTable.ratio`).
    """
    if data.shape[0] < 2:
        raise ValueError("estimating the variance table needs at least 2 data points")
    try:
        levels = operator.index(num_levels)
    except TypeError:
        levels = -1
    if not (levels == 0 or levels >= 2):
        raise ValueError(f"num_levels must be 0 (no noise levels) or an integer >= 2, got {num_levels!r}")
    if levels == 0 and not keeps_covariance(data[0].numel()):
        raise ValueError(
            f"num_levels=0 keeps no noise levels, and samples of {data[0].numel()} values (more than "
            f"{MAX_COVARIANCE_DIM}) keep no covariance either: every estimator reads the levels then; "
            "give num_levels >= 2"
        )
    ptype = prediction_type(scheduler)
    valid = training_timesteps(scheduler)
    timesteps = valid[torch.linspace(0, len(valid) - 1, levels).round().long().unique()]
    flat = data.reshape(data.shape[0], -1).to(torch.float64)
    mean, var = flat.mean(0).cpu(), flat.var(0).cpu()  # the sums below accumulate on the CPU
    d = flat.shape[1]
    axes = principal_variance = None
    if keeps_covariance(d):
        principal_variance, axes = torch.linalg.eigh(torch.cov(flat.T.cpu()).reshape(d, d))
        principal_variance = principal_variance.clamp(min=0)
    # the prior's samples first, so that a table with levels holds the same ones as one without
    samples = flat[_subset(len(flat), MAX_SAMPLES, generator)].float().cpu()
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
        diagonal=torch.stack([r[3] for r in rows]).float() if rows else torch.zeros(0, d),
        data_variance=var.float(),
        data_low=flat.min(0).values.float().cpu(),
        data_high=flat.max(0).values.float().cpu(),
        principal_axes=None if axes is None else axes.float(),
        principal_variance=None if principal_variance is None else principal_variance.float(),  # with axes
        samples=samples,
    )


def _subset(n: int, k: int, generator: torch.Generator | None) -> Tensor:
    """Indices of a random subset of min(n, k) of n rows."""
    device = generator.device if generator is not None else "cpu"
    return torch.randperm(n, generator=generator, device=device)[:k].cpu()


@runtime_checkable
class VarianceEstimator(Protocol):
    """An estimate Σ̂ of Cov[x0 | x_t], used only through the quadratic form gᵀ Σ̂ g.

    ``quadratic(g, alpha, sigma, eps_hat=, x_t=, create_graph=)`` -> (B,) for g (B, ...) and
    per-sample α, σ (B,). ``uses_model_graph`` says whether it needs ε̂ computed from x_t inside
    autograd (then ``eps_hat`` and ``x_t`` are given); the others ignore them.

    The second-order closed form, the Tweedie gradient and the Gaussian quadrature also need the
    matrix itself: ``covariance(alpha, sigma, dim=d, ...)`` -> (B, d) (a diagonal) or (B, d, d).
    All estimators here provide it; a new one needs it only for those.
    """

    @property
    def uses_model_graph(self) -> bool: ...

    def quadratic(
        self,
        g: Tensor,
        alpha: Tensor,
        sigma: Tensor,
        *,
        eps_hat: Tensor | None = None,
        x_t: Tensor | None = None,
        create_graph: bool = False,
    ) -> Tensor: ...


@runtime_checkable
class CovarianceEstimator(VarianceEstimator, Protocol):
    """A :class:`VarianceEstimator` that also gives the matrix: ``covariance(alpha, sigma, dim=d,
    ...)`` -> Σ̂ as (B, d) (a diagonal) or (B, d, d), what the second-order closed form, the Tweedie
    gradient and the quadrature read."""

    def covariance(
        self,
        alpha: Tensor,
        sigma: Tensor,
        *,
        dim: int,
        eps_hat: Tensor | None = None,
        x_t: Tensor | None = None,
        create_graph: bool = False,
    ) -> Tensor: ...


def has_covariance(variance: VarianceEstimator) -> TypeGuard[CovarianceEstimator]:
    """Whether ``variance`` gives the full covariance: it implements the declared
    :class:`CovarianceEstimator` protocol (a ``covariance`` method beside ``quadratic``)."""
    return isinstance(variance, CovarianceEstimator)


def full_covariance(variance: VarianceEstimator) -> CovarianceEstimator:
    """``variance`` as a :class:`CovarianceEstimator`, or a TypeError saying it gives none."""
    if not has_covariance(variance):
        raise TypeError(f"{type(variance).__name__} gives no covariance matrix (no covariance method)")
    return variance


def _flat(g: Tensor) -> tuple[Tensor, Tensor]:
    g = g.reshape(g.shape[0], -1)
    return g, g.pow(2).sum(1)


@dataclass(frozen=True)
class Constant:
    """Σ̂ = c·I (clamped to σ²/α²); ``Constant(0.0)`` drops the variance term (DPS-style guidance)."""

    value: float
    uses_model_graph: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not self.value >= 0:
            raise ValueError(f"a constant posterior variance must be >= 0, got {self.value}")

    def quadratic(self, g: Tensor, alpha: Tensor, sigma: Tensor, **_) -> Tensor:
        g, g_sq = _flat(g)
        return self._value(alpha.to(g), sigma.to(g)) * g_sq

    def covariance(self, alpha: Tensor, sigma: Tensor, *, dim: int, **_) -> Tensor:
        return self._value(alpha, sigma)[:, None].expand(-1, dim)

    def _value(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        scale = sigma**2 / alpha**2
        return torch.minimum(torch.full_like(scale, float(self.value)), scale)


@dataclass(frozen=True)
class _Tabulated:
    """A marginal estimator read from a :class:`VarianceTable` column (clamped as documented)."""

    table: VarianceTable
    column: ClassVar[str]
    uses_model_graph: ClassVar[bool] = False

    def quadratic(self, g: Tensor, alpha: Tensor, sigma: Tensor, **_) -> Tensor:
        g, g_sq = _flat(g)
        var = self.table.variance(self.column, alpha.to(g), sigma.to(g))
        return (var * g.pow(2)).sum(1) if var.dim() == 2 else var * g_sq

    def covariance(self, alpha: Tensor, sigma: Tensor, *, dim: int, **_) -> Tensor:
        var = self.table.variance(self.column, alpha, sigma)
        return var if var.dim() == 2 else var[:, None].expand(-1, dim)


class EpsNorm(_Tabulated):
    """Σ̂ = σ²/α² · (1 - E‖ε̂‖²/d) · I from a :class:`VarianceTable` (the paper's first estimator)."""

    column = "eps_norm"


class DataVar(_Tabulated):
    """Σ̂ = (Var(x0) - E‖x̂0 - E[x0]‖²/d) · I from a :class:`VarianceTable` (the paper's second)."""

    column = "data_var"


class Diagonal(_Tabulated):
    """Σ̂ = diag_i(Var(x0_i) - E(x̂0_i - E[x0_i])²) from a :class:`VarianceTable` (per dimension)."""

    column = "diagonal"


@dataclass(frozen=True)
class Jacobian:
    """Σ̂(x_t) = σ²/α² · (I - σ·∂ε̂/∂x_t): the local posterior covariance by second-order Tweedie.

    Exact for any data when ε̂ is the exact noise prediction; gᵀ(∂ε̂/∂x_t)g costs one
    vector-Jacobian product through the model, no d×d matrix.

    Clamped to [0, min(σ²/α², ``max_variance``)]: the quadratic form for the paper's closed form,
    the spectrum for the full covariance. A trained model's Jacobian can be orders of magnitude off
    at high noise (41 against 0.027 for the exact model of a 2-D mixture at t = 999), and σ²/α²
    bounds nothing there; ``max_variance``, e.g. the largest data variance, keeps Σ̂ on the data's
    scale (for the local posterior of multimodal data a stability choice, not an exact bound).
    """

    max_variance: float | None = None
    uses_model_graph: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.max_variance is not None and not self.max_variance > 0:
            raise ValueError(f"max_variance must be > 0, got {self.max_variance}")

    def _top(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        top = sigma**2 / alpha**2
        return top if self.max_variance is None else top.clamp(max=self.max_variance)

    def quadratic(
        self,
        g: Tensor,
        alpha: Tensor,
        sigma: Tensor,
        *,
        eps_hat: Tensor | None = None,
        x_t: Tensor | None = None,
        create_graph: bool = False,
    ) -> Tensor:
        if eps_hat is None or x_t is None:
            raise ValueError("the Jacobian variance needs eps_hat computed from x_t with autograd")
        g, g_sq = _flat(g)
        scale = (sigma**2 / alpha**2).to(g)
        (vjp,) = torch.autograd.grad(
            eps_hat, x_t, grad_outputs=g.reshape(eps_hat.shape), create_graph=create_graph
        )
        gjg = (vjp.reshape(g.shape) * g).sum(1)
        quad = scale * (g_sq - sigma.to(g) * gjg)
        return torch.minimum(quad.clamp(min=0), self._top(alpha, sigma).to(g) * g_sq)

    def covariance(
        self,
        alpha: Tensor,
        sigma: Tensor,
        *,
        dim: int,
        eps_hat: Tensor | None = None,
        x_t: Tensor | None = None,
        create_graph: bool = False,
    ) -> Tensor:
        """The full Σ̂ (B, d, d), from d vector-Jacobian products (meant for small d).

        Symmetrised (the exact ∂ε̂/∂x_t is symmetric). Without ``create_graph`` its eigenvalues
        are clamped to [0, min(σ²/α², max_variance)]; with it (differentiated through, for the
        autograd second-order form) a negative eigenvalue is lifted to 0 by adding a multiple of
        I, which keeps the gradient finite where eigenvalues coincide.
        """
        if eps_hat is None or x_t is None:
            raise ValueError("the Jacobian variance needs eps_hat computed from x_t with autograd")
        b = eps_hat.shape[0]
        rows = []
        for i in range(dim):
            onehot = torch.zeros(b, dim, dtype=eps_hat.dtype, device=eps_hat.device)
            onehot[:, i] = 1
            (row,) = torch.autograd.grad(
                eps_hat,
                x_t,
                grad_outputs=onehot.reshape(eps_hat.shape),
                create_graph=create_graph,
                retain_graph=True,
            )
            rows.append(row.reshape(b, dim))
        jac = torch.stack(rows, dim=1)
        scale = (sigma**2 / alpha**2).to(jac)[:, None, None]
        eye = torch.eye(dim, dtype=jac.dtype, device=jac.device)
        cov = scale * (eye - sigma.to(jac)[:, None, None] * 0.5 * (jac + jac.transpose(1, 2)))
        if create_graph:
            lift = (-torch.linalg.eigvalsh(cov.detach())[:, 0]).clamp(min=0)
            return cov + lift[:, None, None] * eye
        values, vectors = torch.linalg.eigh(cov)
        top = self._top(alpha, sigma).to(values)[:, None]
        values = torch.minimum(values.clamp(min=0), top)
        return vectors @ torch.diag_embed(values) @ vectors.transpose(1, 2)


# The string shortcuts; a table estimator is built with the table it is given.
VARIANCES: dict[str, type] = {
    "eps_norm": EpsNorm,
    "data_var": DataVar,
    "diagonal": Diagonal,
    "jacobian": Jacobian,
}
TABLE_METHODS = ("eps_norm", "data_var", "diagonal")


def variance_estimator(
    variance: VarianceEstimator | str | float, table: VarianceTable | None = None
) -> VarianceEstimator:
    """Resolve ``variance`` once: an estimator object is returned as is, a number c is
    :class:`Constant` (c), a name of :data:`VARIANCES` is that estimator (the table ones read
    ``table``)."""
    if isinstance(variance, bool):
        raise TypeError("variance must be an estimator, a name or a number, not a bool")
    if isinstance(variance, int | float):
        return Constant(float(variance))
    if isinstance(variance, str):
        if variance not in VARIANCES:
            raise ValueError(
                f"unknown posterior variance {variance!r}; use one of {tuple(VARIANCES)}, a number, "
                "or an estimator object"
            )
        if variance in TABLE_METHODS:
            if table is None:
                raise ValueError(
                    f"variance {variance!r} needs a VarianceTable; build one with "
                    "estimate_variance_table(scheduler, model, data)"
                )
            table.require_levels()
            return VARIANCES[variance](table)
        return VARIANCES[variance]()
    if not isinstance(variance, VarianceEstimator):
        raise TypeError(f"{type(variance).__name__} is not a variance estimator (it has no quadratic method)")
    return variance
