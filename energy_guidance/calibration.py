"""What the default guidance learns about a model from the model's own samples.

The default estimator (:mod:`energy_guidance.importance`) needs the posterior variance at each
noise level, the range and covariance of the data, and a sample of it (its prior between modes).
A user with data passes a table built from it
(:func:`~energy_guidance.posterior.estimate_variance_table`); without one the guidance draws
``num_samples`` unguided samples from the model once, with a copy of its scheduler (the
caller's scheduler state is untouched), and builds the same table from them: the model's own
samples stand in for its training data. With a condition, each pilot sample takes a row of the
caller's ``cond`` in turn, so the table pools over those conditions (an upper bound on each
condition's own variance, by the law of total variance).
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor

from .callables import Cond, NoiseModel
from .posterior import VarianceTable, estimate_variance_table
from .sampling import sample
from .schedulers import SchedulerLike

logger = logging.getLogger(__name__)

NUM_SAMPLES = 256  # pilot samples
NUM_INFERENCE_STEPS = 25  # of the pilot's sampler
NUM_LEVELS = 32  # noise levels of the table


def calibrate(
    scheduler: SchedulerLike,
    model: NoiseModel,
    sample_shape: tuple[int, ...],
    cond: Cond = None,
    *,
    num_samples: int = NUM_SAMPLES,
    num_inference_steps: int = NUM_INFERENCE_STEPS,
    num_levels: int = NUM_LEVELS,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> VarianceTable:
    """A :class:`~energy_guidance.posterior.VarianceTable` (with the data's range) from
    ``num_samples`` unguided samples of ``model``, each of shape ``sample_shape``.

    ``cond``: None, or a tensor whose rows are the conditions (cycled over the pilot samples).
    The pilot and the table use their own generator seeded by ``seed``.
    """
    if cond is not None and not isinstance(cond, Tensor):
        raise TypeError(
            f"calibrating the default guidance from the model's samples needs cond as a tensor or None, "
            f"got {type(cond).__name__}; pass variance_table=estimate_variance_table(scheduler, model, data)"
        )
    rows = None
    if cond is not None:  # one row per pilot sample, the caller's rows in turn (a scalar is shared)
        rows = cond.expand(num_samples) if cond.dim() == 0 else cond[torch.arange(num_samples) % len(cond)]
    logger.info(
        "calibrating the default guidance from %d of the model's own samples (%d steps, once)",
        num_samples,
        num_inference_steps,
    )
    pilot = copy.deepcopy(scheduler)
    generator = torch.Generator().manual_seed(seed)
    x = sample(
        pilot,
        model,
        (num_samples, *sample_shape),
        cond=rows,
        num_inference_steps=num_inference_steps,
        generator=generator,
        device=device,
        dtype=dtype,
    )
    return estimate_variance_table(pilot, model, x, rows, num_levels=num_levels, generator=generator)
