"""What the default guidance learns about a model from the model's own samples.

The default estimator (:mod:`energy_guidance.importance`) needs the range and covariance of the
data and a sample of it (its prior between modes), and, for samples of more than
:data:`~energy_guidance.posterior.MAX_COVARIANCE_DIM` values, whose covariance is not kept, the
posterior variance per dimension at each noise level (:func:`table_levels`).
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
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .callables import Cond, NoiseModel
from .posterior import VarianceTable, estimate_variance_table, keeps_covariance
from .sampling import sample
from .schedulers import SchedulerLike

logger = logging.getLogger(__name__)

NUM_SAMPLES = 256  # pilot samples
NUM_INFERENCE_STEPS = 25  # of the pilot's sampler
NUM_LEVELS = 32  # noise levels of the table


@dataclass
class Pilot:
    """Unguided samples drawn by :func:`draw_pilot`, and what :meth:`table` needs to go on.

    samples:    (N, *sample_shape) the model's unguided samples.
    rows:       (N, ...) the condition of each sample, or None.
    scheduler:  the copy of the caller's scheduler that drew them.
    generator:  the pilot's generator, after the draws (the table's noise continues its stream).
    """

    samples: Tensor
    rows: Tensor | None
    scheduler: SchedulerLike
    generator: torch.Generator

    def table(self, model: NoiseModel, *, num_levels: int | None = None) -> VarianceTable:
        """The variance table of these samples at ``num_levels`` noise levels (num_levels · N
        model passes; by default :func:`table_levels`, what the default estimator reads), with their
        range and covariance, and the samples as its prior."""
        if num_levels is None:
            num_levels = table_levels(tuple(self.samples.shape[1:]))
        return estimate_variance_table(
            self.scheduler, model, self.samples, self.rows, num_levels=num_levels, generator=self.generator
        )


def table_levels(sample_shape: tuple[int, ...]) -> int:
    """The noise levels the default estimator reads from its table: none where the table keeps
    the samples' covariance (up to :data:`~energy_guidance.posterior.MAX_COVARIANCE_DIM` values a
    sample; Σ̂ then follows from it in closed form), else :data:`NUM_LEVELS` (Σ̂ per dimension)."""
    return 0 if keeps_covariance(math.prod(sample_shape)) else NUM_LEVELS


def draw_pilot(
    scheduler: SchedulerLike,
    model: NoiseModel,
    sample_shape: tuple[int, ...],
    cond: Cond = None,
    *,
    num_samples: int = NUM_SAMPLES,
    num_inference_steps: int = NUM_INFERENCE_STEPS,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Pilot:
    """``num_samples`` unguided samples of ``model``, each of shape ``sample_shape``, drawn with a
    copy of ``scheduler`` (the caller's state is untouched) and a generator seeded by ``seed``;
    ``draw_pilot(...).table(model)`` is the default guidance's table.

    ``cond``: None, or a tensor whose rows are the conditions (cycled over the pilot samples).
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
        "drawing %d of the model's own samples (%d steps, once) to calibrate the default guidance",
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
    return Pilot(samples=x, rows=rows, scheduler=pilot, generator=generator)
