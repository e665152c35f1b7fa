"""closed_form.py: the MGF intermediate energy against Monte Carlo and exact Gaussian integrals.

For x0 ~ N(μ, Σ) the closed form L ≈ -β·E(x̄) - β·gᵀ(μ - x̄) + ½·β²·gᵀΣg (g = ∇E(x̄)) is exact
for linear E. For the quadratic E(x) = ½xᵀAx + bᵀx (A ⪰ 0) the exact value is

    L = log E[exp(-β·E(x0))] = -½·logdet(I + βΣA) - β·E(μ) + ½·β²·gᵀ(Σ⁻¹ + βA)⁻¹g,  g = Aμ + b,

so at x̄ = μ the closed form is off by R = ½·logdet(I + βΣA) + ½·β²·gᵀ[Σ - (Σ⁻¹ + βA)⁻¹]g.
Expanding (Σ⁻¹ + βA)⁻¹ = Σ_k (-βΣA)^k Σ, the μ-dependent part of R is ½·β³·gᵀΣAΣg + O(β⁴).
"""

import math

import diffusers
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from energy_guidance import AnalyticEnergyGuidance
from energy_guidance.closed_form import analytic_intermediate_energy, second_order_intermediate_energy
from energy_guidance.testing import gaussian_log_potential_mc

MC_SAMPLES = 20_000
Z = 5.0  # standard errors allowed between a Monte Carlo estimate and the quantity it estimates

coordinate = st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False)


def vectors(d: int):
    return st.lists(coordinate, min_size=d, max_size=d).map(lambda v: torch.tensor(v, dtype=torch.float64))


def matrices(d: int):
    return st.lists(coordinate, min_size=d * d, max_size=d * d).map(
        lambda v: torch.tensor(v, dtype=torch.float64).reshape(d, d)
    )


@st.composite
def gaussian_problems(draw, max_dim: int = 4):
    """Dimension d, mean μ (d,), a PD covariance Σ = MMᵀ/d + 0.05·I, and a second vector (d,)."""
    d = draw(st.integers(1, max_dim))
    m = draw(matrices(d))
    cov = m @ m.T / d + 0.05 * torch.eye(d, dtype=torch.float64)
    return d, draw(vectors(d)), cov, draw(vectors(d))


@st.composite
def quadratic_energies(draw, d: int):
    """A ⪰ 0 (A = NNᵀ/d) and b for E(x) = ½xᵀAx + bᵀx."""
    n = draw(matrices(d))
    return n @ n.T / d, draw(vectors(d))


def quadratic_energy(a: torch.Tensor, b: torch.Tensor):
    return lambda x: 0.5 * ((x @ a) * x).sum(-1) + x @ b


def exact_quadratic_log_potential(a, b, mean, cov, beta) -> torch.Tensor:
    """log E_{N(μ, Σ)}[exp(-β·E(x0))] for E(x) = ½xᵀAx + bᵀx (the Gaussian integral)."""
    d = len(mean)
    g = a @ mean + b
    precision = torch.linalg.inv(cov) + beta * a
    logdet = torch.linalg.slogdet(torch.eye(d, dtype=torch.float64) + beta * cov @ a)[1]
    energy = 0.5 * mean @ a @ mean + b @ mean
    return -0.5 * logdet - beta * energy + 0.5 * beta**2 * g @ torch.linalg.solve(precision, g)


def closed_form_at_mean(a, b, mean, cov, beta) -> torch.Tensor:
    """The library's closed form with x̄ = x̂0 = μ and the exact posterior variance Σ."""
    g = a @ mean + b
    energy = quadratic_energy(a, b)(mean[None])
    return -analytic_intermediate_energy(beta, energy, g[None], (g @ cov @ g)[None])[0]


# --- linear energies -------------------------------------------------------------------------


@given(problem=gaussian_problems(), beta=st.floats(0.05, 5.0), offset=st.floats(-3.0, 3.0))
def test_closed_form_equals_monte_carlo_for_linear_energies(problem, beta, offset):
    """Gaussian x0 and E(x) = wᵀx + c: the closed form (any expansion point x̄) is exact."""
    _, mean, cov, w = problem
    # The MC weights exp(-β·wᵀx0) are log-normal with log-variance s² = β²·wᵀΣw and relative
    # variance exp(s²) - 1. Keeping s² ≤ 1 keeps that below 1.8, so with 20k samples the
    # delta-method standard error is itself accurate to a few per cent (the kurtosis of the
    # weights stays ~1e2) and the O(1/n) bias of the log is ~1e-4 SE: 5 SE is a valid bound.
    s2 = float(beta**2 * w @ cov @ w)
    if s2 > 1.0:
        w = w / math.sqrt(s2)
    c = 0.7

    def energy(x):
        return x @ w + c

    x_bar = mean + offset  # any expansion point: the Taylor expansion of a linear E is exact
    closed = -analytic_intermediate_energy(
        beta, energy(x_bar[None]), w[None], (w @ cov @ w)[None], mean[None], x_bar[None]
    )
    estimate, stderr = gaussian_log_potential_mc(
        energy, mean[None], cov, beta, MC_SAMPLES, generator=torch.Generator().manual_seed(0)
    )
    assert abs(float(closed - estimate)) <= Z * float(stderr) + 1e-9


@given(problem=gaussian_problems(), beta=st.floats(0.0, 5.0), offset=st.floats(-3.0, 3.0))
def test_closed_form_for_linear_energies_is_independent_of_the_expansion_point(problem, beta, offset):
    _, mean, cov, w = problem
    quad = (w @ cov @ w)[None]
    at_mean = analytic_intermediate_energy(beta, (mean @ w)[None], w[None], quad)
    x_bar = mean + offset
    moved = analytic_intermediate_energy(beta, (x_bar @ w)[None], w[None], quad, mean[None], x_bar[None])
    expected = beta * mean @ w - 0.5 * beta**2 * quad  # -log of the Gaussian MGF at -β·w
    torch.testing.assert_close(at_mean, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(moved, expected, rtol=1e-12, atol=1e-10)


# --- quadratic energies ----------------------------------------------------------------------


@given(problem=gaussian_problems(max_dim=3), data=st.data(), beta=st.floats(0.05, 3.0))
def test_exact_quadratic_reference_matches_monte_carlo(problem, data, beta):
    """The reference Gaussian integral used below, checked by Monte Carlo."""
    d, mean, cov, _ = problem
    a, b = data.draw(quadratic_energies(d))
    g = a @ mean + b
    # log w = -β·(E(μ) + gᵀy + ½yᵀAy), y ~ N(0, Σ): Var(log w) = β²·(gᵀΣg + ½·tr((ΣA)²)).
    # Capping it at 1 keeps the weights' relative variance moderate, as for linear energies
    # (A ⪰ 0 only lightens the upper tail of the weights).
    log_var = float(g @ cov @ g + 0.5 * torch.trace(cov @ a @ cov @ a))
    beta = min(beta, 1.0 / math.sqrt(log_var)) if log_var > 0 else beta
    exact = exact_quadratic_log_potential(a, b, mean, cov, beta)
    estimate, stderr = gaussian_log_potential_mc(
        quadratic_energy(a, b), mean[None], cov, beta, MC_SAMPLES, generator=torch.Generator().manual_seed(1)
    )
    assert abs(float(exact - estimate[0])) <= Z * float(stderr[0]) + 1e-9


@given(problem=gaussian_problems(), data=st.data(), beta=st.floats(0.01, 5.0))
def test_quadratic_error_equals_the_predicted_remainder(problem, data, beta):
    """closed form - exact = ½·logdet(I + βΣA) + ½·β²·gᵀ[Σ - (Σ⁻¹ + βA)⁻¹]g, to rounding."""
    d, mean, cov, _ = problem
    a, b = data.draw(quadratic_energies(d))
    g = a @ mean + b
    eye = torch.eye(d, dtype=torch.float64)
    remainder = (
        0.5 * torch.linalg.slogdet(eye + beta * cov @ a)[1]
        + 0.5 * beta**2 * g @ (cov - torch.linalg.inv(torch.linalg.inv(cov) + beta * a)) @ g
    )
    exact = exact_quadratic_log_potential(a, b, mean, cov, beta)
    error = closed_form_at_mean(a, b, mean, cov, beta) - exact
    # Both sides are O(1e2) at most here; float64 rounding, amplified by inverting Σ (its
    # condition number is ≤ 1e2 since Σ ⪰ 0.05·I and ‖Σ‖ ≤ 4.05), stays far below 1e-8.
    assert abs(float(error - remainder)) <= 1e-8 * (1 + abs(float(exact)))
    assert float(remainder) >= -1e-12  # A ⪰ 0: the closed form never underestimates L here


# The assume()s keep only the problems where the β³ term stands out of the O(β⁴) remainder, which
# most random quadratics fail: that filtering is the test's design, not a slow strategy.
@settings(suppress_health_check=[HealthCheck.filter_too_much])
@given(problem=gaussian_problems(), data=st.data())
def test_mean_dependent_quadratic_error_is_third_order_in_beta(problem, data):
    """D(β) = err(μ1, β) - err(μ2, β) removes the μ-independent logdet term; its leading term is
    c3·β³ with c3 = ½·(g1ᵀΣAΣg1 - g2ᵀΣAΣg2), so halving β divides D by 8 up to O(β⁴)."""
    d, mean1, cov, mean2 = problem
    a, b = data.draw(quadratic_energies(d))
    rho = float(torch.linalg.matrix_norm(cov @ a, ord=2))  # ‖ΣA‖₂
    assume(rho > 1e-3)
    norm_cov = float(torch.linalg.matrix_norm(cov, ord=2))
    g1, g2 = a @ mean1 + b, a @ mean2 + b
    c3 = 0.5 * float(g1 @ cov @ a @ cov @ g1 - g2 @ cov @ a @ cov @ g2)

    def difference(beta: float) -> tuple[float, float]:
        """D(β) and the float64 rounding allowed in it (a few ulps of the values combined)."""
        parts = [
            closed_form_at_mean(a, b, mean1, cov, beta),
            exact_quadratic_log_potential(a, b, mean1, cov, beta),
            closed_form_at_mean(a, b, mean2, cov, beta),
            exact_quadratic_log_potential(a, b, mean2, cov, beta),
        ]
        value = float(parts[0] - parts[1] - parts[2] + parts[3])
        return value, 1e-13 * (1 + sum(abs(float(p)) for p in parts))

    def remainder_bound(beta: float) -> float:
        """|D(β) - c3·β³| ≤ Σ_{k≥2} ½·β²·(βρ)^k·‖Σ‖·(‖g1‖² + ‖g2‖²) (geometric series, βρ < 1)."""
        tail = (beta * rho) ** 2 / (1 - beta * rho)
        return 0.5 * beta**2 * tail * norm_cov * float(g1 @ g1 + g2 @ g2)

    beta = 0.2 / rho  # βρ = 0.2: the O(β⁴) tail is at most a quarter of the β³ scale
    d_full, tol_full = difference(beta)
    d_half, tol_half = difference(beta / 2)
    bound_full, bound_half = remainder_bound(beta), remainder_bound(beta / 2)
    # only where the β³ term stands out of the remainder do the checks below test its order
    assume(abs(c3) * beta**3 > 2 * (bound_full + tol_full))
    assert abs(d_full - c3 * beta**3) <= bound_full + tol_full
    assert abs(d_half - c3 * (beta / 2) ** 3) <= bound_half + tol_half


# --- argument checks -------------------------------------------------------------------------


def test_negative_beta_is_rejected():
    one = torch.ones(1)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        analytic_intermediate_energy(-1.0, one, one[None], one)


def test_expansion_point_needs_both_x0_hat_and_x_bar():
    one = torch.ones(1)
    with pytest.raises(ValueError, match="give both x0_hat and x_bar"):
        analytic_intermediate_energy(1.0, one, one[None], one, x0_hat=one[None])


def test_closed_form_is_per_sample_for_image_shaped_inputs():
    """Batched (B, C, H, W) gradients and points: each row's value uses only its own sample."""
    gen = torch.Generator().manual_seed(0)
    g, x0_hat, x_bar = (torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    energy_bar = torch.randn(3, generator=gen, dtype=torch.float64)
    quad = torch.rand(3, generator=gen, dtype=torch.float64)
    value = analytic_intermediate_energy(0.5, energy_bar, g, quad, x0_hat, x_bar)
    for i in range(3):
        expected = 0.5 * energy_bar[i] + 0.5 * (g[i] * (x0_hat[i] - x_bar[i])).sum() - 0.125 * quad[i]
        torch.testing.assert_close(value[i], expected)


# --- the second-order closed form (3) --------------------------------------------------------


def second_order(a, b, mean, cov, beta, x_bar=None, floor=1.0):
    """The library's equation (3) for E(x) = ½xᵀAx + bᵀx, expanded at x̄ (default μ)."""
    x_bar = mean if x_bar is None else x_bar
    energy = quadratic_energy(a, b)
    at = x_bar[None]
    kwargs = {} if x_bar is mean else {"x0_hat": mean[None], "x_bar": at}
    return second_order_intermediate_energy(
        beta, energy(at), (a @ x_bar + b)[None], a[None], cov[None], floor=floor, **kwargs
    )[0]


@given(problem=gaussian_problems(), data=st.data(), beta=st.floats(0.0, 20.0), at_mean=st.booleans())
def test_second_order_is_exact_for_convex_quadratics(problem, data, beta, at_mean):
    """(3) is the Gaussian integral itself: for a convex quadratic E and x0 ~ N(μ, Σ) it equals
    -log E[exp(-β·E(x0))] from any expansion point, at any β (no remainder, unlike (1))."""
    d, mean, cov, point = problem
    a, b = data.draw(quadratic_energies(d))
    exact = -exact_quadratic_log_potential(a, b, mean, cov, beta)
    value = second_order(a, b, mean, cov, beta, x_bar=None if at_mean else point)
    torch.testing.assert_close(value, exact, rtol=1e-9, atol=1e-9)


@given(problem=gaussian_problems(max_dim=3), data=st.data(), beta=st.floats(0.05, 5.0))
def test_second_order_is_exact_for_non_convex_quadratics_with_a_gaussian_integral(problem, data, beta):
    """Indefinite A: the integral exists while I + βΣA is positive definite, and then (3) equals
    it for any floor below its lowest eigenvalue (no damping is applied above the floor)."""
    d, mean, cov, _ = problem
    n = data.draw(matrices(d))
    a = 0.5 * (n + n.T)
    eye = torch.eye(d, dtype=torch.float64)
    lowest = float(torch.linalg.eigvals(eye + beta * cov @ a).real.min())
    assume(lowest > 0.02)
    floor = data.draw(st.floats(0.01, 0.999)) * lowest  # up to just below the lowest eigenvalue
    exact = -exact_quadratic_log_potential(a, torch.zeros(d, dtype=torch.float64), mean, cov, beta)
    value = second_order(a, torch.zeros(d, dtype=torch.float64), mean, cov, beta, floor=floor)
    torch.testing.assert_close(value, exact, rtol=1e-9, atol=1e-9)


@given(problem=gaussian_problems(), data=st.data(), beta=st.floats(0.1, 20.0))
def test_second_order_gradient_equals_the_exact_one_for_convex_quadratics(problem, data, beta):
    """∇_μ of (3) is the exact β·(I + βAΣ)⁻¹(Aμ + b): it never points uphill of the exact one."""
    d, mean, cov, _ = problem
    a, b = data.draw(quadratic_energies(d))
    mu = mean.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(second_order(a, b, mu, cov, beta), mu)
    eye = torch.eye(d, dtype=torch.float64)
    exact = beta * torch.linalg.solve(eye + beta * a @ cov, a @ mean + b)
    torch.testing.assert_close(grad, exact, rtol=1e-8, atol=1e-10)


def test_first_order_reverses_where_the_second_order_does_not():
    """1-D E = ½k(x - a)², posterior variance s: exact dE_t/dμ = βk(μ - a)/(1 + βks) points
    uphill to lower E; (1) gives βk(μ - a)(1 - βks), reversed once βks > 1 (here βks = 3)."""
    k, a, s, beta, mu = 2.0, 0.0, 0.5, 3.0, 1.0
    exact = beta * k * (mu - a) / (1 + beta * k * s)
    m = torch.tensor([mu], dtype=torch.float64, requires_grad=True)
    energy = 0.5 * k * (m - a) ** 2
    g = k * (m - a)
    first = analytic_intermediate_energy(beta, energy, g[:, None], s * g**2)
    second = second_order_intermediate_energy(
        beta, energy, g[:, None], torch.full((1, 1, 1), k, dtype=torch.float64), torch.tensor([s])
    )
    (d_first,) = torch.autograd.grad(first.sum(), m, retain_graph=True)
    (d_second,) = torch.autograd.grad(second.sum(), m)
    assert float(d_second) == pytest.approx(exact, rel=1e-12)
    assert float(d_first) == pytest.approx(beta * k * (mu - a) * (1 - beta * k * s), rel=1e-12)
    assert float(d_first) < 0 < exact


def test_non_convex_curvature_is_damped_to_the_floor():
    """A concave direction with I + βΣH indefinite: no Gaussian integral exists. (3) then adds
    δ·I with δ lifting the smallest eigenvalue of I + βΣH to the floor: finite, and with the
    default floor 1 the concave direction contributes what a flat one (the first-order form)
    would, while a convex direction keeps some of its curvature."""
    beta, s = 4.0, torch.tensor([0.5], dtype=torch.float64)
    h = torch.diag(torch.tensor([-3.0, 1.0], dtype=torch.float64))[None]  # 1 + βsλ = -5 and 3
    g = torch.tensor([[1.0, 0.0]], dtype=torch.float64)  # along the concave direction only
    e = torch.zeros(1, dtype=torch.float64)
    value = second_order_intermediate_energy(beta, e, g, h, s)
    # δ = 6 lifts -5 to 1; the quadratic term along the concave axis is then β²·s·g²/1, as in (1).
    expected = 0.5 * math.log(1.0 * 9.0) - 0.5 * beta**2 * float(s) * 1.0
    assert float(value) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="floor must be > 0"):
        second_order_intermediate_energy(beta, e, g, h, s, floor=0.0)
    # a lower floor lets the concave direction amplify (δ = 5.5 lifts -5 to 0.5), also via guidance
    expected = 0.5 * math.log(0.5 * 8.5) - 0.5 * beta**2 * float(s) / 0.5
    low = second_order_intermediate_energy(beta, e, g, h, s, floor=0.5)
    assert float(low) == pytest.approx(expected, rel=1e-12)
    guidance = AnalyticEnergyGuidance(
        diffusers.DDPMScheduler(clip_sample=False), None, lambda x: x[:, 0], beta, order=2, floor=0.5
    )
    assert guidance.estimator.floor == 0.5


def test_second_order_names_a_non_finite_covariance():
    """An infinite posterior variance (α → 0) is named, not reported as a singular matrix."""
    g = torch.ones(2, 2, dtype=torch.float64)
    h = torch.eye(2, dtype=torch.float64).expand(2, 2, 2)
    with pytest.raises(FloatingPointError, match="posterior covariance"):
        second_order_intermediate_energy(1.0, torch.zeros(2), g, h, torch.tensor([1.0, math.inf]))
