"""importance.py: the default estimator, ImportanceTilt, against closed forms.

A VarianceTable with a constant ratio r stands for the posterior N(x̂0, Σ̂), Σ̂ = r·σ²/α²·I, so
that every expectation below is over a known Gaussian.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from energy_guidance.importance import RANGE_MARGIN, SAMPLE_ESS, ImportanceTilt
from energy_guidance.schedulers import Prediction
from energy_guidance.variance import VarianceTable

D = 3


def table(ratio: float, low: float = -50.0, high: float = 50.0, d: int = D) -> VarianceTable:
    """Σ̂ = ratio·σ²/α²·I at every level (no data-variance bound), data range [low, high]^d."""
    return VarianceTable(
        log_snr=torch.tensor([-20.0, 20.0]),
        eps_norm=torch.full((2,), ratio),
        data_var=torch.full((2,), ratio),
        diagonal=torch.full((2, d), ratio),
        data_low=torch.full((d,), low),
        data_high=torch.full((d,), high),
    )


def call(estimator: ImportanceTilt, x0: torch.Tensor, s: float, x_t: torch.Tensor | None = None):
    """(E_t, ∇_{x_t}E_t, tilted mean) at x̂0 with α = 1, σ² = s (so Σ̂ = ratio·s·I). The draws
    are keyed by x_t (default x̂0): rows with equal x_t get equal draws."""
    b = x0.shape[0]
    x_t = x0 if x_t is None else x_t
    alpha, sigma = torch.ones(b, dtype=x0.dtype), torch.full((b,), math.sqrt(s), dtype=x0.dtype)
    value, grad = estimator.value_and_x_t_gradient(
        x_t, alpha, sigma, prediction=Prediction(eps=torch.zeros_like(x0), x0=x0)
    )
    return value, grad, x0 - (sigma**2 / alpha)[:, None] * grad  # m̃ = x̂0 - (σ²/α)·∇_{x_t}E_t


@settings(deadline=None, max_examples=30)
@given(beta=st.floats(0.01, 30.0), s=st.floats(0.01, 4.0), seed=st.integers(0, 2**16))
def test_linear_energy_is_exact(beta, s, seed):
    """E = wᵀx over N(x̂0, sI): m̃ = x̂0 - β·s·w and E_t = β·wᵀx̂0 - ½β²·s·‖w‖², whatever the draws
    (the Newton step is the tilted mean, so every importance weight is equal)."""
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    est = ImportanceTilt(lambda x: x @ w, beta, table(1.0, -1e6, 1e6), seed=seed)
    x0 = torch.randn(16, D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    value, _, mean = call(est, x0, s)
    torch.testing.assert_close(mean, x0 - beta * s * w, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(value, beta * x0 @ w - 0.5 * beta**2 * s * w.dot(w), rtol=1e-9, atol=1e-9)


@settings(deadline=None, max_examples=30)
@given(beta=st.floats(0.01, 30.0), k=st.floats(0.1, 20.0), s=st.floats(0.01, 4.0))
def test_newton_step_is_the_tilted_mean_of_an_isotropic_quadratic(beta, k, s):
    """E = ½k‖x - c‖² over N(x̂0, sI): the tilted posterior is Gaussian with mean
    (x̂0 + β·s·k·c)/(1 + β·s·k), which is the proposal's centre x̂0 + Δ; the step's proximal
    objective β·E(x̂0 + Δ) + ‖Δ‖²/2s is E_t = β·k·‖x̂0 - c‖²/2(1 + β·s·k) + (d/2)·log(1 + β·s·k)
    without its curvature term, the logarithm."""
    c = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    est = ImportanceTilt(lambda x: 0.5 * k * (x - c).pow(2).sum(1), beta, table(1.0))
    x0 = torch.randn(8, D, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    shift, proximal = est._newton_shift(x0, x0, torch.full_like(x0, s), None, None)
    torch.testing.assert_close(x0 + shift, (x0 + beta * s * k * c) / (1 + beta * s * k), rtol=1e-9, atol=1e-9)
    laplace = beta * k * (x0 - c).pow(2).sum(1) / (2 * (1 + beta * s * k))
    torch.testing.assert_close(proximal, laplace, rtol=1e-9, atol=1e-9)


def test_tilted_mean_of_an_isotropic_quadratic_is_exact():
    """E = ½k‖x - c‖²: the proposal is centred on the exact tilted mean and the draws come in
    antithetic pairs, on which the importance weights are equal (the weight depends on ‖z‖ only),
    so m̃ is exact whatever the draws."""
    k, beta, s = 4.0, 2.0, 0.5
    c = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    est = ImportanceTilt(lambda x: 0.5 * k * (x - c).pow(2).sum(1), beta, table(1.0))
    x0 = torch.randn(64, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, _, mean = call(est, x0, s)
    torch.testing.assert_close(mean, (x0 + beta * s * k * c) / (1 + beta * s * k), rtol=1e-9, atol=1e-9)


def test_plateau_energy_moves_toward_the_low_side():
    """A step E = sigmoid(50(a - x₁)), no gradient at x̂0 = 0: the draws find the step. The exact
    tilted mean μ̃ of x₁ over N(0, s) comes from a fine 1-D grid (the other coordinates do not
    tilt). m̃ is self-normalised importance sampling with n = 2M draws, whose mean is
    μ̃ + b/n + O(1/n²) with the first-order bias b = -E[w²(x - μ̃)]/E[w]² (w = exp(-βE)); with
    M = 64 the O(1/n²) rest is far below the standard error, so the average of m̃ over R calls
    must be within Z standard errors of μ̃ + b/n."""
    beta, s, a, pairs, repeats, z = 5.0, 1.0, 1.0, 64, 400, 5.0
    est = ImportanceTilt(lambda x: torch.sigmoid(50 * (a - x[:, 0])), beta, table(1.0), num_pairs=pairs)
    x0 = torch.zeros(repeats, D, dtype=torch.float64)
    states = torch.randn(repeats, D, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    _, _, mean = call(est, x0, s, x_t=states)  # draws are keyed by x_t: independent per row
    grid = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    density = torch.exp(-0.5 * grid**2 / s)
    density = density / density.sum()
    w = torch.exp(-beta * torch.sigmoid(50 * (a - grid)))
    mass = float((density * w).sum())
    exact = float((density * w * grid).sum()) / mass
    bias = -float((density * w**2 * (grid - exact)).sum()) / mass**2 / (2 * pairs)
    estimate, se = float(mean[:, 0].mean()), float(mean[:, 0].std()) / math.sqrt(repeats)
    assert exact > 10 * z * se  # the tilt moves the mean far beyond the tolerance
    assert abs(estimate - (exact + bias)) <= z * se, (estimate, exact, bias, se)


@settings(deadline=None, max_examples=40)
@given(beta=st.floats(0.1, 100.0), scale=st.floats(0.1, 100.0), s=st.floats(0.01, 10.0))
def test_accepted_newton_step_never_overshoots_a_bounded_energy(beta, scale, s):
    """The safeguard: an accepted step satisfies ½ΔᵀΣ̂⁻¹Δ ≤ β(E(x̂0) - E(x̂0 + Δ)) ≤ β·range(E),
    here for a sigmoid step of any steepness (range 1)."""
    est = ImportanceTilt(lambda x: torch.sigmoid(scale * (1 - x[:, 0])), beta, table(1.0))
    x0 = torch.linspace(-3, 3, 61, dtype=torch.float64)[:, None].expand(61, D).contiguous()
    var = torch.full_like(x0, s)
    shift, _ = est._newton_shift(x0, x0, var, None, None)
    assert (0.5 * (shift**2 / var).sum(1) <= beta * (1 + 1e-9)).all()


def test_tilted_mean_stays_in_the_data_range():
    """A linear energy at β = 1000 would move m̃ by 1000·s; it stops at the widened data box."""
    est = ImportanceTilt(lambda x: -x.sum(1), 1000.0, table(1.0, -1.0, 1.0))
    x0 = torch.zeros(4, D, dtype=torch.float64)
    _, _, mean = call(est, x0, 1.0)
    torch.testing.assert_close(mean, torch.full_like(mean, 1 + 2 * RANGE_MARGIN))


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="beta"):
        ImportanceTilt(lambda x: x.sum(1), -1.0)
    with pytest.raises(ValueError, match="num_pairs"):
        ImportanceTilt(lambda x: x.sum(1), 1.0, num_pairs=0)
    with pytest.raises(ValueError, match="max_components"):
        ImportanceTilt(lambda x: x.sum(1), 1.0, max_components=0)
    est = ImportanceTilt(lambda x: x.sum(1), 1.0)
    with pytest.raises(RuntimeError, match="VarianceTable"):
        call(est, torch.zeros(2, D), 1.0)


def covariance_table(cov: torch.Tensor) -> VarianceTable:
    """A table whose data covariance is ``cov`` (d, d): Σ̂ = C(I + (α²/σ²)·C)⁻¹, the posterior
    covariance of Gaussian data with covariance C."""
    d = cov.shape[0]
    t = table(1.0, -1e6, 1e6, d)
    lam, axes = torch.linalg.eigh(cov)
    t.principal_axes, t.principal_variance = axes, lam
    return t


@settings(deadline=None, max_examples=30)
@given(beta=st.floats(0.01, 10.0), s=st.floats(0.01, 4.0), seed=st.integers(0, 2**16))
def test_linear_energy_with_a_full_covariance_is_exact(beta, s, seed):
    """With the data covariance C in the table, Σ̂ = C(I + C/s)⁻¹ (α = 1, σ² = s) and, for
    E = wᵀx, m̃ = x̂0 - β·Σ̂·w and E_t = β·wᵀx̂0 - ½β²·wᵀΣ̂w exactly: the shift follows C's
    directions (toward other modes of the data), not w's."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(D, D, generator=g, dtype=torch.float64)
    cov = a @ a.T + 0.1 * torch.eye(D, dtype=torch.float64)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    est = ImportanceTilt(lambda x: x @ w, beta, covariance_table(cov))
    x0 = torch.randn(8, D, dtype=torch.float64, generator=g)
    value, _, mean = call(est, x0, s)
    sigma_hat = cov @ torch.linalg.inv(torch.eye(D, dtype=torch.float64) + cov / s)
    torch.testing.assert_close(mean, x0 - beta * (sigma_hat @ w), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(value, beta * x0 @ w - 0.5 * beta**2 * w @ sigma_hat @ w, rtol=1e-9, atol=1e-9)


def test_draws_are_standard_normal_and_belong_to_their_sample():
    """The hashed draws: each level's pool of P sets is standard normal (mean 0 and variance 1
    within 5 standard errors of its P·M·D distinct draws, 1/√n and √(2/n)); every set is used; a
    sample's draws depend on its own state and level only, not on the rest of its batch; fewer
    pairs are the first of the same set."""
    from energy_guidance.importance import _DRAW_SETS, _Draws

    def draws(states, level, seed=0):
        return _Draws.of_step(states, torch.tensor([level]), 8, D, seed, torch.float64)

    states = torch.randn(2000, D, generator=torch.Generator().manual_seed(0))
    z = draws(states, 0.5).normals(8)
    distinct = torch.unique(z.transpose(0, 1).reshape(2000, -1), dim=0)
    assert len(distinct) == _DRAW_SETS  # 2,000 samples pick every one of the P sets
    n = distinct.numel()
    assert abs(float(distinct.mean())) < 5 / math.sqrt(n)
    assert abs(float(distinct.var()) - 1) < 5 * math.sqrt(2 / n)
    alone = draws(states[7:8], 0.5).normals(8)
    assert torch.equal(alone[:, 0], z[:, 7])
    assert torch.equal(draws(states, 0.5).rows(torch.tensor([7, 7])).normals(3), z[:3, [7, 7]])
    assert not torch.equal(draws(states[7:8], 0.25).normals(8), alone)
    assert not torch.equal(draws(states[7:8], 0.5, seed=1).normals(8), alone)


def test_draw_keys_tell_apart_states_that_differ_in_signs_or_low_bits():
    """The keys of states that differ only in the signs of some coordinates (two of them, or all:
    x and -x), or in one coordinate's lowest bits, are distinct; a key summing v_j·c_j alone kept
    only the parity of the negative coordinates (2⁶³·c_j = 2⁶³ mod 2⁶⁴)."""
    from energy_guidance.importance import _draw_keys

    sigma = torch.tensor([0.5])
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    flipped = x.clone()
    flipped[:, [0, 3]] *= -1
    keys = _draw_keys(x, sigma)[0]
    assert bool((keys != _draw_keys(flipped, sigma)[0]).all())
    assert bool((keys != _draw_keys(-x, sigma)[0]).all())
    low = x[:1].double().view(torch.int64).repeat(4096, 1)
    low[:, 5] += torch.arange(4096)  # 4,096 states that differ in coordinate 5's lowest 12 bits
    assert len(torch.unique(_draw_keys(low.view(torch.float64), sigma)[0])) == 4096


def empirical_posterior(
    samples: torch.Tensor, x_t: torch.Tensor, s: float, energies: torch.Tensor, beta: float
):
    """The exact posterior of x_t = x0 + √s·ε under the empirical prior of ``samples`` (α = 1):
    its mean, and the tilted posterior's E_t = -log Σ p_i·exp(-β·E_i) and mean Σ p̃_i·x0_i,
    with p_i ∝ exp(-‖x_t - x0_i‖²/2s) and p̃_i ∝ p_i·exp(-β·E_i); also the ESS of p̃."""
    log_p = -((x_t[:, None] - samples[None]) ** 2).sum(-1) / (2 * s)
    p = torch.softmax(log_p, 1)
    log_tilted = log_p - beta * energies[None]
    tilted = torch.softmax(log_tilted, 1)
    value = torch.logsumexp(log_p, 1) - torch.logsumexp(log_tilted, 1)
    return p @ samples, value, tilted @ samples, 1 / (tilted**2).sum(1)


@settings(deadline=None, max_examples=30)
@given(beta=st.floats(0.01, 1.0), s=st.floats(100.0, 1000.0), seed=st.integers(0, 2**16))
def test_with_samples_in_the_table_the_tilt_at_high_noise_is_that_of_their_empirical_prior(beta, s, seed):
    """(7)–(8): where the tilted samples' ESS reaches SAMPLE_ESS the estimator's E_t and tilted
    mean are those of the empirical prior of the table's samples, exactly (a non-Gaussian energy,
    so that the Gaussian part, were it used, would differ)."""
    g = torch.Generator().manual_seed(seed)
    samples = 2 * torch.randn(64, D, generator=g, dtype=torch.float64)

    def energy(x):
        return torch.sin(3 * x[:, 0]) + 0.5 * x[:, 1].abs()

    t = table(0.5)
    t.samples = samples
    x_t = samples[:8] + math.sqrt(s) * torch.randn(8, D, generator=g, dtype=torch.float64)
    x0, value, tilted_mean, ess = empirical_posterior(samples, x_t, s, energy(samples), beta)
    assert bool((ess >= SAMPLE_ESS).all())  # the regime this test is about
    got_value, _, got_mean = call(ImportanceTilt(energy, beta, t), x0, s, x_t=x_t)
    torch.testing.assert_close(got_value, value, rtol=0, atol=1e-9)
    torch.testing.assert_close(got_mean, tilted_mean, rtol=0, atol=1e-9)


def test_with_samples_in_the_table_low_noise_keeps_the_gaussian_tilt():
    """Where one sample holds the whole posterior (ESS 1), the samples carry no information about
    the tilt and the estimator is the Gaussian one of the same table without them."""
    g = torch.Generator().manual_seed(0)
    samples = 2 * torch.randn(64, D, generator=g, dtype=torch.float64)
    s = 1e-3
    x_t = samples[:8] + math.sqrt(s) * torch.randn(8, D, generator=g, dtype=torch.float64)

    def energy(x):
        return (x - 1).pow(2).sum(1)

    x0, *_, ess = empirical_posterior(samples, x_t, s, energy(samples), 1.0)
    assert bool((ess < 1 + 1e-6).all())
    with_samples = table(0.5)
    with_samples.samples = samples
    got = call(ImportanceTilt(energy, 1.0, with_samples), x0, s, x_t=x_t)
    want = call(ImportanceTilt(energy, 1.0, table(0.5)), x0, s, x_t=x_t)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_samples_where_the_energy_is_not_finite_get_no_weight():
    """A table sample outside the energy's domain (E = nan or inf) has weight 0 in (7)–(8)."""
    g = torch.Generator().manual_seed(1)
    samples = 2 * torch.randn(64, D, generator=g, dtype=torch.float64)
    outside = torch.zeros(64, dtype=torch.bool)
    outside[::4] = True
    samples[outside, 0] = -30.0

    def energy(x):  # defined for x_0 > -20 (the Gaussian draws around x̂0 stay there)
        return torch.where(x[:, 0] > -20, 0.1 * x[:, 1], torch.nan)

    t = table(0.01)  # Σ̂ = 0.01·s·I: the Gaussian draws stay within ±3 of x̂0
    t.samples = samples
    s, beta = 100.0, 1.0
    x_t = 10 * torch.randn(4, D, generator=g, dtype=torch.float64)
    inside = samples[~outside]
    x0 = empirical_posterior(samples, x_t, s, torch.zeros(64, dtype=torch.float64), beta)[0]
    _, value, tilted_mean, _ = empirical_posterior(inside, x_t, s, energy(inside), beta)
    # the full prior's normaliser includes the samples outside: E_t = -log Σ_inside p_i·exp(-β·E_i)
    log_p = -((x_t[:, None] - samples[None]) ** 2).sum(-1) / (2 * s)
    value = value - (torch.logsumexp(log_p[:, ~outside], 1) - torch.logsumexp(log_p, 1))
    got_value, _, got_mean = call(ImportanceTilt(energy, beta, t), x0, s, x_t=x_t)
    torch.testing.assert_close(got_value, value, rtol=0, atol=1e-9)
    torch.testing.assert_close(got_mean, tilted_mean, rtol=0, atol=1e-9)


def test_with_every_sample_outside_the_energys_domain_the_gaussian_tilt_is_kept():
    """No table sample has a finite energy: (7) has no tilted weights, and the estimator is the
    Gaussian one of the same table without samples (not NaN)."""
    g = torch.Generator().manual_seed(2)
    samples = 2 * torch.randn(64, D, generator=g, dtype=torch.float64)
    samples[:, 0] = -30.0

    def energy(x):  # defined for x_0 > -20 only
        return torch.where(x[:, 0] > -20, 0.1 * x[:, 1], torch.nan)

    x_t = 3 * torch.randn(4, D, generator=g, dtype=torch.float64)
    x0 = x_t.clone()
    with_samples = table(0.01)
    with_samples.samples = samples
    got = call(ImportanceTilt(energy, 1.0, with_samples), x0, 100.0, x_t=x_t)
    want = call(ImportanceTilt(energy, 1.0, table(0.01)), x0, 100.0, x_t=x_t)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@settings(max_examples=40)
@given(
    seed=st.integers(0, 10_000),
    width=st.floats(0.1, 2_000.0),  # spreads of log w: up to far beyond float64's exp range
    outside=st.booleans(),
)
def test_exponentials_of_the_kernel_rows_equal_softmax_and_logsumexp(seed, width, outside):
    """(7)'s weights in place: exp(log w - row max) normalised is softmax(log w) up to entries
    more than 300 below the row's largest, which get exp(-300) (the -inf ones, samples outside the
    energy's domain, included: at most 40·5e-131 of a row's weight, so the absolute tolerance), and
    the row's log-normaliser is logsumexp(log w); a row with no finite entry has log-sum -inf and
    weights exactly 0."""
    from energy_guidance.importance import _exp_rows

    g = torch.Generator().manual_seed(seed)
    log_w = width * torch.randn(16, 40, generator=g, dtype=torch.float64)
    if outside:
        log_w[:, ::3] = -math.inf
        log_w[5] = -math.inf
    expected, expected_norm = torch.softmax(log_w, 1), torch.logsumexp(log_w, 1)
    w, log_norm, total = _exp_rows(log_w.clone())
    torch.testing.assert_close(total, w.sum(1), rtol=0, atol=0)  # the row sums it returns
    torch.testing.assert_close(log_norm, expected_norm, rtol=1e-12, atol=1e-9)
    live = torch.isfinite(expected_norm)
    torch.testing.assert_close(w[live] / w[live].sum(1, keepdim=True), expected[live], rtol=1e-12, atol=1e-15)
    assert bool((w[live] >= math.exp(-300) * (1 - 1e-12)).all())  # no denormal, no zero
    assert bool((w[~live] == 0).all()) and int(live.sum()) == 16 - int(outside)


@settings(max_examples=20)
@given(seed=st.integers(0, 10_000), width=st.floats(0.1, 2_000.0))
def test_rows_already_centred_give_the_same_exponentials(seed, width):
    """``centred=True`` (the caller subtracted each row's largest, which is then 0) skips looking
    for it: the same weights, log-sums and totals as the general path, bit for bit."""
    from energy_guidance.importance import _exp_rows

    log_w = width * torch.randn(16, 40, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    log_w -= log_w.amax(1, keepdim=True)
    for got, want in zip(_exp_rows(log_w.clone(), centred=True), _exp_rows(log_w.clone()), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("sigma", [1.0, 0.3, 0.05, 1e-3])
def test_the_samples_prior_in_float32_agrees_with_float64(sigma, monkeypatch):
    """(7) with float32 samples and a tilt spread β·(max E - min E) near the float32 limit (600 of
    1,000) against the same estimator forced to float64: every log-weight a row's sums see lies
    within 640 of 0 (_samples_tilt), so float32 holds it to a few times 640·2⁻²⁴ ≈ 4e-5; E_t^s
    then agrees to 1e-3, ρ to 1e-3 and m̃^s to 1e-3 of the samples' scale (3)."""
    from energy_guidance import importance

    g = torch.Generator().manual_seed(0)
    samples = 3 * torch.randn(400, D, generator=g)
    with_samples = table(1.0)
    with_samples.samples = samples
    x0 = 3 * torch.randn(64, D, generator=g)
    x_t = x0 + sigma * torch.randn(64, D, generator=g)
    a, s = torch.ones(64), torch.full((64,), sigma)

    def linear(x):
        return 20 * x[:, 0]

    single = ImportanceTilt(linear, 1.0, with_samples)
    got = single._samples_tilt(samples, x_t, a, s, x0)
    assert single._samples.tilt.dtype == torch.float32 and 400 < float(single._samples.tilt.max()) < 1000
    monkeypatch.setattr(importance, "_SINGLE_SPREAD", -1.0)
    double = ImportanceTilt(linear, 1.0, with_samples)
    want = double._samples_tilt(samples, x_t, a, s, x0)
    assert double._samples.tilt.dtype == torch.float64
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-3)  # E_t^s
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=3e-3)  # m̃^s
    torch.testing.assert_close(got[2], want[2], rtol=0, atol=1e-3)  # ρ


def test_the_samples_prior_stays_float64_where_float32_has_no_bound():
    """float32 weights only where x0 is not float64, every sample's energy is finite and the
    tilt's spread over the samples is at most _SINGLE_SPREAD; the prior is rebuilt when x0's
    dtype changes (the energies are evaluated in it)."""
    samples = torch.linspace(-1, 1, 200)[:, None].expand(200, D).contiguous()
    with_samples = table(1.0)
    with_samples.samples = samples
    x0, one = torch.zeros(4, D), torch.ones(4)

    def prior_dtype(energy, beta, x0=x0, estimator=None):
        estimator = estimator or ImportanceTilt(energy, beta, with_samples)
        estimator._samples_tilt(samples, x0, one.to(x0), one.to(x0), x0)
        return estimator._samples.tilt.dtype

    assert prior_dtype(lambda x: 100 * x[:, 0], 1.0) == torch.float32  # spread 200
    assert prior_dtype(lambda x: 100 * x[:, 0], 6.0) == torch.float64  # spread 1,200
    assert prior_dtype(lambda x: 100 * x[:, 0], 1.0, x0.double()) == torch.float64

    def outside(x):  # one sample outside the energy's domain
        return torch.where(x[:, 0] > 0.999, torch.inf, x[:, 0])

    assert prior_dtype(outside, 1.0) == torch.float64
    estimator = ImportanceTilt(lambda x: 100 * x[:, 0], 1.0, with_samples)
    assert prior_dtype(None, 1.0, x0, estimator) == torch.float32
    assert prior_dtype(None, 1.0, x0.double(), estimator) == torch.float64


def test_the_float32_floor_keeps_weights_and_their_squares_normal():
    """_exp_rows in float32 clamps at 40 below a row's largest: no weight below exp(-40) and no
    square below float32's smallest normal number (a denormal takes a slow path), -inf included."""
    from energy_guidance.importance import _exp_rows

    log_w = 2_000 * torch.randn(16, 40, generator=torch.Generator().manual_seed(0))
    log_w[:, ::3] = -math.inf
    w, _, _ = _exp_rows(log_w)
    assert float(w.min()) >= math.exp(-40) * (1 - 1e-6)
    assert float((w * w).min()) >= torch.finfo(torch.float32).tiny


@pytest.mark.parametrize(("beta", "mild"), [(0.1, True), (30.0, False)])
def test_a_mild_tilt_points_to_importance_resampling_once(beta, mild, caplog):
    """The ESS fraction of exp(-β·E) over the table's samples decides the INFO line: a linear
    energy on 200 standard normal samples keeps exp(-β²) of them, 99 % at β = 0.1, ~0 at β = 30."""
    samples = torch.randn(200, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with_samples = table(0.5)
    with_samples.samples = samples
    estimator = ImportanceTilt(lambda x: x[:, 0], beta, with_samples)
    x0 = torch.zeros(4, D, dtype=torch.float64)
    with caplog.at_level("INFO", logger="energy_guidance.importance"):
        call(estimator, x0, 10.0)
        call(estimator, x0, 10.0)  # the energies are computed once: one line at most
    lines = [r.getMessage() for r in caplog.records if "the tilt is mild" in r.getMessage()]
    assert len(lines) == (1 if mild else 0)
    if mild:
        assert "tilted_sample" in lines[0] and "of the 200 samples" in lines[0]


def mixture_table(samples: torch.Tensor) -> VarianceTable:
    """A table with ``samples`` (N, D) and their covariance (so that the mixture (9) applies)."""
    t = covariance_table(torch.cov(samples.T))
    t.samples = samples
    return t


@settings(deadline=None, max_examples=30)
@given(beta=st.floats(0.01, 10.0), s=st.floats(0.01, 100.0), seed=st.integers(0, 2**16))
def test_with_a_mixture_fit_a_linear_tilt_is_the_exact_tilt_of_the_mixture(beta, s, seed):
    """(9): samples of two separated modes fit a two-component tied mixture; with the samples'
    own tilt (7) switched off, a linear E = wᵀx gives, with S = W(I + W/s)⁻¹ (α = 1, σ² = s) and
    the components' posterior means m_k anchored on x̂0 (c_k = m_k + x̂0 - Σ_j r_j·m_j),

        E_t = -log Σ_k r_k·exp(-β·wᵀc_k + ½β²·wᵀSw),   m̃ = Σ_k r̃_k·c_k - β·S·w,

    r̃_k ∝ r_k·exp(-β·wᵀc_k): the components reweighted by the tilt, each shifted by its own
    posterior covariance (not the data's, which holds the distance between the modes)."""
    from unittest import mock

    import energy_guidance.importance as importance
    from energy_guidance.mixture import fit_tied_mixture

    g = torch.Generator().manual_seed(seed)
    modes = torch.tensor([[-3.0, 0.0, 0.0], [3.0, 1.0, 0.0]], dtype=torch.float64)
    samples = modes[torch.arange(256) % 2] + 0.5 * torch.randn(256, D, generator=g, dtype=torch.float64)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    fit = fit_tied_mixture(samples)
    assert fit.num_components == 2
    x_t = samples[:8] + math.sqrt(s) * torch.randn(8, D, generator=g, dtype=torch.float64)
    x0 = samples[8:16]  # any x̂0: the estimator anchors on it
    one, sig = torch.ones(8, dtype=torch.float64), torch.full((8,), math.sqrt(s), dtype=torch.float64)
    log_r, m = fit.posterior(x_t, one, sig)
    c = m + (x0 - (log_r.exp()[:, :, None] * m).sum(1))[:, None]
    cov = fit.axes @ torch.diag(fit.variance) @ fit.axes.T
    post = cov @ torch.linalg.inv(torch.eye(D, dtype=torch.float64) + cov / s)
    log_tilt = log_r - beta * c @ w
    value = -torch.logsumexp(log_tilt + 0.5 * beta**2 * w @ post @ w, 1)
    mean = (torch.softmax(log_tilt, 1)[:, :, None] * c).sum(1) - beta * post @ w
    with mock.patch.object(importance, "SAMPLE_ESS", math.inf):
        estimator = ImportanceTilt(lambda x: x @ w, beta, mixture_table(samples))
        got_value, _, got_mean = call(estimator, x0, s, x_t)
    torch.testing.assert_close(got_mean, mean, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(got_value, value, rtol=1e-8, atol=1e-8)


def test_gaussian_samples_keep_the_single_gaussian_of_the_tables_covariance():
    """Where one component fits the samples best, the estimator is the single-Gaussian one of the
    table's covariance, as without the mixture (a table without samples, (7) switched off)."""
    from unittest import mock

    import energy_guidance.importance as importance

    g = torch.Generator().manual_seed(0)
    samples = torch.randn(256, D, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5])
    x0 = torch.randn(8, D, generator=g, dtype=torch.float64)

    def energy(x):
        return (x - 1).pow(2).sum(1)

    with mock.patch.object(importance, "SAMPLE_ESS", math.inf):
        got = call(ImportanceTilt(energy, 2.0, mixture_table(samples)), x0, 3.0)
    want = call(ImportanceTilt(energy, 2.0, covariance_table(torch.cov(samples.T))), x0, 3.0)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_a_mixture_component_outside_the_energys_domain_gets_no_weight():
    """(9), as a sample in (7): where the energy is NaN on one mode (E = -x_1 for x_1 > -1 only)
    and x̂0 lies in the other, the first component drops out instead of failing the sample: E_t
    and m̃ are those of the second component alone, E_t = -log r_2 + β·wᵀc_2 - ½β²·wᵀSw and
    m̃ = c_2 - β·S·w, the components' r_k and c_k as in the test above ((7) switched off)."""
    from unittest import mock

    import energy_guidance.importance as importance
    from energy_guidance.mixture import fit_tied_mixture

    g = torch.Generator().manual_seed(0)
    modes = torch.tensor([[-3.0, 0.0, 0.0], [3.0, 1.0, 0.0]], dtype=torch.float64)
    samples = modes[torch.arange(256) % 2] + 0.5 * torch.randn(256, D, generator=g, dtype=torch.float64)
    w = torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64)

    def energy(x):
        return torch.where(x[:, 0] > -1, x @ w.to(x), torch.nan)

    beta, s = 1.0, 4.0
    fit = fit_tied_mixture(samples)
    x_t = torch.zeros(4, D, dtype=torch.float64) + torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64)
    x0 = torch.tensor([[2.5, 1.0, 0.0]], dtype=torch.float64).expand(4, D).contiguous()
    one, sig = torch.ones(4, dtype=torch.float64), torch.full((4,), math.sqrt(s), dtype=torch.float64)
    log_r, m = fit.posterior(x_t, one, sig)
    assert bool((log_r.exp() > 0.01).all())  # both components hold the posterior here
    second = int(fit.means[:, 0].argmax())
    c = m[:, second] + x0 - (log_r.exp()[:, :, None] * m).sum(1)
    cov = fit.axes @ torch.diag(fit.variance) @ fit.axes.T
    post = cov @ torch.linalg.inv(torch.eye(D, dtype=torch.float64) + cov / s)
    with mock.patch.object(importance, "SAMPLE_ESS", math.inf):
        value, _, mean = call(ImportanceTilt(energy, beta, mixture_table(samples)), x0, s, x_t)
    torch.testing.assert_close(mean, c - beta * post @ w, rtol=1e-8, atol=1e-8)
    expected = -log_r[:, second] + beta * c @ w - 0.5 * beta**2 * w @ post @ w
    torch.testing.assert_close(value, expected, rtol=1e-8, atol=1e-8)


def test_with_a_condition_rows_at_different_noise_levels_keep_their_condition():
    """A batch whose rows are at different noise levels, one of them with Σ̂ = 0 (unguided): the
    energy still gets its cond for the guided rows, whose result is that of the row alone."""
    t = VarianceTable(
        log_snr=torch.tensor([-20.0, 20.0]),
        eps_norm=torch.full((2,), 0.5),
        data_var=torch.full((2,), 0.5),
        diagonal=torch.tensor([[0.5] * D, [0.0] * D]),
        data_low=torch.full((D,), -50.0),
        data_high=torch.full((D,), 50.0),
    )

    def energy(x, cond):
        return ((x - cond) ** 2).sum(1)

    est = ImportanceTilt(energy, 1.0, t)
    x0 = torch.randn(2, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cond = torch.ones(2, D, dtype=torch.float64)
    alpha = torch.ones(2, dtype=torch.float64)
    sigma = torch.tensor([1.0, math.exp(-10.0)], dtype=torch.float64)  # log-SNR 0 and 20
    prediction = Prediction(eps=torch.zeros_like(x0), x0=x0)
    value, grad = est.value_and_x_t_gradient(x0, alpha, sigma, cond, prediction=prediction)
    assert float(value[1]) == 0.0 and bool((grad[1] == 0).all())  # Σ̂ = 0: unguided
    alone = est.value_and_x_t_gradient(
        x0[:1], alpha[:1], sigma[:1], cond[:1], prediction=Prediction(eps=torch.zeros_like(x0[:1]), x0=x0[:1])
    )
    torch.testing.assert_close(value[:1], alone[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(grad[:1], alone[1], rtol=0, atol=1e-12)


def high_noise_case(seed: int):
    """(a table with 64 samples, σ² = 500, those samples, 8 states x_t of the first 8 at that noise
    level): the samples' prior (7) settles every row there."""
    g = torch.Generator().manual_seed(seed)
    samples = 2 * torch.randn(64, D, generator=g, dtype=torch.float64)
    t = table(0.5)
    t.samples = samples
    s = 500.0
    x_t = samples[:8] + math.sqrt(s) * torch.randn(8, D, generator=g, dtype=torch.float64)
    return t, s, samples, x_t


def test_the_gradient_at_x0_is_checked_at_the_first_call_with_each_energy():
    """At high noise, where the samples' prior (7) settles every row and no Newton step reads ∇E:
    a non-differentiable energy is named at the first call; a NaN gradient at x̂0 is named and
    checked again at the next call; later calls with the same energy read only its value; an
    energy put in place of the first is checked at its own first call."""
    from energy_guidance.callables import NonFiniteError

    t, s, samples, x_t = high_noise_case(0)
    x0 = empirical_posterior(samples, x_t, s, torch.zeros(64, dtype=torch.float64), 0.0)[0]

    def smooth(x):
        return 0.1 * x[:, 0]

    def detached(x):
        return smooth(x).detach()

    def nan_gradient(x):  # finite values, NaN gradient (√ at 0 times 0)
        return smooth(x) + 0 * (x[:, 1] - x[:, 1].detach()).abs().sqrt()

    est = ImportanceTilt(detached, 0.1, t)
    with pytest.raises(TypeError, match="does not depend differentiably on x0"):
        call(est, x0, s, x_t=x_t)
    est = ImportanceTilt(nan_gradient, 0.1, t)
    for _ in range(2):  # named each time: a failed check is not recorded as done
        with pytest.raises(NonFiniteError):
            call(est, x0, s, x_t=x_t)
    seen = []

    def recording(x):
        seen.append(x.requires_grad)
        return smooth(x)

    est = ImportanceTilt(recording, 0.1, t)
    call(est, x0, s, x_t=x_t)
    first = list(seen)
    seen.clear()
    call(est, x0, s, x_t=x_t)
    assert any(first) and not any(seen)  # the gradient read once, then values only
    est.energy = detached
    with pytest.raises(TypeError, match="does not depend differentiably on x0"):
        call(est, x0, s, x_t=x_t)


def test_the_samples_prior_follows_the_estimators_energy_and_beta():
    """(7)'s cached energies of the table's samples are those of the current energy and β: an
    estimator whose energy or β is replaced gives what a new one with them gives."""
    t, s, samples, x_t = high_noise_case(1)
    x0 = samples[:8]

    def first(x):
        return x[:, 0]

    def second(x):
        return torch.sin(3 * x[:, 1])

    est = ImportanceTilt(first, 0.5, t)
    call(est, x0, s, x_t=x_t)
    est.energy, est.beta = second, 0.8
    got = call(est, x0, s, x_t=x_t)
    want = call(ImportanceTilt(second, 0.8, t), x0, s, x_t=x_t)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
