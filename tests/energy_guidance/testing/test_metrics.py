"""metrics.py: sliced Wasserstein-2 and MMD, unweighted and against weighted point sets."""

import math

import torch

from energy_guidance.testing import WeightedTarget, mmd, sliced_wasserstein


def test_sliced_wasserstein_of_a_shift_is_the_mean_projected_shift():
    """For y = x + c every 1-D quantile shifts by θᵀc, so SW₂² = mean_θ (θᵀc)², whose mean over
    uniform directions in 2-D is ‖c‖²/2 with per-projection variance ‖c‖⁴/8 (cos²φ has variance
    1/8): the estimate must lie within 5 standard errors of that."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 2, generator=gen)
    c = torch.tensor([0.6, -0.8])
    projections = 4096
    sw2 = sliced_wasserstein(x, x + c, projections, torch.Generator().manual_seed(1)) ** 2
    expected, stderr = c.pow(2).sum() / 2, c.pow(2).sum() * math.sqrt(1 / 8 / projections)
    assert abs(sw2 - float(expected)) < 5 * float(stderr)
    assert sliced_wasserstein(x, x, 64, torch.Generator().manual_seed(1)) == 0.0


def test_uniform_weights_are_the_unweighted_set_and_weights_select_points():
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(300, 2, generator=gen), torch.randn(200, 2, generator=gen) + 1
    same = [
        sliced_wasserstein(x, y, 32, torch.Generator().manual_seed(3), y_weights=w)
        for w in (None, torch.ones(200))
    ]
    assert same[0] == same[1]
    # Zero weight on the second half: the weighted set is the first half.
    half = torch.cat([torch.ones(100), torch.zeros(100)])
    weighted = sliced_wasserstein(x, y, 32, torch.Generator().manual_seed(3), y_weights=half)
    assert weighted == sliced_wasserstein(x, y[:100], 32, torch.Generator().manual_seed(3))


def test_mmd_weighted_target_is_the_v_statistic_of_the_set():
    """With uniform weights the y-y term is the V-statistic Σ K / m², against the unbiased
    (Σ K − tr K)/(m(m−1)) without weights; everything else is identical."""
    gen = torch.Generator().manual_seed(4)
    x, y = (
        torch.randn(150, 2, generator=gen, dtype=torch.float64),
        torch.randn(100, 2, generator=gen, dtype=torch.float64),
    )
    h = 0.7
    gram = torch.exp(-torch.cdist(y, y).pow(2) / (2 * h**2))
    m = len(y)
    difference = gram.sum() / m**2 - (gram.sum() - gram.diagonal().sum()) / (m * (m - 1))
    weighted, unweighted = mmd(x, y, h, y_weights=torch.ones(m)), mmd(x, y, h)
    assert math.isclose(weighted - unweighted, float(difference), rel_tol=1e-9, abs_tol=1e-12)


def test_weighted_samples_are_the_unweighted_set_and_weights_select_points():
    """x_weights: uniform weights are the unweighted samples; zero weights drop points. For MMD the
    x-x term of uniform weights is the unbiased one."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(120, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(80, 2, generator=gen, dtype=torch.float64) + 0.5
    w = torch.rand(80, generator=gen, dtype=torch.float64)

    def sw(x, **kw):
        return sliced_wasserstein(x, y, 32, torch.Generator().manual_seed(6), y_weights=w, **kw)

    assert sw(x, x_weights=torch.ones(120)) == sw(x)
    assert sw(x, x_weights=torch.cat([torch.ones(60), torch.zeros(60)])) == sw(x[:60])
    for bandwidth in (0.5, (0.2, 0.5, 1.0)):
        uniform = mmd(x, y, bandwidth, y_weights=w, x_weights=torch.full((120,), 3.0))
        assert math.isclose(uniform, mmd(x, y, bandwidth, y_weights=w), rel_tol=1e-9, abs_tol=1e-12)


def test_weighted_target_scores_as_the_functions_do():
    """WeightedTarget (the target's terms computed once, kernels in chunks) gives the functions'
    numbers, for plain and weighted samples, every call."""
    gen = torch.Generator().manual_seed(7)
    y = torch.randn(700, 2, generator=gen)  # more than one kernel chunk
    w = torch.rand(700, generator=gen)
    target = WeightedTarget(
        y, w, num_projections=64, generator=torch.Generator().manual_seed(8), bandwidths=(0.3, 1.0)
    )
    for _ in range(2):
        x = torch.randn(90, 2, generator=gen)
        v = torch.rand(90, generator=gen)
        expected_sw = sliced_wasserstein(x, y, 64, torch.Generator().manual_seed(8), y_weights=w, x_weights=v)
        assert target.sliced_wasserstein(x, v) == expected_sw
        expected_mmd = mmd(x, y, (0.3, 1.0), y_weights=w, x_weights=v)
        assert math.isclose(target.mmd(x, v), expected_mmd, rel_tol=1e-12, abs_tol=1e-15)
