"""The six 2-D toy data sets and their smooth energies."""

from __future__ import annotations

import math

import pytest
import torch

from energy_guidance.recipes.toys2d import DATASETS, toy_dataset

N = 4000


@pytest.mark.parametrize("name", DATASETS)
def test_samples_are_reproducible_finite_and_labelled(name):
    ds = toy_dataset(name)
    x, label = ds.sample(N, torch.Generator().manual_seed(0))
    again, _ = ds.sample(N, torch.Generator().manual_seed(0))
    other, _ = ds.sample(N, torch.Generator().manual_seed(1))
    assert x.shape == (N, 2) and label.shape == (N,)
    assert x.dtype == torch.float32 and label.dtype == torch.float32
    assert torch.equal(x, again) and not torch.equal(x, other)
    assert torch.isfinite(x).all() and x.abs().max() < 5
    if name != "swissroll":  # QGPO's swiss-roll label ‖x‖²/9 is unbounded
        assert label.min() >= 0 and label.max() <= 1


@pytest.mark.parametrize("name", DATASETS)
def test_smooth_label_agrees_with_the_discrete_label(name):
    # The smooth label ℓ(x) = -E(x) differs from the generating label only where the generating
    # noise carries a point across into another label's region (mass well under 1% for these
    # noise levels), or through the documented approximation of QGPO's rule (2spirals: the angle
    # from the radius; checkerboard: a smooth step of width ~0.2 across cell edges).
    ds = toy_dataset(name)
    x, label = ds.sample(N, torch.Generator().manual_seed(2))
    err = (-ds.energy(x) - label).abs()
    assert (err > 0.5).float().mean() < 0.01
    assert err.mean() < 0.1


@pytest.mark.parametrize("name", DATASETS)
def test_energy_is_differentiable_per_sample(name):
    ds = toy_dataset(name)
    x, _ = ds.sample(64, torch.Generator().manual_seed(3))
    x = x.double().requires_grad_(True)
    e = ds.energy(x)
    assert e.shape == (64,) and e.dtype == torch.float64
    (grad,) = torch.autograd.grad(e.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # Per-sample: the energy of one row does not depend on the others.
    torch.testing.assert_close(ds.energy(x[:5]), e[:5])


def test_eight_gaussians_centres_and_labels():
    x, label = toy_dataset("8gaussians").sample(N, torch.Generator().manual_seed(4))
    radius = x.norm(dim=1)
    # centres at radius 4/1.414 with per-coordinate std 0.5/1.414: the mean radius is within
    # 4 standard errors (std ≤ 0.36) of 2.83 + E-correction s²/(2r) ≈ 0.02
    assert abs(float(radius.mean()) - (4 / 1.414 + 0.0221)) < 4 * 0.36 / math.sqrt(N)
    counts = torch.bincount((label * 7).round().long(), minlength=8).float()
    # each centre has probability 1/8; binomial standard deviation sqrt(N·(1/8)·(7/8))
    assert torch.all((counts - N / 8).abs() < 4 * math.sqrt(N * 7 / 64))


@pytest.mark.parametrize("name", ["swissroll", "moons"])
def test_matches_scikit_learn_generator(name):
    # Same distribution as sklearn's make_swiss_roll / make_moons plus QGPO's transform:
    # means and second moments agree within 4 two-sample standard errors.
    datasets = pytest.importorskip("sklearn.datasets")
    ours, _ = toy_dataset(name).sample(N, torch.Generator().manual_seed(5))
    if name == "swissroll":
        ref = datasets.make_swiss_roll(n_samples=N, noise=1.0, random_state=0)[0][:, [0, 2]] / 5
    else:
        ref = datasets.make_moons(n_samples=N, noise=0.1, random_state=0)[0] * 2 + [-1, -0.2]
    ref = torch.from_numpy(ref)
    for stat in (lambda v: v, lambda v: v**2):
        a, b = stat(ours.double()), stat(ref)
        se = (a.var(0) / N + b.var(0) / N).sqrt()
        assert torch.all((a.mean(0) - b.mean(0)).abs() < 4 * se)


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown"):
        toy_dataset("pinwheel")
