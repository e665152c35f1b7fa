"""Importance resampling of unguided samples: the baseline every guided sampler must beat.

Draw a pool of N unguided samples x_i ~ q (the model's own distribution), weigh them by
w_i ∝ exp(-β·E(x_i)) and resample with replacement: as N → ∞ the draws follow

    p(x) ∝ q(x)·exp(-β·E(x)),

the guided samplers' target, with no guidance, no gradient and no approximation beyond the
pool's size; the weights' effective sample size ESS = 1/Σ w_i² (normalised w) says how much of
the pool is left. With a condition per output row (RL states), each row has its own pool of N
candidates drawn for its condition and picks among them only: as β → ∞ this is best-of-N
selection (IDQL-style, the lowest energy of N). A guided sampler is worth its cost only if it
beats this baseline given the same budget: :func:`equal_cost_pool` converts a method's measured
:class:`~.cost.Cost` into the pool size the baseline could have drawn with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..callables import Cond, Energy, NoiseModel, energies_or_inf
from ..sampling import condition_rows, sample
from ..schedulers import SchedulerLike
from .cost import Cost

MAX_CHUNK = 4096  # pool samples drawn per call of the sampler, to bound memory


@dataclass(frozen=True)
class Resampled:
    """The result of :func:`importance_resampling`.

    samples:      (B, ...) the resampled points, ``shape``.
    log_weights:  the pool's normalised log weights log w_i = -β·E(x_i) - logsumexp(-β·E),
                  (pool,), or (B, pool) with a condition (row b: its own candidates).
    ess:          Kish's effective sample size 1/Σ w_i² of the pool, () or (B,).
    """

    samples: Tensor
    log_weights: Tensor
    ess: Tensor

    @property
    def ess_fraction(self) -> Tensor:
        """``ess / pool``, in (0, 1]: 1 for equal weights, 1/pool when one sample takes all."""
        return self.ess / self.log_weights.shape[-1]


def effective_sample_size(log_weights: Tensor, dim: int = -1) -> Tensor:
    """Kish's effective sample size (Σ w)² / Σ w² along ``dim`` from unnormalised log weights,
    computed as exp(2·logsumexp(log w) - logsumexp(2·log w)) in float64, so that neither large
    nor very negative log weights overflow (adding a constant to them changes nothing). Weights
    of -inf count as zero; the result lies in [1, n] for n weights along ``dim``."""
    log_w = log_weights.to(torch.float64)
    return torch.exp(2 * torch.logsumexp(log_w, dim=dim) - torch.logsumexp(2 * log_w, dim=dim))


def importance_resampling(
    scheduler: SchedulerLike,
    model: NoiseModel,
    shape: tuple[int, ...],
    energy: Energy,
    beta: float,
    *,
    pool: int,
    cond: Cond = None,
    num_inference_steps: int = 25,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> Resampled:
    """``shape[0]`` samples of q·exp(-β·E) by importance resampling of unguided samples.

    Without ``cond``: draws ``pool`` unguided samples (``pool`` may be smaller or larger than
    ``shape[0]``) with :func:`~energy_guidance.sample`, evaluates ``energy`` on them (no grad;
    ``energy(x)``), and draws ``shape[0]`` of them with replacement with probabilities
    softmax(-β·E).

    With ``cond`` (one row per output sample: a tensor of leading size ``shape[0]``, or a dict,
    list or tuple whose per-sample tensors have that leading size; other entries are shared):
    ``pool`` candidates PER output row, drawn for that row's condition, and each row draws one of
    its own candidates with probabilities softmax(-β·E(x, cond)) over them. As β grows each row
    takes its lowest-energy candidate: best of ``pool`` (IDQL-style selection).

    A candidate whose energy is not finite (outside the energy's domain) gets weight 0; an
    output with no finite candidate is a ValueError. The sampler and the energy run without
    autograd (:func:`draw_candidates`). The pool is drawn in calls of at most
    :data:`MAX_CHUNK` samples, in order; with ``cond`` candidate j of row b is pool sample
    b·pool + j (the rows' conditions repeated ``pool`` times each), so a seeded ``generator``
    gives the same pool as one call of :func:`~energy_guidance.sample` of that size where the
    pool fits one chunk. The resampling indices are drawn from ``generator`` too (after the
    pool). ``scheduler``, ``model``, ``num_inference_steps``, ``device``, ``dtype`` and
    ``progress`` are passed to :func:`~energy_guidance.sample`.
    """
    if len(shape) < 1 or int(shape[0]) < 1:
        raise ValueError(f"shape[0] (the number of output samples) must be >= 1, got shape {tuple(shape)}")
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
        raise ValueError(f"pool must be an integer >= 1, got {pool!r}")
    beta = float(beta)
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be finite and >= 0, got {beta}")
    batch = int(shape[0])
    if isinstance(cond, Tensor) and (cond.dim() == 0 or cond.shape[0] != batch):
        got = "a scalar" if cond.dim() == 0 else f"{cond.shape[0]} rows"
        raise ValueError(f"cond must have one row per output sample, shape[0] = {batch}; got {got}")
    if device is None and isinstance(cond, Tensor):
        device = cond.device

    candidates, energies = draw_candidates(
        scheduler,
        model,
        energy,
        pool if cond is None else batch * pool,
        tuple(shape[1:]),
        cond=cond,
        per_row=pool,
        num_inference_steps=num_inference_steps,
        generator=generator,
        device=device,
        dtype=dtype,
        progress=progress,
    )
    if cond is None:
        return resample(candidates, energies, beta, batch, generator=generator)
    log_weights = tilt_log_weights(energies.reshape(batch, pool), beta)
    picked = _draw(log_weights, 1, generator).squeeze(1)
    index = torch.arange(batch, device=picked.device) * pool + picked
    samples = candidates[index.to(candidates.device)]
    return Resampled(samples=samples, log_weights=log_weights, ess=effective_sample_size(log_weights))


def draw_candidates(
    scheduler: SchedulerLike,
    model: NoiseModel,
    energy: Energy,
    count: int,
    sample_shape: tuple[int, ...],
    *,
    cond: Cond = None,
    per_row: int = 1,
    num_inference_steps: int = 25,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """``count`` unguided samples of shape ``sample_shape`` and their energies (float64, +inf
    where not finite: weight 0), without autograd, drawn in order in calls of at most
    :data:`MAX_CHUNK` samples. With ``cond`` (one row per output), sample j takes the condition
    of output row j // ``per_row``."""
    chunks, energies = [], []
    with torch.no_grad():
        for start in range(0, count, MAX_CHUNK):
            stop = min(start + MAX_CHUNK, count)
            rows = None
            if cond is not None:
                index = torch.arange(start, stop) // per_row
                if isinstance(cond, Tensor):
                    index = index.to(cond.device)
                rows = condition_rows(cond, index, (count + per_row - 1) // per_row)
            x = sample(
                scheduler,
                model,
                (stop - start, *sample_shape),
                cond=rows,
                num_inference_steps=num_inference_steps,
                generator=generator,
                device=device,
                dtype=dtype,
                progress=progress,
            )
            chunks.append(x)
            energies.append(energies_or_inf(energy, x, rows))
    return torch.cat(chunks), torch.cat(energies)


def resample(
    candidates: Tensor, energies: Tensor, beta: float, n: int, *, generator: torch.Generator | None = None
) -> Resampled:
    """``n`` draws with replacement from ``candidates`` (N, ...) with probabilities softmax(-β·E),
    ``energies`` (N,) their E; a candidate whose energy is not finite gets weight 0 (all of them:
    ValueError). The indices are drawn from ``generator``."""
    if energies.shape != candidates.shape[:1]:
        got = tuple(energies.shape)
        raise ValueError(f"energies must be ({len(candidates)},), one per candidate, got {got}")
    log_weights = tilt_log_weights(energies, beta)
    index = _draw(log_weights, n, generator)
    samples = candidates[index.to(candidates.device)]
    return Resampled(samples=samples, log_weights=log_weights, ess=effective_sample_size(log_weights))


def tilt_log_weights(energies: Tensor, beta: float) -> Tensor:
    """The normalised log weights log softmax(-β·E) along the last dim of ``energies`` (float64);
    an energy that is not finite (outside the energy's domain) gets weight 0, also at β = 0. A
    row with no finite energy is a ValueError naming it."""
    energies = energies.detach().to(torch.float64)
    finite = torch.isfinite(energies)
    empty = ~finite.any(-1)
    if bool(empty.any()):
        if energies.dim() == 1:
            raise ValueError("no candidate has a finite energy: there is nothing to resample")
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"no candidate of output rows {rows[:10]} has a finite energy: nothing to resample")
    log_weights = torch.where(finite, -float(beta) * energies, torch.full_like(energies, -math.inf))
    return torch.log_softmax(log_weights, dim=-1)


def _draw(log_weights: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
    """``n`` indices with replacement per row of ``log_weights`` (normalised), from ``generator``."""
    probabilities = log_weights.exp()
    if generator is not None:
        probabilities = probabilities.to(generator.device)
    return torch.multinomial(probabilities, n, replacement=True, generator=generator)


def equal_cost_pool(cost: Cost, unguided_per_sample: Cost, batch: int, *, per_condition: bool = False) -> int:
    """The pool size whose unguided cost equals ``cost``, a method's measured cost for ``batch``
    output samples: how many unguided samples the same budget buys.

    ``unguided_per_sample`` is the cost of ONE unguided sample (a measured unguided run's
    :class:`~.cost.Cost` divided by its sample count: passes = the number of model evaluations
    per sample, ``num_inference_steps`` for :func:`~energy_guidance.sample`). The budget is
    converted twice, by wall time, floor(cost.seconds / unguided_per_sample.seconds), and by
    model passes, floor(cost.passes / unguided_per_sample.passes), and the LARGER is returned:
    deliberately, the baseline gets the benefit of the doubt (a guided method that backpropagates
    through the model may be cheap in seconds on one machine and dear in passes, or the other way
    round; it has to beat the baseline under whichever measure favours the baseline). A measure
    whose per-sample cost is 0 (not measured) is left out. The result is at least ``batch``: the
    baseline draws at least one candidate per output.

    ``per_condition=True``: the pool per output row, as :func:`importance_resampling` takes it
    with ``cond``: the total divided by ``batch`` (rounded down), at least 1.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    for name, value in (("cost", cost), ("unguided_per_sample", unguided_per_sample)):
        if not all(math.isfinite(v) and v >= 0 for v in (value.seconds, value.passes)):
            raise ValueError(f"{name} must have finite seconds and passes >= 0, got {value}")
    if unguided_per_sample.seconds == 0 and unguided_per_sample.passes == 0:
        raise ValueError(f"unguided_per_sample must have seconds or passes > 0, got {unguided_per_sample}")
    pools = [
        _units(spent, unit)
        for spent, unit in (
            (cost.seconds, unguided_per_sample.seconds),
            (cost.passes, unguided_per_sample.passes),
        )
        if unit > 0
    ]
    total = max(batch, *pools)
    return max(1, total // batch) if per_condition else total


def _units(spent: float, unit: float) -> int:
    """floor(spent / unit), exact for integers and forgiving of binary rounding for floats
    (0.3 s / 0.1 s is 2.9999999999999996: 3 units)."""
    if isinstance(spent, int) and isinstance(unit, int):
        return spent // unit
    ratio = spent / unit
    nearest = round(ratio)
    return nearest if math.isclose(ratio, nearest, rel_tol=1e-9) else math.floor(ratio)
