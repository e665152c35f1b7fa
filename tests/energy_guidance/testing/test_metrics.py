"""metrics.py: sliced Wasserstein-2 and MMD, unweighted and against weighted point sets."""

import math

import torch

from energy_guidance.testing import mmd, sliced_wasserstein


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
