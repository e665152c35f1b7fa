"""posterior.py: Tweedie's mean and every posterior-variance estimator against exact values.

Gaussian data N(m, diag(v)) with its exact noise model has the x_t-independent posterior
Cov[x0 | x_t] = diag(v·σ²/(α²·v + σ²)): every estimator must reproduce it (the marginal ones up
to their Monte Carlo error, which is known in closed form here). For a two-component mixture the
Jacobian estimator is locally exact, and the table estimators estimate E_{x_t ~ q_t} Cov[x0 | x_t]
(law of total variance), which is computed by Monte Carlo from the exact posterior moments.
"""

import math

import diffusers
import numpy as np
import pytest
import torch

from energy_guidance.baselines import CountingModel
from energy_guidance.posterior import MAX_COVARIANCE_DIM, variance_estimator
from energy_guidance.schedulers import log_snr, noise_level, prediction_type, to_eps_x0
from energy_guidance.testing import GaussianMixture
from energy_guidance.variance import (
    Constant,
    DataVar,
    Diagonal,
    EpsNorm,
    Jacobian,
    VarianceTable,
    estimate_variance_table,
)

from .schedulers import make_scheduler

Z = 5.0  # standard errors allowed between a Monte Carlo estimate and its target

MEAN = [0.5, -1.0, 0.2]
VAR = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)


def table_timesteps(scheduler, num_levels: int) -> torch.Tensor:
    """The training timesteps estimate_variance_table uses for ``num_levels`` rows."""
    num_train = scheduler.config.num_train_timesteps
    return torch.linspace(0, num_train - 1, num_levels).round().long().unique()


def exact_gaussian_variance(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """v·σ²/(α²·v + σ²) per level and dimension: (L, d)."""
    a2, s2 = alpha[:, None] ** 2, sigma[:, None] ** 2
    return VAR * s2 / (a2 * VAR + s2)


def test_tweedie_mean_is_the_exact_posterior_mean():
    gm = GaussianMixture.gaussian(MEAN, VAR)
    x_t = torch.randn(6, 3, dtype=torch.float64)
    alpha = torch.linspace(0.2, 0.9, 6, dtype=torch.float64)
    sigma = (1 - alpha**2).sqrt()
    eps = gm.noise_prediction(x_t, alpha, sigma)
    torch.testing.assert_close(
        to_eps_x0(eps, x_t, alpha, sigma, "epsilon").x0, gm.posterior_mean(x_t, alpha, sigma)
    )


@pytest.mark.parametrize("name", ["ddpm-eps", "ddpm-v", "euler-x0"])
def test_table_estimators_match_the_exact_gaussian_posterior_variance(name):
    """eps_norm, data_var and diagonal from N = 4000 points against v·σ²/(α²v + σ²), at each row.

    Standard errors, in closed form for Gaussian data. Per dimension (dropping the index i), with
    y = x0 - m ~ N(0, v), ε ~ N(0, 1), k = α·v/(α²v + σ²) and c = σ²/(α²v + σ²):
    - eps_norm = σ²/α²·(1 - mean ε̂²) with ε̂ ~ N(0, c): Var(ε̂²) = 2c².
    - data_var ≈ mean_n q_n, q = y² - (x̂0 - m)² = y² - k²(α·y + σ·ε)², a quadratic form in
      (y, ε): Var(q) = 2·tr((MΣ)²) = 2·[((1 - k²α²)·v)² + 2k⁴α²σ²v + k⁴σ⁴].
      The table centres at the empirical mean m̂ = m + ȳ and uses the unbiased variance; that
      shifts it from mean_n q_n by Σy²/(N(N-1)) - ȳ·(2·δ̄ + ȳ/(N-1)) with δ = x̂0 - x0 =
      -c·y + k·σ·ε ~ N(0, r), r = c²v + k²σ². At 5 standard errors of ȳ and δ̄ this is at most
      (v + 50·sqrt(v·r))/N, which is allowed on top.
    - diagonal: the same per dimension; eps_norm and data_var average over the d dimensions.
    Clamping to [0, σ²/α²] moves an estimate towards the exact value (which lies in that range),
    so it never increases the error. The table is stored in float32: 1e-6 relative allowance.
    """
    scheduler = make_scheduler(name)
    gm = GaussianMixture.gaussian(MEAN, VAR)
    n, d, levels = 4000, 3, 12
    gen = torch.Generator().manual_seed(0)
    data = gm.sample(n, generator=gen)
    table = estimate_variance_table(
        scheduler, gm.noise_model(scheduler), data, num_levels=levels, generator=gen
    )
    timesteps = table_timesteps(scheduler, levels)
    assert len(table.log_snr) == len(timesteps)
    alpha, sigma = noise_level(scheduler, timesteps)
    exact = exact_gaussian_variance(alpha, sigma)
    scale = sigma**2 / alpha**2
    a, s = alpha[:, None], sigma[:, None]
    c = s**2 / (a**2 * VAR + s**2)
    k = a * VAR / (a**2 * VAR + s**2)
    var_q = 2 * (((1 - k**2 * a**2) * VAR) ** 2 + 2 * k**4 * a**2 * s**2 * VAR + k**4 * s**4)  # (L, d)
    r = c**2 * VAR + k**2 * s**2
    centring = (VAR + 50 * (VAR * r).sqrt()) / n  # (L, d)
    float_tol = 1e-6 * scale

    unit = torch.full((len(timesteps), d), 1 / math.sqrt(d), dtype=torch.float64)  # ‖g‖ = 1
    eps_norm = EpsNorm(table).quadratic(unit, alpha, sigma)
    se_eps = scale * (2 * c**2 / n).sum(1).sqrt() / d
    assert ((eps_norm - exact.mean(1)).abs() <= Z * se_eps + float_tol).all()

    data_var = DataVar(table).quadratic(unit, alpha, sigma)
    se_var = (var_q / n).sum(1).sqrt() / d
    assert ((data_var - exact.mean(1)).abs() <= Z * se_var + centring.mean(1) + float_tol).all()

    for i in range(d):
        e_i = torch.zeros(len(timesteps), d, dtype=torch.float64)
        e_i[:, i] = 1.0
        diagonal = Diagonal(table).quadratic(e_i, alpha, sigma)
        se_i = (var_q[:, i] / n).sqrt()
        assert ((diagonal - exact[:, i]).abs() <= Z * se_i + centring[:, i] + float_tol).all()


@pytest.mark.parametrize("name", ["ddpm-eps", "ddpm-v", "ddpm-x0", "flow-euler"])
def test_jacobian_estimator_is_exact_for_gaussian_data(name):
    """gᵀ Σ̂ g from one vector-Jacobian product equals gᵀ diag(v·σ²/(α²v + σ²)) g, any g and x_t."""
    scheduler = make_scheduler(name)
    gm = GaussianMixture.gaussian(MEAN, VAR)
    model = gm.noise_model(scheduler)
    gen = torch.Generator().manual_seed(1)
    for t in (20, 400, 900):
        alpha, sigma = (c.expand(5) for c in noise_level(scheduler, t))
        x_t = torch.randn(5, 3, generator=gen, dtype=torch.float64).requires_grad_(True)
        g = torch.randn(5, 3, generator=gen, dtype=torch.float64)
        eps_hat, _ = to_eps_x0(model(x_t, torch.full((5,), t)), x_t, alpha, sigma, prediction_type(scheduler))
        quad = Jacobian().quadratic(g, alpha, sigma, eps_hat=eps_hat, x_t=x_t)
        expected = (g**2 * exact_gaussian_variance(alpha, sigma)).sum(1)
        torch.testing.assert_close(quad, expected, rtol=1e-9, atol=1e-12)


def test_constant_estimator_and_its_clamp():
    """Σ̂ = c·I: exact when c is the (isotropic) posterior variance, capped at σ²/α²."""
    alpha = torch.tensor([0.9, 0.5], dtype=torch.float64)
    sigma = (1 - alpha**2).sqrt()
    v = 0.8
    exact = v * sigma**2 / (alpha**2 * v + sigma**2)
    g = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=torch.float64)
    g_sq = (g**2).sum(1)
    for i in range(2):
        quad = Constant(float(exact[i])).quadratic(g[i : i + 1], alpha[i : i + 1], sigma[i : i + 1])
        torch.testing.assert_close(quad, exact[i : i + 1] * g_sq[i : i + 1])
    huge = variance_estimator(1e6).quadratic(g, alpha, sigma)
    torch.testing.assert_close(huge, sigma**2 / alpha**2 * g_sq)
    with pytest.raises(ValueError, match="must be >= 0"):
        Constant(-0.1)


# --- two-component mixture -------------------------------------------------------------------


def two_modes() -> GaussianMixture:
    return GaussianMixture(
        torch.tensor([0.6, 0.4]),
        torch.tensor([[-1.2, 0.4], [1.0, -0.6]]),
        torch.tensor([[0.25, 0.4], [0.5, 0.15]]),
    )


def test_jacobian_estimator_is_locally_exact_for_a_mixture_and_clamped():
    """gᵀΣ̂g = clamp(gᵀ Cov[x0 | x_t] g, 0, σ²/α²·‖g‖²) with the exact mixture posterior covariance.

    Between the modes the posterior is bimodal and its variance exceeds the flat-prior bound σ²/α²:
    the test requires that both clamped and unclamped cases occur.
    """
    gm = two_modes()
    scheduler = diffusers.DDPMScheduler()
    model = gm.noise_model(scheduler)
    gen = torch.Generator().manual_seed(2)
    direction = (gm.means[1] - gm.means[0]).to(torch.float64)
    clamped = unclamped = 0
    for t in (30, 150, 500, 900):
        alpha, sigma = (c.expand(40) for c in noise_level(scheduler, t))
        along = torch.linspace(-0.5, 1.5, 40, dtype=torch.float64)[:, None]
        x_t = (alpha[:, None] * (gm.means[0] + along * direction)).detach()
        x_t = (x_t + 0.3 * torch.randn(40, 2, generator=gen, dtype=torch.float64)).requires_grad_(True)
        g = direction + 0.5 * torch.randn(40, 2, generator=gen, dtype=torch.float64)
        eps_hat = model(x_t, torch.full((40,), t))
        quad = Jacobian().quadratic(g, alpha, sigma, eps_hat=eps_hat, x_t=x_t)
        _, cov = gm.posterior_moments(x_t.detach(), alpha, sigma)
        exact = torch.einsum("bi,bij,bj->b", g, cov, g)
        bound = sigma**2 / alpha**2 * (g**2).sum(1)
        torch.testing.assert_close(quad, exact.clamp(min=0).minimum(bound), rtol=1e-8, atol=1e-10)
        clamped += int((exact > bound).sum())
        unclamped += int((exact < bound).sum())
    assert clamped > 0 and unclamped > 0


def test_table_estimators_match_the_average_mixture_posterior_variance():
    """eps_norm, data_var and diagonal against E_{x_t ~ q_t}[Cov(x0 | x_t)] for the mixture.

    The reference averages the exact posterior covariance over M fresh (x0, ε) pairs (SE from its
    sample standard deviation). Each table entry is, up to O(1/N) centring terms, the mean over
    N data points of a per-sample quantity q_n; its SE is std(q_n)/√N, where std(q_n) is measured
    on the same fresh pairs (same distribution):
      eps_norm: q = ‖ε̂‖²/d (times -σ²/α²);  data_var: q = (‖x0 - μ‖² - ‖x̂0 - μ‖²)/d;
      diagonal: q_i = (x0_i - μ_i)² - (x̂0_i - μ_i)².
    Centring at the empirical mean biases the x̂0 term by (Var x0_i - 2·Var x̂0_i)/N, at most
    Var(x0_i)/N.
    """
    gm = two_modes()
    scheduler = diffusers.DDPMScheduler()
    model = gm.noise_model(scheduler)
    n, m_ref, levels, d = 20_000, 20_000, 8, 2
    gen = torch.Generator().manual_seed(3)
    table = estimate_variance_table(
        scheduler, model, gm.sample(n, generator=gen), num_levels=levels, generator=gen
    )
    mu = gm.mean()
    var_x0 = gm.covariance().diagonal()
    timesteps = table_timesteps(scheduler, levels)
    for t in timesteps:
        alpha, sigma = noise_level(scheduler, t)
        scale = float(sigma**2 / alpha**2)
        x0 = gm.sample(m_ref, generator=gen).double()
        x_t = alpha * x0 + sigma * torch.randn(m_ref, d, generator=gen, dtype=torch.float64)
        _, cov = gm.posterior_moments(x_t, alpha, sigma)
        post_var = cov.diagonal(dim1=1, dim2=2)  # (M, d)
        eps_hat = gm.noise_prediction(x_t, alpha, sigma)
        x0_hat = gm.posterior_mean(x_t, alpha, sigma)
        q_diag = (x0 - mu) ** 2 - (x0_hat - mu) ** 2
        float_tol = 1e-6 * scale
        a1, s1 = alpha.reshape(1), sigma.reshape(1)

        reference = post_var.mean()
        se_ref = post_var.mean(1).std() / math.sqrt(m_ref)
        unit = torch.full((1, d), 1 / math.sqrt(d), dtype=torch.float64)
        eps_norm = EpsNorm(table).quadratic(unit, a1, s1)[0]
        se = math.hypot(scale * float((eps_hat**2).mean(1).std()) / math.sqrt(n), float(se_ref))
        assert abs(float(eps_norm - reference)) <= Z * se + float_tol, f"eps_norm at t={int(t)}"

        data_var = DataVar(table).quadratic(unit, a1, s1)[0]
        se = math.hypot(float(q_diag.mean(1).std()) / math.sqrt(n), float(se_ref))
        bias = float(var_x0.mean()) / n
        assert abs(float(data_var - reference)) <= Z * se + bias + float_tol, f"data_var at t={int(t)}"

        for i in range(d):
            e_i = torch.zeros(1, d, dtype=torch.float64)
            e_i[0, i] = 1.0
            diagonal = Diagonal(table).quadratic(e_i, a1, s1)[0]
            se = math.hypot(
                float(q_diag[:, i].std()) / math.sqrt(n), float(post_var[:, i].std()) / math.sqrt(m_ref)
            )
            bias = float(var_x0[i]) / n
            assert abs(float(diagonal - post_var[:, i].mean())) <= Z * se + bias + float_tol, (
                f"diagonal[{i}] at t={int(t)}"
            )


# --- clamping and the table itself --------------------------------------------------------------


def test_table_lookup_clamps_and_interpolates_in_log_snr():
    table = VarianceTable(
        log_snr=torch.tensor([-5.0, 0.0, 5.0]),
        eps_norm=torch.tensor([-0.5, 0.5, 1.5]),
        data_var=torch.tensor([0.2, 0.6, 0.9]),
        diagonal=torch.tensor([[-1.0, 2.0], [0.5, 0.5], [1.5, -0.2]]),
    )
    nodes = torch.tensor([-5.0, 0.0, 5.0])
    torch.testing.assert_close(table.ratio("eps_norm", nodes), torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(
        table.ratio("diagonal", nodes), torch.tensor([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    )
    # Linear in λ between rows; constant (the end rows) outside the table's range.
    lam = torch.tensor([-10.0, -2.5, 1.0, 10.0])
    torch.testing.assert_close(table.ratio("data_var", lam), torch.tensor([0.2, 0.4, 0.66, 0.9]))
    with pytest.raises(ValueError, match="table method must be eps_norm"):
        table.ratio("jacobian", nodes)


def test_estimates_outside_the_valid_range_are_clamped():
    """A model that overstates the noise (2·ε̂) gives E‖ε̂‖²/d > 1 at high noise, a negative raw
    eps_norm estimate; the lookup clamps it to 0, and no estimate exceeds σ²/α²."""
    gm = GaussianMixture.gaussian(MEAN, VAR)
    scheduler = diffusers.DDPMScheduler()
    exact_model = gm.noise_model(scheduler)

    def overstated(x_t, t):
        return 2 * exact_model(x_t, t)

    gen = torch.Generator().manual_seed(4)
    table = estimate_variance_table(
        scheduler, overstated, gm.sample(500, generator=gen), num_levels=10, generator=gen
    )
    assert (table.eps_norm < 0).any() and (table.data_var < 0).any()
    timesteps = table_timesteps(scheduler, 10)
    alpha, sigma = noise_level(scheduler, timesteps)
    g = torch.ones(len(timesteps), 3, dtype=torch.float64)
    bound = sigma**2 / alpha**2 * 3
    for method in ("eps_norm", "data_var", "diagonal"):
        quad = variance_estimator(method, table).quadratic(g, alpha, sigma)
        assert (quad >= 0).all() and (quad <= bound * (1 + 1e-6)).all()
    quad = EpsNorm(table).quadratic(g, alpha, sigma)
    assert (quad[table.eps_norm.flip(0) < 0] == 0).all()  # rows are sorted by λ, timesteps are not


def test_marginal_estimates_are_clamped_to_the_data_variance():
    """A model that understates the noise (ε̂/2) makes 1 - E‖ε̂‖²/d ≈ 3/4 at high noise, where
    σ²/α² is huge; the law of total variance bounds the marginal variance by Var(x0), per
    dimension for ``diagonal`` and on average otherwise."""
    gm = GaussianMixture.gaussian(MEAN, VAR)
    scheduler = diffusers.DDPMScheduler()
    exact_model = gm.noise_model(scheduler)

    def understated(x_t, t):
        return 0.5 * exact_model(x_t, t)

    gen = torch.Generator().manual_seed(5)
    table = estimate_variance_table(scheduler, understated, gm.sample(2000, generator=gen), num_levels=10)
    alpha, sigma = noise_level(scheduler, torch.tensor([999, 500, 10]))
    raw = table.ratio("eps_norm", log_snr(alpha, sigma)) * sigma**2 / alpha**2
    assert raw[0] > 10 * table.data_variance.max()  # the unclamped estimate would be far too large
    for method in ("eps_norm", "data_var"):
        assert (table.variance(method, alpha, sigma) <= table.data_variance.mean() + 1e-9).all()
    assert (table.variance("diagonal", alpha, sigma) <= table.data_variance + 1e-9).all()
    g = torch.ones(3, 3, dtype=torch.float64)
    quad = EpsNorm(table).quadratic(g, alpha, sigma)
    torch.testing.assert_close(quad[0], 3 * table.data_variance.mean().double())


@pytest.mark.parametrize(("slope", "expected_fraction"), [(2.0, 0.0), (-1.0, 1.0), (0.5, 0.5)])
def test_jacobian_estimate_is_clamped_to_zero_and_the_flat_prior_bound(slope, expected_fraction):
    """ε̂ = (slope/σ)·x_t has ∂ε̂/∂x_t = slope/σ·I, so the raw estimate is σ²/α²·(1 - slope)·‖g‖²."""
    alpha, sigma = torch.tensor([0.8], dtype=torch.float64), torch.tensor([0.6], dtype=torch.float64)
    x_t = torch.randn(1, 4, dtype=torch.float64).requires_grad_(True)
    g = torch.randn(1, 4, dtype=torch.float64)
    quad = Jacobian().quadratic(g, alpha, sigma, eps_hat=slope / sigma * x_t, x_t=x_t)
    torch.testing.assert_close(quad, expected_fraction * sigma**2 / alpha**2 * (g**2).sum(1))


def test_variance_table_save_load_round_trip(tmp_path):
    gm = GaussianMixture.gaussian(MEAN, VAR)
    scheduler = diffusers.DDPMScheduler()
    table = estimate_variance_table(scheduler, gm.noise_model(scheduler), gm.sample(100), num_levels=5)
    table.save(str(tmp_path / "table.safetensors"))
    loaded = VarianceTable.load(str(tmp_path / "table.safetensors"))
    for key in ("log_snr", "eps_norm", "data_var", "diagonal", "data_variance"):
        torch.testing.assert_close(getattr(loaded, key), getattr(table, key), rtol=0, atol=0)
    assert (table.log_snr[1:] > table.log_snr[:-1]).all()


def test_a_table_without_noise_levels_holds_what_the_data_give_and_refuses_a_closed_form(tmp_path):
    """num_levels=0: no model pass; the data's variance, range, covariance and samples (drawn before
    the levels' noise) equal those of a table with levels and the same generator; the levels are
    empty, a closed-form variance that reads them gets a one-line error, and the table saves and
    loads."""
    gm = GaussianMixture.gaussian(MEAN, VAR)
    scheduler = diffusers.DDPMScheduler()
    data = gm.sample(100, generator=torch.Generator().manual_seed(0))
    model = CountingModel(gm.noise_model(scheduler))
    bare = estimate_variance_table(
        scheduler, model, data, num_levels=0, generator=torch.Generator().manual_seed(1)
    )
    assert model.passes == 0
    full = estimate_variance_table(
        scheduler, gm.noise_model(scheduler), data, num_levels=5, generator=torch.Generator().manual_seed(1)
    )
    for key in ("data_variance", "data_low", "data_high", "principal_axes", "principal_variance", "samples"):
        torch.testing.assert_close(getattr(bare, key), getattr(full, key), rtol=0, atol=0)
    assert bare.samples is not None and bare.samples.shape == data.shape
    assert len(bare.log_snr) == 0 and bare.diagonal.shape == (0, data.shape[1])
    alpha = sigma = torch.full((2,), 0.7)
    with pytest.raises(ValueError, match="no noise levels"):
        bare.variance("diagonal", alpha, sigma)
    with pytest.raises(ValueError, match="no noise levels"):  # when the closed form is built
        variance_estimator("diagonal", bare)
    bare.save(str(tmp_path / "bare.safetensors"))
    loaded = VarianceTable.load(str(tmp_path / "bare.safetensors"))
    assert len(loaded.log_snr) == 0
    torch.testing.assert_close(loaded.samples, bare.samples, rtol=0, atol=0)
    with pytest.raises(ValueError, match="num_levels must be 0"):
        estimate_variance_table(scheduler, gm.noise_model(scheduler), data, num_levels=1)
    assert len(estimate_variance_table(scheduler, model, data, num_levels=np.int64(4)).log_snr) == 4
    wide = torch.zeros(2, MAX_COVARIANCE_DIM + 1)  # no covariance kept: every estimator reads levels
    with pytest.raises(ValueError, match="keep no covariance either"):
        estimate_variance_table(scheduler, model, wide, num_levels=0)


def test_variance_estimator_errors_say_what_is_missing():
    g = torch.ones(2, 3)
    alpha = sigma = torch.full((2,), 0.7)
    with pytest.raises(ValueError, match="estimate_variance_table"):
        variance_estimator("eps_norm")
    with pytest.raises(ValueError, match="Jacobian variance needs eps_hat"):
        Jacobian().quadratic(g, alpha, sigma)
    with pytest.raises(ValueError, match="unknown posterior variance 'exact'"):
        variance_estimator("exact")
    with pytest.raises(TypeError, match="not a variance estimator"):
        variance_estimator(object())
    with pytest.raises(ValueError, match="at least 2 data points"):
        estimate_variance_table(diffusers.DDPMScheduler(), lambda x, t: x, torch.zeros(1, 3))
