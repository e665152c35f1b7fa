"""Estimators of the posterior covariance Σ̂ ≈ Cov[x0 | x_t] that the closed form (1), (3) and
the quadrature (7) read (:mod:`energy_guidance.posterior` holds them; docs/math.md), and the
table of measured variances the default estimator reads.

    VarianceEstimator         the protocol: quadratic gᵀΣ̂g and, where it can, the covariance
    Constant(c)               Σ̂ = c·I (c = 0: DPS-style)
    EpsNorm(table)            Σ̂ = σ²/α²·(1 - E‖ε̂‖²/d)·I (the paper's first estimator)
    DataVar(table)            Σ̂ = (Var(x0) - E‖x̂0 - E[x0]‖²/d)·I (the paper's second)
    Diagonal(table)           the second, per dimension
    Jacobian()                Σ̂(x_t) = σ²/α²·(I - σ·∂ε̂/∂x_t), second-order Tweedie
    VarianceTable             variances measured at a grid of noise levels
    estimate_variance_table   the table from data and a model
"""

from .posterior import (
    Constant,
    DataVar,
    Diagonal,
    EpsNorm,
    Jacobian,
    VarianceEstimator,
    VarianceTable,
    estimate_variance_table,
)

__all__ = [
    "Constant",
    "DataVar",
    "Diagonal",
    "EpsNorm",
    "Jacobian",
    "VarianceEstimator",
    "VarianceTable",
    "estimate_variance_table",
]
