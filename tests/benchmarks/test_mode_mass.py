"""The mode-mass benchmark: its closed form against the tilted mixture's own, and a tiny run
(one data seed, 64 points, 2 repeats) so that it cannot rot."""

import math

import torch

from benchmarks import dimension, mode_mass
from energy_guidance.testing import GaussianMixture


def test_tilted_masses_with_the_true_covariances_are_the_targets():
    """Σ_k π_k·N(μ_k, diag v_k) tilted by exp(-β·wᵀx): the masses agree with GaussianMixture.tilted."""
    mix = dimension.make_mixture(2, 1)
    w = dimension.make_energies(mix, 1)["linear"].w
    for beta in (0.0, 1.0, 10.0):
        masses = mode_mass.tilted_masses(mix.weights, mix.means, torch.diag_embed(mix.variances), w, beta)
        torch.testing.assert_close(masses, mix.tilted(w, beta).weights, rtol=1e-12, atol=1e-12)


def test_the_empirical_masses_converge_to_the_target():
    """200,000 labelled points: each empirical tilted mass within 5 of its delta-method standard
    errors of the target (self-normalised weights: var ≈ Σ_i w_i²·(1[k_i = k] - m_k)²)."""
    mix = dimension.make_mixture(2, 2)
    w = dimension.make_energies(mix, 2)["linear"].w
    beta = 1.0
    x, labels = mix.sample_components(200_000, torch.Generator().manual_seed(0))
    target = mix.tilted(w, beta).weights
    masses = mode_mass.empirical_masses(x, labels, w, beta, len(target))
    weights = torch.softmax(-beta * (x @ w), 0)
    for k in range(len(target)):
        se = math.sqrt(float((weights**2 * ((labels == k).double() - masses[k]) ** 2).sum()))
        assert abs(float(masses[k] - target[k])) < 5 * se


def test_mode_mass_smoke(tmp_path):
    rows = mode_mass.run(seeds=(0,), sizes=(64,), repeats=2, log=lambda *_: None)
    assert [(r["seed"], r["beta"]) for r in rows] == [(0, b) for b in dimension.BETAS["linear"]]
    for r in rows:
        for name in mode_mass.ESTIMATES:
            mean, sd = r[f"{name} N=64"]
            assert 0 <= mean <= 1 and sd >= 0
    assert "| 0 |" in mode_mass.render(rows, (64,), {"date": "d", "machine": "m", "torch": "t"})


def test_own_covariances_recover_each_components_covariance():
    """Two well-separated components of different shapes, 20,000 points: each component's own
    covariance within 5 standard errors of the truth (variance v: v·√(2/n_k); covariance 0:
    √(v_1·v_2/n_k)); the shrinkage by d + 1 pseudo-samples is negligible at this n_k."""
    weights = torch.tensor([0.5, 0.5], dtype=torch.float64)
    means = torch.tensor([[-4.0, 0.0], [4.0, 0.0]], dtype=torch.float64)
    variances = torch.tensor([[0.25, 0.5], [0.6, 0.1]], dtype=torch.float64)
    mix = GaussianMixture(weights, means, variances)
    x, _ = mix.sample_components(20_000, torch.Generator().manual_seed(0))
    shared = torch.diag(weights @ variances)
    own = mode_mass.own_covariances(x, weights, means, shared)
    n_k = 10_000
    for k in range(2):
        v = variances[k]
        assert bool(((torch.diagonal(own[k]) - v).abs() < 5 * v * math.sqrt(2 / n_k)).all())
        assert abs(float(own[k, 0, 1])) < 5 * math.sqrt(float(v[0] * v[1]) / n_k)


def test_posterior_probabilities_at_noise_0_of_the_targets_own_draws_average_to_its_masses():
    """How sampled_masses scores outputs: on 20,000 draws of the target, each component's mean
    posterior probability (GaussianMixture.posterior at σ = 0) is within 5 standard errors of its
    mass (the sd of r_k over the draws / √n)."""
    mix = dimension.make_mixture(2, 2)
    w = dimension.make_energies(mix, 2)["linear"].w
    target = mix.tilted(w, 3.0)
    x = target.sample(20_000, generator=torch.Generator().manual_seed(0)).double()
    one = torch.ones(len(x), dtype=torch.float64)
    r = target.posterior(x, one, 0 * one)[0]
    se = r.std(0) / math.sqrt(len(x))
    assert bool(((r.mean(0) - target.weights).abs() <= 5 * se).all())


def test_sampled_masses_smoke():
    """The default's outputs and resampling at its cost on a tiny run: a total variation in [0, 1]
    for each, and a pool of at least the outputs."""
    mix = dimension.make_mixture(2, 0)
    energy = dimension.make_energies(mix, 0)["linear"]
    found = mode_mass.sampled_masses(mix, energy, 1.0, 64, 0)
    assert set(found) == {"default", "resampling"}
    assert all(0 <= row["tv"] <= 1 for row in found.values())
    assert found["resampling"]["pool"] >= 64
