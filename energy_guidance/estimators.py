"""Estimators of the intermediate energy E_t (docs/math.md), one file each, and the protocol they
implement (:class:`~energy_guidance.protocols.IntermediateEnergyEstimator`).

    ImportanceTilt          the default: importance sampling of the Gaussian posterior (importance.py)
    ClosedForm              the paper's first- or second-order closed form (closed_form.py)
    GaussianQuadrature      quadrature of the Gaussian posterior, no expansion of E (quadrature.py)
    IntermediateEnergyNet   a network E_Θ(x_t, α, σ, cond), trained by train_intermediate_energy
                            (amortized.py), as a classifier (classifier.py) or by CEP
                            (baselines/contrastive.py)
    Tempered                λ_t·E_t of any of them (tempering.py)

Adding an estimator is one file: a class with ``beta``, ``energy``, ``model_derivatives``,
``__call__`` and ``value_and_x_t_gradient`` (or :class:`AutogradGradient` for the last), and its
test. Ground-truth estimators for tests live in :mod:`energy_guidance.testing`.
"""

from .amortized import IntermediateEnergyNet, train_intermediate_energy
from .closed_form import ClosedForm
from .importance import ImportanceTilt
from .protocols import AutogradGradient, IntermediateEnergyEstimator
from .quadrature import GaussianQuadrature
from .tempering import Tempered

__all__ = [
    "AutogradGradient",
    "ClosedForm",
    "GaussianQuadrature",
    "ImportanceTilt",
    "IntermediateEnergyEstimator",
    "IntermediateEnergyNet",
    "Tempered",
    "train_intermediate_energy",
]
