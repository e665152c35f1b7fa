"""energy_guidance: sample p(x) ∝ q(x)·exp(-β·E(x)) from a diffusers model q, by AEPO's analytic
intermediate energy (Hu et al. 2025, arXiv 2505.01822).

Conventions (stated once here and in docs/math.md): energies are lower-is-better, β ≥ 0, and
x_t = α_t·x0 + σ_t·ε is always the model input. docs/architecture.md walks through one guided step.

The top level is what a user of guidance needs: the recommended sampler (:func:`tilted_sample`:
guidance or resampling, whichever the tilt calls for), the guided model
(:class:`AnalyticEnergyGuidance`, callable like the model it wraps), the samplers
(:func:`sample`, :func:`smc_sample`, :func:`guide_pipeline`), the estimators one passes as
``estimator=`` and the protocol they implement, and what callbacks receive. The rest lives in
namespaces named for what they hold:

    energy_guidance.estimators   every intermediate-energy estimator (also Tempered) and the protocol
    energy_guidance.variance     posterior-variance estimators (Constant, Jacobian, ...) and their table
    energy_guidance.schedulers   SchedulerAdapter: noise levels, prediction types, stepping
    energy_guidance.protocols    the protocols and the callback payload
    energy_guidance.baselines    what guidance must beat: DPS-style, CEP, importance resampling (import it)
    energy_guidance.testing      ground truth for tests and benchmarks: exact models, Monte Carlo,
                                 distances (import it)
    energy_guidance.training, .classifier, .checkpoints, .pipelines: training loop, the classifier
    energy, files that survive interruption, the pipeline wrapper.
"""

__version__ = "0.1.0"  # the one source of the version: pyproject.toml reads it

import logging

from . import estimators as estimators
from . import protocols as protocols
from . import schedulers as schedulers
from . import variance as variance
from .amortized import IntermediateEnergyNet, train_intermediate_energy
from .callables import NonFiniteError
from .closed_form import ClosedForm
from .guidance import AnalyticEnergyGuidance
from .importance import ImportanceTilt
from .pipelines import guide_pipeline
from .protocols import IntermediateEnergyEstimator, StepInfo, StepRecord
from .quadrature import GaussianQuadrature
from .sampling import sample
from .smc import SMCResult, smc_sample
from .tilted import tilted_sample

__all__ = [
    "AnalyticEnergyGuidance",
    "ClosedForm",
    "GaussianQuadrature",
    "ImportanceTilt",
    "IntermediateEnergyEstimator",
    "IntermediateEnergyNet",
    "NonFiniteError",
    "SMCResult",
    "StepInfo",
    "StepRecord",
    "guide_pipeline",
    "sample",
    "smc_sample",
    "tilted_sample",
    "train_intermediate_energy",
]

# Every module logs to a child of this logger; the library configures no output (the recipes'
# command lines do: --log-level, -q). A NullHandler keeps Python's last-resort handler quiet.
logging.getLogger(__name__).addHandler(logging.NullHandler())
