"""The default intermediate-energy estimator: importance sampling of the Gaussian posterior.

With the posterior approximated as N(x̂0, Σ̂), Σ̂ diagonal, the intermediate energy and the
tilted posterior mean are

    E_t(x_t) = -log E_{N(x̂0, Σ̂)}[exp(-β·E(x0))],
    m̃(x_t)  = E_{N(x̂0, Σ̂)}[x0·exp(-β·E(x0))] / exp(-E_t),                         (5)

and Stein's identity for the Gaussian gives ∇_{x̂0} E_t = -Σ̂⁻¹(m̃ - x̂0), so the Tweedie chain
rule ∂x̂0/∂x_t = (α/σ²)·Σ̂ (held fixed, as ``gradient="tweedie"`` of
:class:`~energy_guidance.closed_form.ClosedForm`) gives

    ∇_{x_t} E_t = -(α/σ²)·(m̃ - x̂0),                                             (6)

i.e. the guided x̂0 is the tilted posterior mean m̃. Both are estimated by self-normalised
importance sampling with M antithetic pairs of draws y = μ ± Σ̂^½·z from a proposal N(μ, Σ̂):

    w_j ∝ exp(-β·E(y_j)) · N(y_j; x̂0, Σ̂) / N(y_j; μ, Σ̂),   m̃ ≈ Σ_j w_j·y_j,
    E_t ≈ -log (1/2M) Σ_j exp(-β·E(y_j)) · N(y_j; x̂0, Σ̂) / N(y_j; μ, Σ̂).

The proposal's centre μ = x̂0 + Δ is one Newton step of the second-order closed form (3)
restricted to the direction u = Σ̂·g (g = ∇E(x̂0), κ = uᵀ∇²E u / uᵀΣ̂⁻¹u from one
Hessian-vector product, negative curvature treated as none):

    Δ = -τ·u,   τ = β / (1 + β·κ⁺),

which is the exact tilted mean for a linear E and for an isotropic quadratic E with Σ̂ = s·I.
The step is kept only where it decreases the proximal objective
½·ΔᵀΣ̂⁻¹Δ + β·(E(x̂0 + Δ) - E(x̂0)) by at least a quarter of its linear prediction (halved up to
six times, else no shift): an accepted step satisfies ½·ΔᵀΣ̂⁻¹Δ ≤ β·(E(x̂0) - E(x̂0 + Δ)), so
on a bounded energy it cannot overshoot. For a linear energy the weights are exactly equal, for
a quadratic nearly so; where the energy is a plateau with a steep step (no gradient at x̂0) the
proposal is the posterior itself and the draws find the step.

Why this, and not the paper's (1), is the default (docs/math.md, "the default estimator"):

- m̃ is a weighted average of the draws, so it stays within a few posterior standard
  deviations of μ whatever the energy's scale or β: no step can explode;
- no derivative passes through the model (a learned model's Jacobian can be orders of
  magnitude off at high noise), and the energy is differentiated once plus one
  Hessian-vector product, so the cost is one model call and 2M + 2 energy calls per step;
- it needs values and gradients of E only, not the expansion (1), whose variance term reverses
  the guidance once β·Σ̂·∇²E > 1.

A Gaussian posterior has one mode, so it cannot say how a tilt moves mass BETWEEN the data's
modes, which is decided at high noise, where the posterior spans several of them. There the
table's samples x0_1..x0_N (the data's, or the model's own from calibration) serve as the prior:
with k_i ∝ N(x_t; α·x0_i, σ²I) and k̃_i ∝ k_i·exp(-β·E(x0_i)) normalised over i,

    E_t^s = -log Σ_i k_i·exp(-β·E(x0_i)),      m̃^s = x̂0 + Σ_i (k̃_i - k_i)·x0_i,           (7)

the exact intermediate energy and the tilt's shift of the posterior mean under the samples'
empirical distribution (the shift is added to the model's x̂0, so that the model's mean, not the
samples', anchors it). Where few samples carry the tilted posterior this is no estimate at all,
so the two are blended by the tilted weights' Kish ESS n = 1/Σ k̃_i²:

    (E_t, m̃) = ρ·(E_t^s, m̃^s) + (1 - ρ)·(Gaussian E_t, m̃),   ρ = clip((n - 1)/(n* - 1), 0, 1),   (8)

n* = :data:`SAMPLE_ESS`: the samples decide at high noise and mild tilts, the Gaussian at low
noise and sharp tilts. The energies of the samples are computed once; a step costs a (B, N)
kernel matrix, formed in float64 and, for x0 other than float64 where every sample's energy is
finite and β·(max E - min E) over them is at most :data:`_SINGLE_SPREAD`, weighted in float32
(the bound: ``_samples_tilt``).
With a condition (``cond``) the samples are not the condition's own, and only the Gaussian is
used.

Where the tilt is too sharp for the samples, the Gaussian's covariance at high noise still holds
the distance between the modes, and its shift -β·Σ̂·∇E grows with β without bound. So the
Gaussian is taken per component of a mixture Σ_k π_k·N(μ_k, W) fitted to the same samples
(:mod:`energy_guidance.mixture`, one covariance W shared): with r_k ∝ π_k·N(x_t; α·μ_k, α²W + σ²I),
the components' posterior means m_k and covariance S = W(I + (α²/σ²)·W)⁻¹, (5) in each component
centred at c_k = m_k + x̂0 - Σ_j r_j·m_j gives E_t^(k) and m̃^(k), and

    E_t = -log Σ_k r_k·exp(-E_t^(k)),   m̃ = Σ_k r̃_k·m̃^(k),   r̃_k ∝ r_k·exp(-E_t^(k)),         (9)

exact for a linear E under the mixture; (8) blends this with (7). With one component (the BIC's
choice for unimodal samples) (9) is (5) with the data covariance C.

Σ̂ comes from a :class:`~energy_guidance.posterior.VarianceTable`. Where the table holds the
data covariance C (samples of up to 512 values), Σ̂ = C(I + (α²/σ²)·C)⁻¹, the posterior
covariance of Gaussian data with covariance C, so that the tilt follows the data's directions
(toward the modes the energy prefers) and not ∇E alone; the draws and the Newton step are
taken in C's eigenbasis, where Σ̂ is diagonal. Otherwise Σ̂ is the per-dimension marginal
posterior variance (the paper's second estimator, per dimension). The table also bounds m̃:
every posterior mean, tilted or not, lies in the convex hull of the data, so m̃ is clamped to
the table's data range (its box, widened by :data:`RANGE_MARGIN` of its width on each side).
Without a table from the user's data the guidance builds one from the model's own samples
(:func:`~energy_guidance.calibration.draw_pilot`).
"""

from __future__ import annotations

import logging
import math
import typing

import torch
from torch import Tensor

from .callables import Cond, Energy, NonFiniteError, call_energy, check_beta, energies_or_inf, energy_and_grad
from .mixture import MAX_COMPONENTS, TiedMixture, fit_tied_mixture
from .posterior import VarianceTable
from .schedulers import Prediction

logger = logging.getLogger(__name__)
T = typing.TypeVar("T")

RANGE_MARGIN = 0.25  # the data box is widened by this fraction of its width on each side
_BACKTRACKS = 6  # halvings of the Newton step before it is dropped
_ARMIJO = 0.25  # the fraction of the linear decrease an accepted step must achieve
_DRAW_SETS = 128  # sets of draws per noise level, shared by the samples that pick the same one
_BLOCK_ROWS = 128  # rows of every matrix product of (7), whatever the batch
_COMPONENT_FLOOR = 1e-12  # (9): components with r_k below this times the largest are left out
# (7)'s log-weights are clamped to this below their row's largest (_exp_rows): exp(2·floor), the
# square in the ESS, is still a normal number of the dtype (float32's smallest is about e^-87)
_EXP_FLOOR = {torch.float64: -300.0, torch.float32: -40.0}
# (7)'s weights are computed in float32 (for x0 other than float64) where every sample's energy is
# finite and β·(max E - min E) over them is at most this: every log-weight that a row's sums see
# is then within this + 40 of 0, so float32 keeps it to about 1e-4 (_samples_tilt)
_SINGLE_SPREAD = 1000.0
# M of (5): antithetic pairs of draws per sample and step. Centred on the Newton step, the draws
# only correct its proposal: 8 pairs gave samples as close to the target as 4 on the dimension
# sweep, at more cost (docs/benchmarks.md, "the default's cost, reconsidered")
NUM_PAIRS = 4
SAMPLE_ESS = 4.0  # n* of (8): the tilted samples' ESS from which (7) replaces the Gaussian (chosen)
# Above this ESS fraction of exp(-β·E) over the table's samples, importance resampling of unguided
# samples was closer to the target at equal cost in most settings of the dimension sweep
# (docs/benchmarks.md, "which sampler the tilt's ESS points to"); the guidance then says so, once.
MILD_TILT_ESS = 0.1


class _SamplePrior(typing.NamedTuple):
    """(7)'s prior from a table's samples (N, d), computed once per table, energy, β, device and
    dtype.

    source:   the table's samples tensor (to tell tables apart).
    energy:   the energy, and beta the β, it was computed with.
    dtype:    the dtype of the x0 it was built for (the energies were evaluated in it).
    kernel:   (d + 1, N) float64, [x0_i, ‖x0_i‖²] as columns: log k is one product with it.
    working:  (N, d) the samples in the working dtype of (7)'s weights (float32 or float64).
    tilt:     (N,) β·(E_i - min E) in the working dtype, ≥ 0, +inf outside the energy's domain.
    offset:   β·min E (a float): E_t^s = offset + log Σ k_i - log Σ k_i·exp(-tilt_i).
    """

    source: Tensor
    energy: Energy
    beta: float
    dtype: torch.dtype
    kernel: Tensor
    working: Tensor
    tilt: Tensor
    offset: float


class ImportanceTilt:
    """E_t and the tilted posterior mean (5) by importance sampling (module docstring).

    ``ImportanceTilt(energy, beta, table=None, num_pairs=NUM_PAIRS)``: ``energy(x0[, cond])`` -> (B,),
    differentiable; β ≥ 0; ``table`` a :class:`~energy_guidance.posterior.VarianceTable` with the
    data's range (``estimate_variance_table`` records it), or None until the guidance that uses
    it calibrates it from the model (:attr:`table` is then set once and shared by every
    :meth:`~energy_guidance.AnalyticEnergyGuidance.replace` copy); ``num_pairs`` M antithetic
    pairs of draws per sample and step; ``seed`` seeds the draws; ``max_components`` the most
    components of the mixture (9) fitted to the table's samples (1: the single Gaussian (5) of
    the data covariance, as before (9)).
    """

    model_derivatives = 0  # the model is never differentiated (IntermediateEnergyEstimator)

    def __init__(
        self,
        energy: Energy,
        beta: float,
        table: VarianceTable | None = None,
        *,
        num_pairs: int = NUM_PAIRS,
        seed: int = 0,
        max_components: int = MAX_COMPONENTS,
    ) -> None:
        if not (isinstance(num_pairs, int) and num_pairs >= 1):
            raise ValueError(f"num_pairs must be an integer >= 1, got {num_pairs!r}")
        if not (isinstance(max_components, int) and max_components >= 1):
            raise ValueError(f"max_components must be an integer >= 1, got {max_components!r}")
        self.energy = energy
        self.beta = check_beta(beta)
        self.table = table
        self.num_pairs = num_pairs
        self.seed = int(seed)
        self.max_components = max_components
        self._samples: _SamplePrior | None = None  # (7)'s samples and energies, once per table
        self._fit: tuple[Tensor, TiedMixture | None] | None = None  # (table.samples, its mixture (9))
        self._gradient_checked: Energy | None = None  # the energy whose gradient was checked at x̂0

    def __call__(
        self,
        x_t: Tensor,
        alpha: Tensor,
        sigma: Tensor,
        cond: Cond = None,
        *,
        prediction: Prediction | None = None,
    ) -> Tensor:
        """E_t (B,)."""
        return self.value_and_x_t_gradient(x_t, alpha, sigma, cond, prediction=prediction)[0]

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
        """(E_t (B,), ∇_{x_t} E_t (6) shaped like x_t) from one set of draws (both, whatever
        ``with_value``)."""
        if prediction is None:
            raise TypeError("ImportanceTilt reads the model's prediction: pass prediction=(ε̂, x̂0)")
        table = self.table
        if table is None:
            raise RuntimeError(
                "ImportanceTilt has no VarianceTable: give table= (estimate_variance_table(scheduler, model, "
                "data)) or use it through AnalyticEnergyGuidance, which calibrates it from the model"
            )
        x0 = prediction.x0.detach()
        b, d = x0.shape[0], x0[0].numel()
        xf = x0.reshape(b, d)
        mixture = self._mixture(table, x0) if cond is None else None
        frame, var = self._posterior(table, alpha.to(xf), sigma.to(xf), b, d, mixture)
        live = (var > 0).any(1) & (self.beta > 0)
        if not bool(live.any()):
            return torch.zeros(b, dtype=xf.dtype, device=xf.device), torch.zeros_like(x0)
        # a dimension with Σ̂ = 0 (a constant pixel, the last step) does not move; a row with none
        # left is unguided
        var = torch.where(live[:, None], var.clamp_min(torch.finfo(var.dtype).tiny), torch.ones_like(var))
        if table.samples is None or cond is not None:  # (5) alone (mixture is None here)
            draws = _Draws.of_step(x_t, sigma, self.num_pairs, d, self.seed, xf.dtype)
            value, mean = self._gaussian(x_t, alpha, sigma, x0, var, frame, cond, draws, mixture)
        else:
            # (7) and (9) evaluate the energy elsewhere than at the model's x̂0, and (8) may leave
            # (5) out: the energy is checked at x̂0 first, so a bad energy is named at the batch's
            # own samples, at the step where it fails, whatever the blend makes of them. Its
            # gradient is checked there at the first call with this energy (a non-differentiable
            # energy is named at the first step); after that where a Newton step of (9) or (5)
            # reads it (a row that (7) settles alone does not read it).
            if self._gradient_checked is self.energy:
                with torch.no_grad():
                    call_energy(self.energy, x0)
            else:
                energy_and_grad(self.energy, x0)
                self._gradient_checked = self.energy
            value_s, mean_s, weight = self._samples_tilt(table.samples, x_t, alpha, sigma, x0)
            # (5) or (9) where (8) gives it a weight: rows that the samples settle alone skip it
            value, mean = torch.zeros_like(value_s), xf.clone()
            rows = (live & (weight < 1)).nonzero().squeeze(1)
            if len(rows) > 0:
                draws = _Draws.of_step(x_t, sigma, self.num_pairs, d, self.seed, xf.dtype)
                if len(rows) == b:
                    value, mean = self._gaussian(x_t, alpha, sigma, x0, var, frame, None, draws, mixture)
                else:
                    value[rows], mean[rows] = self._gaussian(
                        x_t, alpha, sigma, x0, var, frame, None, draws, mixture, rows
                    )
            value = weight * value_s + (1 - weight) * value
            mean = weight[:, None] * mean_s + (1 - weight[:, None]) * mean
        target = self._within_range(table, mean, xf)
        delta = torch.where(live[:, None], target - xf, torch.zeros_like(xf))
        value = torch.where(live, value, torch.zeros_like(value))
        scale = (alpha / sigma**2).to(xf)[:, None]
        return value, (-scale * delta).reshape(x0.shape)

    def _posterior(
        self, table: VarianceTable, alpha: Tensor, sigma: Tensor, b: int, d: int, mixture: TiedMixture | None
    ) -> tuple[Tensor | None, Tensor]:
        """(V, the eigenvalues of Σ̂ (B, d)) with Σ̂ = V·diag(·)·Vᵀ, or (None, the diagonal of Σ̂).

        With the data covariance C = V·diag(λ)·Vᵀ in the table (samples of up to
        ``MAX_COVARIANCE_DIM`` values), Σ̂ = C(I + (α²/σ²)·C)⁻¹, the posterior covariance of Gaussian
        data with covariance C: it points the tilt along the data's own directions (toward the
        modes the energy prefers), where a diagonal Σ̂ points it along ∇E only (docs/math.md).
        Otherwise Σ̂ is the table's per-dimension marginal variance (:meth:`_variance`). With a
        ``mixture`` prior (9), W, its components' shared covariance, takes C's place."""
        axes, lam = table.principal_axes, table.principal_variance
        if mixture is not None:
            axes, lam = mixture.axes, mixture.variance
        if axes is None or lam is None:
            return None, self._variance(table, alpha, sigma, b, d)
        if axes.shape != (d, d):
            raise ValueError(f"the VarianceTable is for samples of {axes.shape[0]} values, these have {d}")
        axes, lam = axes.to(alpha), lam.to(alpha)
        return axes, lam[None] / (1 + (alpha**2 / sigma**2)[:, None] * lam[None])

    def _variance(self, table: VarianceTable, alpha: Tensor, sigma: Tensor, b: int, d: int) -> Tensor:
        """Σ̂ (B, d): the table's per-dimension marginal variance; where that estimate is 0 (it is a
        difference Var(x0) - Var(x̂0) that rounding and model error push below 0 at high noise), the
        posterior variance of Gaussian data of the same variance, (1/Var(x0) + α²/σ²)⁻¹."""
        var = table.variance("diagonal", alpha, sigma)
        var = var if var.dim() == 2 else var[:, None].expand(b, d)
        if var.shape[1] != d:
            raise ValueError(f"the VarianceTable is for samples of {var.shape[1]} values, these have {d}")
        data = table.data_variance
        if data is None:
            return var
        gaussian = 1 / (1 / data.to(var).reshape(1, -1) + (alpha**2 / sigma**2)[:, None])
        return torch.where(var > 0, var, gaussian)

    def _newton_shift(
        self, x0: Tensor, xf: Tensor, var: Tensor, frame: Tensor | None, cond: Cond
    ) -> tuple[Tensor, Tensor]:
        """(Δ (B, d), the safeguarded Newton step along Σ̂·g (module docstring); the proximal
        objective at it (B,), β·E(x̂0 + Δ) + ½·ΔᵀΣ̂⁻¹Δ: the Laplace estimate of E_t without its
        curvature term, exact for a linear E)."""
        b, d = xf.shape
        with torch.enable_grad():
            x = x0.detach().requires_grad_(True)
            e0, grad = energy_and_grad(self.energy, x, cond, create_graph=True)
            g = grad.reshape(b, d)
            g_frame = g.detach() if frame is None else g.detach() @ frame
            u_frame = var * g_frame  # Σ̂g in Σ̂'s eigenbasis
            u = u_frame if frame is None else u_frame @ frame.T
            hu = None
            if g.requires_grad:  # a linear energy has no curvature
                (hu,) = torch.autograd.grad((g * u).sum(), x, allow_unused=True)
        e0, g = e0.detach(), g.detach()
        q = (g_frame * u_frame).sum(1)  # gᵀΣ̂g = uᵀΣ̂⁻¹u
        curvature = torch.zeros_like(q) if hu is None else (hu.reshape(b, d) * u).sum(1)
        beta = self.beta
        tau = beta * q / (q + beta * curvature.clamp(min=0)).clamp_min(torch.finfo(q.dtype).tiny)
        tau = torch.where(q > 0, tau, torch.zeros_like(tau))
        shift = torch.zeros_like(xf)
        proximal = beta * e0
        pending = q > 0
        for _ in range(_BACKTRACKS + 1):
            if not bool(pending.any()):
                break
            step = -tau[:, None] * u
            with torch.no_grad():
                e1 = call_energy(self.energy, (xf + step).reshape(x0.shape), cond)
            objective = 0.5 * tau**2 * (u_frame * u_frame / var).sum(1) + beta * (e1 - e0)
            ok = pending & (objective <= -_ARMIJO * tau * beta * q)
            shift = torch.where(ok[:, None], step, shift)
            proximal = torch.where(ok, beta * e0 + objective, proximal)
            pending = pending & ~ok
            tau = tau * 0.5
        return shift, proximal

    def _tilt(
        self,
        x0: Tensor,
        xf: Tensor,
        var: Tensor,
        frame: Tensor | None,
        shift: Tensor,
        cond: Cond,
        draws: _Draws,
        pairs: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(E_t (B,), m̃ (B, d)) by importance sampling from N(x̂0 + Δ, Σ̂) with ``pairs``
        antithetic pairs (default ``num_pairs``), row b's from ``draws``' set ``choice[b]``."""
        b = len(xf)
        m = self.num_pairs if pairs is None else pairs
        std = var.sqrt()
        z = draws.normals(m)
        spread = std[None] * z  # Σ̂^½·z in Σ̂'s eigenbasis; the draws are centre ± spread (antithetic)
        if frame is not None:
            spread = spread @ frame.T
        centre = xf + shift
        points = torch.cat([centre[None] + spread, centre[None] - spread])  # (2M, B, d)
        with torch.no_grad():
            try:
                energies = call_energy(
                    self.energy, points.reshape(2 * m * b, *x0.shape[1:]), _repeat(cond, 2 * m, b)
                ).reshape(2 * m, b)
            except NonFiniteError as error:  # name the samples whose draws failed, not the draws
                error.bad = error.bad.reshape(2 * m, b).any(0)
                raise
        # log N(y; x̂0, Σ̂) - log N(y; x̂0 + Δ, Σ̂) with y - x̂0 - Δ = ±Σ̂^½·z
        shift_frame = shift if frame is None else shift @ frame
        linear = torch.einsum("mbd,bd->mb", z, shift_frame / std)
        log_ratio = -0.5 * (shift_frame**2 / var).sum(1)[None] - torch.cat([linear, -linear])
        log_w = -self.beta * energies.to(xf.dtype) + log_ratio
        value = -(torch.logsumexp(log_w, 0) - math.log(2 * m))
        weights = torch.softmax(log_w, 0)
        return value, centre + torch.einsum("mb,mbd->bd", weights[:m] - weights[m:], spread)

    def _gaussian(
        self,
        x_t: Tensor,
        alpha: Tensor,
        sigma: Tensor,
        x0: Tensor,
        var: Tensor,
        frame: Tensor | None,
        cond: Cond,
        draws: _Draws,
        mixture: TiedMixture | None,
        only: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(E_t, m̃) of the Gaussian posterior (5), or under the mixture prior (9), for the batch's
        rows ``only`` (no cond; its NonFiniteError then names the batch's samples) or all: (B,), (B, d).

        Under (9): (5) in each component's posterior N(c_k, S), centred at c_k = m_k + x̂0 -
        Σ_j r_j·m_j (anchored on the model's x̂0), and the components reweighted by their tilts.
        Components with r_k below
        :data:`_COMPONENT_FLOOR` times the largest are left out, and then those whose tilted weight
        by the Newton step's estimate falls below it; each of the n components a row keeps takes the
        first M // n pairs (at least one) of the row's set: the same draws, around each component's
        own centre (the row's cost stays about M pairs). A component whose centre or draws fall
        outside the energy's domain (non-finite values) gets weight 0, as a sample does in (7) (there
        up to the floor of :func:`_exp_rows`); a
        row left with none takes (5) with S around x̂0, whose failures are the sample's own."""
        if only is not None:
            subset = (x_t[only], alpha[only], sigma[only], x0[only], var[only])
            try:
                return self._gaussian(*subset, frame, None, draws.rows(only), mixture)
            except NonFiniteError as error:
                error.bad = _widen_mask(error.bad, only, len(x0))
                raise
        b = len(x0)
        xf = x0.reshape(b, -1)
        if mixture is None:
            shift, _ = self._newton_shift(x0, xf, var, frame, cond)
            return self._tilt(x0, xf, var, frame, shift, cond, draws)
        xt = x_t.detach().reshape(b, -1).to(mixture.means)
        a, s = alpha.to(xt), sigma.to(xt)
        log_r = mixture.log_responsibilities(xt, a, s)  # (B, K)
        active = log_r >= log_r.amax(1, keepdim=True) + math.log(_COMPONENT_FLOOR)
        rows, comps = active.nonzero(as_tuple=True)
        centres = (xf[rows].to(xt) + mixture.mean_offsets(log_r, a, s, rows, comps)).to(xf.dtype)  # (P, d)
        shaped = centres.reshape(len(centres), *x0.shape[1:])
        found, newton = _without_nonfinite(
            lambda i: self._newton_shift(shaped[i], centres[i], var[rows[i]], frame, None),
            len(rows),
            rows.device,
        )
        if newton is None:  # every component's centre outside the energy's domain
            return self._gaussian(x_t, alpha, sigma, x0, var, frame, None, draws, None)
        rows, comps, centres, shaped = rows[found], comps[found], centres[found], shaped[found]
        shift, proximal = newton
        # the draws only where the Newton step's estimate leaves the component a weight of at
        # least _COMPONENT_FLOOR times the row's largest (exact for a linear E)
        score = log_r[rows, comps].to(proximal) - proximal
        best = torch.full((b,), -math.inf, dtype=score.dtype, device=score.device)
        best = best.scatter_reduce(0, rows, score, reduce="amax")
        kept = score >= best[rows] + math.log(_COMPONENT_FLOOR)
        rows, comps, centres, shift = rows[kept], comps[kept], centres[kept], shift[kept]
        shaped = centres.reshape(len(centres), *x0.shape[1:])
        count = torch.bincount(rows, minlength=b)[rows]  # the components each pair's row keeps
        values = torch.full_like(proximal[kept], math.inf)  # +inf: no weight (outside the domain)
        tilted = torch.zeros_like(centres)
        for n in torch.unique(count).tolist():
            group = (count == n).nonzero().squeeze(1)

            def tilt(i: Tensor, group: Tensor = group, n: int = n) -> tuple[Tensor, Tensor]:
                pairs = group[i]
                return self._tilt(
                    shaped[pairs],
                    centres[pairs],
                    var[rows[pairs]],
                    frame,
                    shift[pairs],
                    None,
                    draws.rows(rows[pairs]),
                    pairs=max(1, self.num_pairs // n),
                )

            found, result = _without_nonfinite(tilt, len(group), group.device)
            if result is not None:
                values[group[found]], tilted[group[found]] = result
        log_tilt = torch.full_like(log_r, -math.inf)
        log_tilt[rows, comps] = log_r[rows, comps] - values.to(xt)
        value = -torch.logsumexp(log_tilt, 1)
        weights = torch.nan_to_num(torch.softmax(log_tilt, 1), nan=0.0)[rows, comps]
        mean = torch.zeros_like(xt).index_add_(0, rows, weights[:, None] * tilted.to(xt))
        value, mean = value.to(xf.dtype), mean.to(xf.dtype)
        lost = (~torch.isfinite(value)).nonzero().squeeze(1)  # rows with no component left
        if len(lost) > 0:
            value[lost], mean[lost] = self._gaussian(
                x_t, alpha, sigma, x0, var, frame, None, draws, None, lost
            )
        return value, mean

    def _mixture(self, table: VarianceTable, x0: Tensor) -> TiedMixture | None:
        """The tied mixture (9) fitted to the table's samples, on x0's device, once per table; None
        where the table has no samples or no covariance (d above ``MAX_COVARIANCE_DIM``), or where
        one component fits best (the single Gaussian of C is then used, as before)."""
        source = table.samples
        if source is None or table.principal_axes is None or self.max_components == 1:
            return None
        if self._fit is None or self._fit[0] is not source:
            fitted = fit_tied_mixture(source, self.max_components)
            self._fit = (source, None if fitted.num_components == 1 else fitted)
        mixture = self._fit[1]
        if mixture is not None and mixture.means.device != x0.device:
            mixture = mixture.to(x0.device)
            self._fit = (source, mixture)
        return mixture

    def _samples_tilt(
        self, source: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor, x0: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(E_t^s (B,), m̃^s (B, d), ρ (B,)): (7) with the table's samples ``source`` (N, d) as the
        prior, and its weight ρ in the blend (8).

        log k is formed in float64 and taken relative to each row's largest. The rest runs in the
        prior's working dtype: float32 where x0 is not float64, every sample's energy is finite,
        and the tilt's spread over the samples, β·(max E - min E), is at most
        :data:`_SINGLE_SPREAD`. There every log-weight that a row's sums see lies within that
        spread plus 40 of 0: the tilted row's largest is at least -spread (the kernel's own
        largest entry, 0, tilted by at most the spread), and entries more than 40 below it are
        clamped (:func:`_exp_rows`); so float32 holds them to a few units in 1e-4, far below the
        Monte Carlo error of N samples. (With a sample outside the energy's domain, the kernel's
        largest entry may be that sample's, and the others' log-weights of the order of
        ‖x_t‖²/σ² before the tilted row's largest is taken out: float64 then.)"""
        prior = self._samples_and_energies(source, x0)
        xt = x_t.detach().reshape(len(x_t), -1).to(torch.float64)
        a, s2 = alpha.to(xt), sigma.to(xt) ** 2
        # log k_i = -‖x_t − α·x0_i‖²/(2σ²) up to a row constant (which (7) does not see), as one
        # product in fixed blocks of rows (_blocked_matmul): [α·x_t/σ², −α²/(2σ²)]·[x0_i, ‖x0_i‖²]ᵀ.
        # The two (B, N) matrices are exponentiated in place: a fresh allocation of that size costs
        # as much as the arithmetic on it.
        scaled = torch.cat([xt * (a / s2)[:, None], (-0.5 * a**2 / s2)[:, None]], 1)
        log_k = _blocked_matmul(scaled, prior.kernel)  # (B, N)
        # relative to each row's largest before β·E enters: log k is of the order of ‖x_t‖²/σ²,
        # and E_t^s below is a difference of the two log-sums
        log_k.sub_(log_k.amax(1, keepdim=True))  # finite: x_t and the samples are
        log_k = log_k.to(prior.tilt.dtype)
        log_tilted = log_k - prior.tilt[None]  # -inf outside the energy's domain
        k, log_norm, k_total = _exp_rows(log_k, centred=True)
        tilted, log_norm_tilted, tilted_total = _exp_rows(log_tilted)
        # a row whose samples all have infinite energy has no tilted weights: it keeps the Gaussian
        found = torch.isfinite(log_norm_tilted)
        difference = (log_norm - log_norm_tilted).to(torch.float64)
        value_s = torch.where(found, prior.offset + difference, torch.zeros_like(difference))
        # Σ_i (k̃_i − k_i)·x0_i (B, d), and the tilted weights' Kish ESS (Σ k̃_i)²/Σ k̃_i²
        shift_s = _blocked_matmul(tilted, prior.working) / tilted_total[:, None]
        shift_s = shift_s - _blocked_matmul(k, prior.working) / k_total[:, None]
        shift_s = torch.where(found[:, None], shift_s, torch.zeros_like(shift_s))
        ess = tilted_total**2 / torch.linalg.vector_norm(tilted, dim=1) ** 2
        ess = torch.where(found, ess, torch.zeros_like(ess))
        weight = ((ess - 1) / (SAMPLE_ESS - 1)).clamp(0, 1)
        mean_s = x0.reshape(len(x0), -1).to(shift_s) + shift_s
        return value_s.to(x0.dtype), mean_s.to(x0.dtype), weight.to(x0.dtype)

    def _samples_and_energies(self, source: Tensor, x0: Tensor) -> _SamplePrior:
        """The table's samples as (7)'s prior (:class:`_SamplePrior`) on x0's device, computed once
        per table, energy, β, device and dtype of x0 (the energies are evaluated in it); a sample where the
        energy is not finite gets energy +inf (weight 0 up to the floor of :func:`_exp_rows`:
        exp(-300) of its row's largest)."""
        cached = self._samples
        if (
            cached is None
            or cached.source is not source
            or cached.energy is not self.energy
            or cached.beta != self.beta
            or cached.kernel.device != x0.device
            or cached.dtype != x0.dtype
        ):
            samples = source.to(device=x0.device, dtype=torch.float64)
            energies = energies_or_inf(self.energy, samples.to(x0.dtype).reshape(len(samples), *x0.shape[1:]))
            finite = energies[torch.isfinite(energies)]
            lowest = float(finite.min()) if len(finite) else 0.0
            tilt = self.beta * (energies - lowest)  # ≥ 0; +inf outside the energy's domain
            spread = float(tilt[torch.isfinite(tilt)].max()) if len(finite) else 0.0
            single = x0.dtype != torch.float64 and len(finite) == len(energies) and spread <= _SINGLE_SPREAD
            work = torch.float32 if single else torch.float64
            cached = _SamplePrior(
                source,
                self.energy,
                self.beta,
                x0.dtype,
                torch.cat([samples, samples.square().sum(1, keepdim=True)], 1).T.contiguous(),
                samples.to(work),
                tilt.to(work),
                self.beta * lowest,
            )
            self._samples = cached
            # imported here: energy_guidance.baselines imports the guidance, which imports this module
            from .baselines.resampling import effective_sample_size

            fraction = float(effective_sample_size(-self.beta * energies)) / len(energies)
            if fraction >= MILD_TILT_ESS:
                logger.info(
                    "the tilt is mild: exp(-β·E) keeps an ESS of %.0f%% of the %d samples of the "
                    "variance table; importance resampling of unguided samples is usually closer to "
                    "the target at the same cost, and energy_guidance.tilted_sample picks it by this "
                    "rule (README, 'Which sampler to call')",
                    100 * fraction,
                    len(energies),
                )
        return cached

    def _within_range(self, table: VarianceTable, mean: Tensor, xf: Tensor) -> Tensor:
        """m̃ clamped to the data's box (widened by :data:`RANGE_MARGIN`); a coordinate of x̂0
        already outside the box may move back toward it but not further out."""
        low, high = table.data_low, table.data_high
        if low is None or high is None:
            return mean
        low, high = low.to(mean).reshape(1, -1), high.to(mean).reshape(1, -1)
        width = high - low
        low, high = low - RANGE_MARGIN * width, high + RANGE_MARGIN * width
        return torch.minimum(torch.maximum(mean, torch.minimum(low, xf)), torch.maximum(high, xf))


def _without_nonfinite(
    fn: typing.Callable[[Tensor], T], n: int, device: torch.device
) -> tuple[Tensor, T | None]:
    """(the indices of 0..n-1 kept, ``fn(kept)``): ``fn`` is called again on fewer indices each time
    it raises a NonFiniteError, without those its ``bad`` mask names; (empty, None) if none is left."""
    kept = torch.arange(n, device=device)
    while len(kept) > 0:
        try:
            return kept, fn(kept)
        except NonFiniteError as error:
            kept = kept[~error.bad.to(device)]
    return kept, None


def _widen_mask(bad: Tensor, rows: Tensor, batch: int) -> Tensor:
    """A (batch,) mask, True at ``rows`` where the subset's ``bad`` is."""
    mask = torch.zeros(batch, dtype=torch.bool, device=rows.device)
    mask[rows[bad.to(rows.device)]] = True
    return mask


def _exp_rows(log_w: Tensor, *, centred: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(w_i = exp(log_w_i - top) (B, N), log Σ_i exp(log_w_i) (B,), Σ_i w_i (B,)), top each row's
    largest; ``log_w`` (float64 or float32) is overwritten by w. An entry more than 300 (float32:
    40) below its row's largest (-inf included: a sample outside the energy's domain) gets
    exp(-300), about 5e-131 (float32: exp(-40), about 4e-18): no sum or mean of a row sees it at
    that precision, and its square is still a normal number. A denormal or zero would take the
    slow path of exp and products, up to 15 times the cost of their arithmetic. A row
    with no finite entry has log-sum -inf and weights 0. ``centred``: every row's largest is
    already 0 (the caller subtracted it), so it is not looked for again."""
    if centred:
        top = log_w.new_zeros(len(log_w))
        live = torch.ones_like(top, dtype=torch.bool)
        w = log_w.clamp_(min=_EXP_FLOOR[log_w.dtype]).exp_()
    else:
        top = log_w.amax(1)
        live = torch.isfinite(top)
        shifted = log_w.sub_(torch.where(live, top, torch.zeros_like(top))[:, None])
        w = shifted.clamp_(min=_EXP_FLOOR[log_w.dtype]).exp_()
    total = w.sum(1)
    log_sum = torch.where(live, top + total.log(), torch.full_like(top, -math.inf))
    if not bool(live.all()):
        w[~live] = 0
        total = torch.where(live, total, torch.zeros_like(total))
    return w, log_sum, total


def _blocked_matmul(a: Tensor, b: Tensor) -> Tensor:
    """a @ b computed in blocks of exactly :data:`_BLOCK_ROWS` rows of ``a`` (the last one padded
    with zeros): every product has the same shape, so a row's result does not depend on how many
    rows its batch has (a matrix product of another shape may sum in another order)."""
    rows = len(a)
    out = a.new_empty(rows, b.shape[1])
    full = rows - rows % _BLOCK_ROWS
    for start in range(0, full, _BLOCK_ROWS):
        torch.mm(a[start : start + _BLOCK_ROWS], b, out=out[start : start + _BLOCK_ROWS])
    if full < rows:
        last = torch.cat([a[full:], a.new_zeros(_BLOCK_ROWS - (rows - full), a.shape[1])])
        out[full:] = (last @ b)[: rows - full]
    return out


def _repeat(cond: Cond, times: int, batch: int) -> Tensor | None:
    """``cond`` for ``times`` stacked copies of a batch: per-sample tensors are tiled, others shared."""
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        if cond.dim() > 0 and cond.shape[0] == batch:
            return cond.repeat(times, *([1] * (cond.dim() - 1)))
        return cond
    raise TypeError(
        f"the default estimator evaluates the energy on stacked draws and needs cond as a tensor, got "
        f"{type(cond).__name__}; pass an estimator that takes it (e.g. ClosedForm)"
    )


# The draws are a hash, not a generator's stream: a sample's draws do not depend on which other
# samples share its batch (frozen or dropped ones, chunks) or on the steps and runs before, so runs
# reproduce and per-sample results are batch-invariant. Each noise level has a pool of
# _DRAW_SETS sets of draws (a hash of the level, the set and the draw index), and a sample takes
# the set its own key (a hash of its state and the level) names: P·M·d normals a step instead of
# B·M·d, and samples that share a set (B/P of them on average) share only that step's draws.
# splitmix64 (Steele, Lea and Flood 2014) in wrapping int64 arithmetic.
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed 64-bit integer
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB


def _wrap(value: int) -> int:
    """A Python integer as the signed 64-bit integer it wraps to."""
    return (value + 2**63) % 2**64 - 2**63


def _shift_right(x: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _splitmix(x: Tensor) -> Tensor:
    z = x + _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def _draw_keys(x_t: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """(one int64 key (B,) per sample, a hash of its state's bits and of the noise level; the
    level's own key, a 1-element tensor), on x_t's device (no host transfer: this runs at every
    step)."""
    bits = x_t.detach().reshape(len(x_t), -1).to(torch.float64).contiguous().view(torch.int64)
    # each value v_j is mixed as h_j = ((v_j·c_j) ^ ((v_j·c_j) >>> 32))·c_j with an odd multiplier
    # c_j per position, and the key is one splitmix of Σ_j h_j (mod 2⁶⁴): a splitmix per value
    # costs three times as much a step. The fold before the second product carries the high bits
    # (the sign, the exponent) down, so that flipping signs does not cancel in the sum: with
    # v_j·c_j alone, a sign bit added 2⁶³ whatever c_j, and two flips gave the same key.
    multiplier = _splitmix(torch.arange(bits.shape[1], dtype=torch.int64, device=bits.device)) | 1
    mixed = bits * multiplier
    mixed = (mixed ^ _shift_right(mixed, 32)) * multiplier
    level = _splitmix(
        sigma.detach().reshape(-1)[:1].to(device=bits.device, dtype=torch.float64).view(torch.int64)
    )
    return _splitmix(mixed.sum(1) + level), level


class _DrawPool:
    """A noise level's pool of P = :data:`_DRAW_SETS` sets of M pairs of standard normal draws
    (P, M, d) in the working dtype, made on the first call of :meth:`sets` (Box–Muller on the two
    32-bit halves of one hash per pair of values: its cosine and its sine) and kept for the step.
    ``key``: the level's key plus the seed's salt (1-element int64 tensor)."""

    def __init__(self, key: Tensor, pairs: int, d: int, dtype: torch.dtype) -> None:
        self.key, self.pairs, self.d, self.dtype = key, pairs, d, dtype
        self._sets: Tensor | None = None

    def sets(self) -> Tensor:
        if self._sets is None:
            half = (self.pairs * self.d + 1) // 2
            counter = torch.arange(_DRAW_SETS * half, dtype=torch.int64, device=self.key.device)
            bits = _splitmix(self.key + counter * _GOLDEN).reshape(_DRAW_SETS, half)
            u1 = (_shift_right(bits, 32).double() + 0.5) * 2.0**-32  # in (0, 1): its log is finite
            u2 = (bits & 0xFFFFFFFF).double() * 2.0**-32
            radius, angle = (-2 * u1.log()).sqrt(), 2 * math.pi * u2
            pool = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], 1)[
                :, : self.pairs * self.d
            ]
            self._sets = pool.to(self.dtype).reshape(_DRAW_SETS, self.pairs, self.d)
        return self._sets


class _Draws(typing.NamedTuple):
    """A step's standard normal draws, a function of the samples' keys only (:meth:`of_step`):
    row b takes set ``choice[b]`` of the level's pool.

    choice:  (B,) int64, each row's set.
    pool:    the level's :class:`_DrawPool`, shared by every subset of the rows (:meth:`rows`); a
             row with m ≤ M pairs takes the first m of its set.
    """

    choice: Tensor
    pool: _DrawPool

    @classmethod
    def of_step(cls, x_t: Tensor, sigma: Tensor, m: int, d: int, seed: int, dtype: torch.dtype) -> _Draws:
        """The draws of the batch x_t (B, ...) at noise level sigma, M = ``m`` pairs of ``d``
        values each: every estimate of the step takes its rows' sets from them."""
        sample_keys, level = _draw_keys(x_t, sigma)
        salt = _wrap(seed * _GOLDEN)
        choice = torch.remainder(_splitmix(sample_keys + salt), _DRAW_SETS)
        return cls(choice, _DrawPool(level + salt, m, d, dtype))

    def rows(self, index: Tensor) -> _Draws:
        """The draws of the rows ``index`` (a subset of the batch, or rows repeated)."""
        return _Draws(self.choice[index], self.pool)

    def normals(self, m: int) -> Tensor:
        """(m, B, d): the first m ≤ M pairs of each row's set."""
        if m > self.pool.pairs:
            raise ValueError(f"{m} pairs asked of a pool of {self.pool.pairs}")
        return self.pool.sets()[self.choice, :m].transpose(0, 1)
