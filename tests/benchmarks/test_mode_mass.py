"""The mode-mass benchmark: its closed form against the tilted mixture's own, and a tiny run
(one data seed, 64 points, 2 repeats) so that it cannot rot."""

import math

import torch

from benchmarks import dimension, mode_mass


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
    x, labels = mode_mass.labelled_sample(mix, 200_000, torch.Generator().manual_seed(0))
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
