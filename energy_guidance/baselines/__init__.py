"""Baselines that a guided sampler must beat, built on the same parts:

dps_guidance                        DPS-style guidance: ∇ of β·E(x̂0), no variance term
train_contrastive_energy, draw_support, contrastive_loss
                                    QGPO's contrastive energy prediction (CEP)
importance_resampling, Resampled    unguided samples resampled by exp(-β·E); per condition,
                                    best of N (IDQL-style) as β → ∞
resample                            the resampling step alone, for candidates already drawn
effective_sample_size               Kish's ESS 1/Σw² from log weights
equal_cost_pool                     the pool the baseline buys with a method's measured cost
CountingModel, Cost, measure        the cost meter: wall time and model passes (forward and
                                    backward, per sample)
"""

from .contrastive import contrastive_loss, draw_support, train_contrastive_energy
from .cost import Cost, CountingModel, measure
from .dps import dps_guidance
from .resampling import Resampled, effective_sample_size, equal_cost_pool, importance_resampling, resample

__all__ = [
    "Cost",
    "CountingModel",
    "Resampled",
    "contrastive_loss",
    "dps_guidance",
    "draw_support",
    "effective_sample_size",
    "equal_cost_pool",
    "importance_resampling",
    "measure",
    "resample",
    "train_contrastive_energy",
]
