"""The package's face: a small public API, and no RL, plotting or scikit-learn import."""

import subprocess
import sys

import torch

import energy_guidance


def test_importing_the_library_pulls_in_no_rl_plotting_or_sklearn():
    code = (
        "import sys, energy_guidance, energy_guidance.testing, energy_guidance.baselines;"
        "print(','.join(m for m in ('gymnasium', 'minari', 'sklearn', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_public_api_is_small_and_importable():
    assert 12 <= len(energy_guidance.__all__) <= 15
    for name in energy_guidance.__all__:
        assert getattr(energy_guidance, name) is not None


def test_the_namespaces_hold_the_rest():
    import energy_guidance.baselines
    import energy_guidance.testing

    for namespace in (
        energy_guidance.estimators,
        energy_guidance.variance,
        energy_guidance.schedulers,
        energy_guidance.protocols,
        energy_guidance.baselines,
        energy_guidance.testing,
    ):
        for name in getattr(namespace, "__all__", ()):
            assert getattr(namespace, name) is not None, (namespace.__name__, name)
    assert energy_guidance.variance.Jacobian is energy_guidance.posterior.Jacobian
    assert energy_guidance.schedulers.SchedulerAdapter is not None


def test_every_estimator_declares_the_protocol():
    """The guided step reads beta, energy, model_derivatives and value_and_x_t_gradient of every
    estimator; each one the library ships declares them."""
    from energy_guidance.estimators import IntermediateEnergyEstimator, Tempered
    from energy_guidance.testing import GaussianMixture, GaussianMixtureIntermediateEnergy

    def energy(x):
        return x.sum(1)

    mixture = GaussianMixture.gaussian(torch.zeros(2), 1.0)
    table = None
    for estimator in (
        energy_guidance.ImportanceTilt(energy, 1.0, table),
        energy_guidance.ClosedForm(energy, 1.0),
        energy_guidance.GaussianQuadrature(energy, 1.0),
        energy_guidance.IntermediateEnergyNet(2),
        GaussianMixtureIntermediateEnergy(mixture, energy, 1.0),
        Tempered(energy_guidance.ClosedForm(energy, 1.0)),
    ):
        assert isinstance(estimator, IntermediateEnergyEstimator), type(estimator).__name__
        assert estimator.model_derivatives in (0, 1, 2)
