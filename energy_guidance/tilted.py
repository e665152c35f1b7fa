"""The recommended sampler of p(x) ∝ q(x)·exp(-β·E(x)): guidance or resampling, chosen by the tilt.

Neither sampler is the better one everywhere (README, "Which sampler to call"). Importance
resampling of unguided samples by exp(-β·E) is exact as its pool grows and was closer to the
target at equal cost where the tilt keeps a large effective sample size over the model's samples
(mild tilts, low dimension, bounded step-like energies); the default guidance was closer where
the tilt keeps few (sharp tilts in high dimension), where resampling would need exponentially
many candidates. :func:`tilted_sample` finds out which case holds from a pilot of P unguided
samples, which the default guidance draws in any case to calibrate itself, and spends the same
model passes whichever it picks (S sampler steps, L noise levels of the variance table, B
outputs; L = :func:`~energy_guidance.calibration.table_levels`, 0 for samples of up to 512 values):

- the pilot's ESS fraction f = ESS/P of the weights exp(-β·E(x_i)) (Kish's ESS) is at least
  :data:`RESAMPLE_ESS`: B draws by importance resampling from a pool of

      N = P + ⌈L·P / S⌉ + B

  unguided samples, the pilot included: the passes of the guided branch (P·S for the pilot, L·P
  for the table, B·S for the guided samples) spent on candidates instead;
- otherwise: B samples of the default :class:`~energy_guidance.AnalyticEnergyGuidance`, with the
  variance table of the same pilot (the calibration it would otherwise draw itself).

``method="guided"`` or ``"resampling"`` takes one branch whatever f is (the same pilot and pool).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .baselines.resampling import draw_candidates, effective_sample_size, resample, tilt_log_weights
from .calibration import NUM_SAMPLES, draw_pilot, table_levels
from .callables import Energy, NoiseModel, check_beta, energies_or_inf
from .guidance import AnalyticEnergyGuidance
from .importance import MILD_TILT_ESS
from .sampling import check_shape, sample
from .schedulers import SchedulerLike

logger = logging.getLogger(__name__)

METHODS = ("auto", "guided", "resampling")
# f from which the pilot's tilt is resampled: the default estimator's mild-tilt threshold, where
# resampling was closer at equal cost in most settings of the dimension sweep (docs/benchmarks.md)
RESAMPLE_ESS = MILD_TILT_ESS


@dataclass(frozen=True)
class TiltedSamples:
    """The result of :func:`tilted_sample`.

    samples:       (B, ...) samples of q·exp(-β·E), ``shape``.
    method:        ``"guided"`` or ``"resampling"``, the branch taken.
    ess_fraction:  f, the pilot's ESS of exp(-β·E) over its P samples, divided by P (nan where
                   no pilot sample had a finite energy).
    pool:          the resampling pool N (the pilot included); 0 for the guided branch.
    ess:           Kish's ESS of the pool's weights, which the draws were made with; 0 for the
                   guided branch.
    """

    samples: Tensor
    method: str
    ess_fraction: float
    pool: int
    ess: float


def tilted_sample(
    scheduler: SchedulerLike,
    model: NoiseModel,
    energy: Energy,
    beta: float,
    shape: tuple[int, ...],
    *,
    method: Literal["auto", "guided", "resampling"] = "auto",
    num_inference_steps: int = 25,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    seed: int = 0,
) -> TiltedSamples:
    """``shape[0]`` samples of q(x)·exp(-β·E(x)) by the sampler the tilt calls for (module docstring).

    ``model(x_t, t)`` in the scheduler's prediction type (unconditional); ``energy(x0)`` -> (B,),
    lower is better, differentiable where the guided branch is taken; β ≥ 0; ``shape`` (B, ...).
    The pilot (P = :data:`~energy_guidance.calibration.NUM_SAMPLES` samples, S =
    ``num_inference_steps`` steps) and the table use their own generator seeded by ``seed``; the
    outputs (the guided samples, or the rest of the pool and the resampling draws) use
    ``generator``. ``progress`` shows a bar for the outputs' sampler.
    """
    shape = check_shape(shape)
    beta = check_beta(beta)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    batch = shape[0]
    pilot = draw_pilot(
        scheduler,
        model,
        shape[1:],
        num_samples=NUM_SAMPLES,
        num_inference_steps=num_inference_steps,
        device=device,
        dtype=dtype,
        seed=seed,
    )
    energies = energies_or_inf(energy, pilot.samples)
    fraction = float(effective_sample_size(tilt_log_weights(energies, beta))) / len(energies)
    if method == "auto":
        method = "resampling" if fraction >= RESAMPLE_ESS else "guided"
    logger.info(
        "tilted_sample: exp(-β·E) keeps an ESS of %.1f%% of %d pilot samples: %s",
        100 * fraction,
        len(energies),
        method,
    )
    if method == "guided":
        guided = AnalyticEnergyGuidance(scheduler, model, energy, beta, variance_table=pilot.table(model))
        x = sample(
            scheduler,
            guided,
            shape,
            num_inference_steps=num_inference_steps,
            generator=generator,
            device=device,
            dtype=dtype,
            progress=progress,
        )
        return TiltedSamples(samples=x, method=method, ess_fraction=fraction, pool=0, ess=0.0)

    levels = table_levels(shape[1:])
    size = len(energies) + math.ceil(levels * len(energies) / num_inference_steps) + batch
    extra, extra_energies = draw_candidates(
        scheduler,
        model,
        energy,
        size - len(energies),
        shape[1:],
        num_inference_steps=num_inference_steps,
        generator=generator,
        device=device,
        dtype=dtype,
        progress=progress,
    )
    candidates, pool_energies = torch.cat([pilot.samples, extra]), torch.cat([energies, extra_energies])
    result = resample(candidates, pool_energies, beta, batch, generator=generator)
    return TiltedSamples(
        samples=result.samples, method=method, ess_fraction=fraction, pool=size, ess=float(result.ess)
    )
