"""energy_guidance: sample p(x) ∝ q(x)·exp(-β·E(x)) from a diffusers model q, by AEPO's analytic
intermediate energy (Hu et al. 2025, arXiv 2505.01822).

Conventions (stated once here and in docs/math.md): energies are lower-is-better, β ≥ 0, and
x_t = α_t·x0 + σ_t·ε is always the model input.

The public API is what a user of guidance needs. The rest lives in named modules:
:mod:`energy_guidance.training` (the training loop), :mod:`energy_guidance.classifier` (the
intermediate energy learned as a classifier), :mod:`energy_guidance.tempering` (a tempered twist),
:mod:`energy_guidance.checkpoints` (files that survive interruption),
:mod:`energy_guidance.groundtruth` (exact models, Monte Carlo and distances, for tests and
benchmarks), :mod:`energy_guidance.baselines` (CEP, DPS-style guidance); the protocols an
estimator follows are ``guidance.IntermediateEnergyEstimator`` and ``posterior.VarianceEstimator``.
"""

__version__ = "0.1.0"  # the one source of the version: pyproject.toml reads it

import logging

from .amortized import IntermediateEnergyNet, train_intermediate_energy
from .callables import NonFiniteError
from .closed_form import ClosedForm
from .guidance import AnalyticEnergyGuidance
from .pipelines import guide_pipeline
from .posterior import Constant, DataVar, Diagonal, EpsNorm, Jacobian, VarianceTable, estimate_variance_table
from .quadrature import GaussianQuadrature
from .sampling import sample
from .schedules import ClippingWarning, from_eps_x0, noise_level, to_eps_x0
from .smc import SMCResult, smc_sample

__all__ = [
    "AnalyticEnergyGuidance",
    "ClippingWarning",
    "ClosedForm",
    "Constant",
    "DataVar",
    "Diagonal",
    "EpsNorm",
    "GaussianQuadrature",
    "IntermediateEnergyNet",
    "Jacobian",
    "NonFiniteError",
    "SMCResult",
    "VarianceTable",
    "estimate_variance_table",
    "from_eps_x0",
    "guide_pipeline",
    "noise_level",
    "sample",
    "smc_sample",
    "to_eps_x0",
    "train_intermediate_energy",
]

# Every module logs to a child of this logger; the library configures no output (the recipes'
# command lines do: --log-level, -q). A NullHandler keeps Python's last-resort handler quiet.
logging.getLogger(__name__).addHandler(logging.NullHandler())
