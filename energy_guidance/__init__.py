"""energy_guidance: sample p(x) ∝ q(x)·exp(-β·E(x)) from a diffusers model q, by AEPO's analytic
intermediate energy (Hu et al. 2025, arXiv 2505.01822).

Conventions (stated once here and in docs/math.md): energies are lower-is-better, β ≥ 0, and
x_t = α_t·x0 + σ_t·ε is always the model input.
"""

from .amortized import (
    IntermediateEnergyNet,
    TargetBatch,
    calibrate,
    closed_form_batches,
    closed_form_targets,
    cosine_learning_rate,
    fit,
    regression_loss,
    train_intermediate_energy,
)
from .callables import call_energy, call_model, energy_and_grad
from .closed_form import analytic_intermediate_energy, analytic_log_potential
from .guidance import AnalyticEnergyGuidance
from .montecarlo import empirical_log_potential, gaussian_log_potential_mc, importance_resample
from .posterior import (
    VARIANCE_METHODS,
    VarianceTable,
    estimate_variance_table,
    tweedie_mean,
    variance_quadratic,
)
from .sampling import StepInfo, sample
from .schedules import (
    PREDICTION_TYPES,
    SUPPORTED_SCHEDULERS,
    from_eps_x0,
    log_snr,
    noise_level,
    prediction_type,
    to_eps_x0,
)
from .toys import GaussianMixture

__all__ = [
    "PREDICTION_TYPES",
    "SUPPORTED_SCHEDULERS",
    "VARIANCE_METHODS",
    "AnalyticEnergyGuidance",
    "GaussianMixture",
    "IntermediateEnergyNet",
    "StepInfo",
    "TargetBatch",
    "VarianceTable",
    "analytic_intermediate_energy",
    "analytic_log_potential",
    "calibrate",
    "call_energy",
    "call_model",
    "closed_form_batches",
    "closed_form_targets",
    "cosine_learning_rate",
    "empirical_log_potential",
    "energy_and_grad",
    "estimate_variance_table",
    "fit",
    "from_eps_x0",
    "gaussian_log_potential_mc",
    "importance_resample",
    "log_snr",
    "noise_level",
    "prediction_type",
    "regression_loss",
    "sample",
    "to_eps_x0",
    "train_intermediate_energy",
    "tweedie_mean",
    "variance_quadratic",
]
