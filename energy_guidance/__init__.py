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
from .contrastive import contrastive_loss, draw_support, train_contrastive_energy
from .datasets2d import DATASETS, Toy2D, toy_dataset
from .exact import (
    EmpiricalIntermediateEnergy,
    EmpiricalNoiseModel,
    GaussianMixtureIntermediateEnergy,
    empirical_mixture,
)
from .guidance import AnalyticEnergyGuidance
from .metrics import mmd, sliced_wasserstein
from .montecarlo import (
    empirical_log_potential,
    empirical_posterior_logits,
    gaussian_log_potential_mc,
    importance_resample,
)
from .pipelines import GuidedModel, guide_pipeline
from .posterior import (
    TABLE_METHODS,
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
    add_noise,
    from_eps_x0,
    log_snr,
    noise_level,
    prediction_type,
    to_eps_x0,
    training_timesteps,
)
from .toys import GaussianMixture

__all__ = [
    "DATASETS",
    "PREDICTION_TYPES",
    "SUPPORTED_SCHEDULERS",
    "TABLE_METHODS",
    "VARIANCE_METHODS",
    "AnalyticEnergyGuidance",
    "EmpiricalIntermediateEnergy",
    "EmpiricalNoiseModel",
    "GaussianMixture",
    "GaussianMixtureIntermediateEnergy",
    "GuidedModel",
    "IntermediateEnergyNet",
    "StepInfo",
    "TargetBatch",
    "Toy2D",
    "VarianceTable",
    "add_noise",
    "analytic_intermediate_energy",
    "analytic_log_potential",
    "calibrate",
    "call_energy",
    "call_model",
    "closed_form_batches",
    "closed_form_targets",
    "contrastive_loss",
    "cosine_learning_rate",
    "draw_support",
    "empirical_log_potential",
    "empirical_mixture",
    "empirical_posterior_logits",
    "energy_and_grad",
    "estimate_variance_table",
    "fit",
    "from_eps_x0",
    "gaussian_log_potential_mc",
    "guide_pipeline",
    "importance_resample",
    "log_snr",
    "mmd",
    "noise_level",
    "prediction_type",
    "regression_loss",
    "sample",
    "sliced_wasserstein",
    "to_eps_x0",
    "toy_dataset",
    "train_contrastive_energy",
    "train_intermediate_energy",
    "training_timesteps",
    "tweedie_mean",
    "variance_quadratic",
]
