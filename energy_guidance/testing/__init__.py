"""Ground truth for tests and benchmarks: exact noise models and intermediate energies, Monte
Carlo estimates, and distances between sample sets.

    GaussianMixture                   data with an exact noise model, posterior and tilted target
    EmpiricalNoiseModel               the exact (memorising) noise model of a finite data set
    EmpiricalIntermediateEnergy       exact E_t of a finite data set, usable as a guidance estimator
    GaussianMixtureIntermediateEnergy exact E_t of a Gaussian mixture for any energy
    gaussian_log_potential_mc         Monte Carlo log E[exp(-β·E(x0))] under a Gaussian, with its SE
    importance_resample               q·exp(-β·E) by resampling samples of q
    sliced_wasserstein, mmd           distances between (weighted) sample sets
    WeightedTarget                    the same distances to one target, its own terms computed once
"""

from .exact import (
    EmpiricalIntermediateEnergy,
    EmpiricalNoiseModel,
    GaussianMixtureIntermediateEnergy,
    empirical_mixture,
)
from .metrics import WeightedTarget, mmd, sliced_wasserstein
from .mixtures import GaussianMixture
from .montecarlo import (
    empirical_log_potential,
    empirical_posterior_logits,
    gaussian_log_potential_mc,
    importance_resample,
)

__all__ = [
    "EmpiricalIntermediateEnergy",
    "EmpiricalNoiseModel",
    "GaussianMixture",
    "GaussianMixtureIntermediateEnergy",
    "WeightedTarget",
    "empirical_log_potential",
    "empirical_mixture",
    "empirical_posterior_logits",
    "gaussian_log_potential_mc",
    "importance_resample",
    "mmd",
    "sliced_wasserstein",
]
