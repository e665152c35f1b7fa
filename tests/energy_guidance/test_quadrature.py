"""quadrature.py: the intermediate energy (7) by quadrature of the Gaussian posterior."""

import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from energy_guidance import AnalyticEnergyGuidance, ClosedForm, NonFiniteError
from energy_guidance.quadrature import MAX_NODES, GaussianQuadrature, cubature_rule, gauss_hermite_rule
from energy_guidance.schedulers import Prediction, noise_level
from energy_guidance.tempering import Tempered

from .gaussian_case import BETA, data_model, exact_guidance_term, linear_energy
from .test_guidance import make_scheduler
from .test_smc import BETA as SMC_BETA
from .test_smc import SCHEDULERS as SMC_SCHEDULERS
from .test_smc import Z as Z_SE
from .test_smc import (
    assert_within,
    discretised_gaussian,
    log_mean_z,
    population_estimates,
    quadratic_energy,
    run,
    tilted_quadratic,
)
from .test_smc import data_model as smc_data_model


@dataclass(frozen=True)
class Fixed:
    """A posterior covariance Σ̂ (d, d) that does not depend on x_t (a variance estimator)."""

    matrix: torch.Tensor
    uses_model_graph: ClassVar[bool] = False

    def quadratic(self, g, alpha, sigma, **_):
        g = g.reshape(len(g), -1)
        return ((g @ self.matrix.to(g)) * g).sum(1)

    def covariance(self, alpha, sigma, *, dim, **_):
        return self.matrix.expand(len(alpha), dim, dim)


def gh_bounds(c: torch.Tensor, points: int) -> tuple[float, float]:
    """Bounds on the tensor Gauss-Hermite rule's errors for the tilt exp(-cᵀξ), ξ ~ N(0, I), from the
    Taylor series: the integrand factorises; per coordinate the rule is exact on ξ^k for k < 2·points,
    and for larger even k its value lies in [0, E ξ^k] (a Gauss rule with positive weights
    underestimates a function whose 2·points-th derivative is ≥ 0), odd moments vanish. So
    |Q[e^{-cξ}] - E[e^{-cξ}]| ≤ r = Σ_{even k ≥ 2p} |c|^k/k!·(k-1)!!, and for the numerator of
    the tilted mean |Q[ξe^{-cξ}] - E[ξe^{-cξ}]| ≤ s = Σ_{odd k ≥ 2p-1} |c|^k/k!·k!!.
    With E[e^{-cξ}] = exp(c²/2) ≥ 1 and tilted mean -c: returns (the bound on |log Q - log E| summed
    over coordinates, the bound on the Euclidean error of the tilted mean of ξ)."""

    def double_factorial(n: int) -> int:
        return math.prod(range(n, 0, -2)) if n > 0 else 1

    log_error, mean_sq = 0.0, 0.0
    for ci in c.abs().tolist():
        ks = range(2 * points - 1, 2 * points + 120)
        r = sum(ci**k / math.factorial(k) * double_factorial(k - 1) for k in ks if k % 2 == 0)
        s = sum(ci**k / math.factorial(k) * double_factorial(k) for k in ks if k % 2 == 1)
        assert r < 0.5
        log_error += r / (1 - r)
        mean_sq += ((s + ci * r) / (1 - r)) ** 2
    return log_error, math.sqrt(mean_sq)


def rule_root(cov: torch.Tensor) -> torch.Tensor:
    """The square root R (R·Rᵀ = Σ̂) whose coordinates the rule's nodes are in: eigenvectors × √eigenvalues."""
    values, vectors = torch.linalg.eigh(cov)
    return vectors * values.sqrt()


@settings(max_examples=40, deadline=None)
@given(
    dim=st.integers(1, 3),
    points=st.integers(2, 5),
    seed=st.integers(0, 10_000),
    rule=st.sampled_from(["gauss_hermite", "cubature"]),
)
def test_rules_integrate_quadratics_exactly(dim, points, seed, rule):
    """Both rules are exact for a + bᵀξ + ξᵀCξ under N(0, I) (exact value a + tr C), with
    weights summing to 1; Gauss-Hermite with p ≥ 3 points also for ξ_i⁴ (3)."""
    gen = torch.Generator().manual_seed(seed)
    a, b = (
        torch.randn((), generator=gen, dtype=torch.float64),
        torch.randn(dim, generator=gen, dtype=torch.float64),
    )
    c = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    nodes, log_w = gauss_hermite_rule(dim, points) if rule == "gauss_hermite" else cubature_rule(dim)
    w = log_w.exp()
    values = a + nodes @ b + ((nodes @ c) * nodes).sum(1)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(w @ values) == pytest.approx(float(a + torch.trace(c)), abs=1e-10)
    if rule == "gauss_hermite" and points >= 3:
        torch.testing.assert_close(w @ nodes**4, torch.full((dim,), 3.0, dtype=torch.float64))


def posterior(x0: torch.Tensor) -> Prediction:
    return Prediction(eps=torch.zeros_like(x0), x0=x0)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    beta=st.floats(0.05, 1.0),
    sigma=st.floats(0.3, 3.0),
)
def test_linear_energy_gives_the_gaussian_integral(seed, beta, sigma):
    """E = wᵀx under N(x̂0, Σ̂): E_t = β·wᵀx̂0 - ½β²·wᵀΣ̂w and ∇_{x_t}E_t = (α/σ²)·β·Σ̂w exactly; the
    10-point rule is within its Taylor-remainder bound (c = β·Rᵀw, R = Σ̂^½)."""
    gen = torch.Generator().manual_seed(seed)
    root = 0.5 * torch.randn(2, 2, generator=gen, dtype=torch.float64)
    cov = root @ root.T + 0.05 * torch.eye(2, dtype=torch.float64)
    w = torch.randn(2, generator=gen, dtype=torch.float64)
    x0 = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    alpha, sig = torch.full((3,), 0.8, dtype=torch.float64), torch.full((3,), sigma, dtype=torch.float64)
    est = GaussianQuadrature(lambda x: x @ w, beta, Fixed(cov), points=10)
    root = rule_root(cov)
    value_bound, mean_bound = gh_bounds(beta * root.T @ w, 10)
    # The check below is meaningful only where the rule is this accurate: examples whose tilt is
    # too steep for 10 points (the bound above 1e-6, e.g. seed 72 at β = 1) are not counted.
    assume(value_bound < 1e-6)
    value = est(x0, alpha, sig, prediction=posterior(x0))
    exact = beta * x0 @ w - 0.5 * beta**2 * w @ cov @ w
    assert (value - exact).abs().max() <= value_bound + 1e-12  # + float64 rounding
    # x̂0 - μ̃ = -R·(tilted mean of ξ), and the exact tilted mean of ξ is -β·Rᵀw
    grad = est.x_t_gradient(x0, alpha, sig, prediction=posterior(x0))
    expected = (alpha / sig**2)[:, None] * beta * (cov @ w)
    scale = float(torch.linalg.matrix_norm(root, 2) * alpha[0] / sig[0] ** 2)
    assert (grad - expected).norm(dim=1).max() <= scale * mean_bound + 1e-12


def test_small_beta_is_the_first_order_tweedie_gradient():
    """For small β the shift is -β·Σ̂·E[∇E] + O(β²) (Stein's lemma over the rule), which for a
    quadratic E is -β·Σ̂g: against the first-order closed form with the same Σ̂ and the Tweedie
    gradient the gap is O(β²), so it falls 100-fold when β falls 10-fold."""
    cov = torch.tensor([[0.4, 0.1], [0.1, 0.3]], dtype=torch.float64)
    hessian = torch.tensor([[2.0, -0.7], [-0.7, 0.5]], dtype=torch.float64)  # indefinite
    x0 = torch.tensor([[0.3, -0.5], [1.0, 0.2]], dtype=torch.float64)
    alpha, sigma = torch.full((2,), 0.9, dtype=torch.float64), torch.full((2,), 0.6, dtype=torch.float64)

    def energy(x):
        return 0.5 * ((x @ hessian) * x).sum(1) + x[:, 0]

    gaps = []
    for beta in (1e-2, 1e-3):
        quad = GaussianQuadrature(energy, beta, Fixed(cov), points=3)
        first = ClosedForm(energy, beta, Fixed(cov), gradient="tweedie")
        g_q = quad.x_t_gradient(x0, alpha, sigma, prediction=posterior(x0))
        g_1 = first.x_t_gradient(x0, alpha, sigma, prediction=posterior(x0))
        gaps.append(float((g_q - g_1).abs().max() / g_1.abs().max()))
    assert gaps[1] < gaps[0] / 50, gaps  # 100× in theory, up to the O(β³) terms


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    beta=st.floats(1e-2, 1e4),
    rule=st.sampled_from(["gauss_hermite", "cubature"]),
)
def test_the_shift_never_goes_uphill_nor_beyond_the_nodes(seed, beta, rule):
    """Linear E, any β: the guidance has gᵀ∇E_t ≥ 0 (never uphill), and the shift x̂0 - μ̃ stays inside
    the nodes' hull: ‖R⁻¹(x̂0 - μ̃)‖ ≤ max_j ‖ξ_j‖ (DPS-style's β·Σ̂g grows without bound in β)."""
    gen = torch.Generator().manual_seed(seed)
    root = torch.randn(2, 2, generator=gen, dtype=torch.float64) + 2 * torch.eye(2, dtype=torch.float64)
    cov = root @ root.T
    w = torch.randn(2, generator=gen, dtype=torch.float64)
    x0 = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    alpha, sigma = torch.ones(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    est = GaussianQuadrature(lambda x: x @ w, beta, Fixed(cov), rule=rule, points=3)
    grad = est.x_t_gradient(x0, alpha, sigma, prediction=posterior(x0))  # = x̂0 - μ̃ at α = σ = 1
    assert (grad @ w >= -1e-12).all()
    chol = torch.linalg.cholesky(cov)
    whitened = torch.linalg.solve_triangular(chol, grad.T, upper=False).T.norm(dim=1)
    nodes, _ = est.nodes(2)
    assert (whitened <= nodes.norm(dim=1).max() + 1e-9).all()


@pytest.mark.parametrize("name", ["ddpm-eps", "ddim-v", "dpm++-x0", "euler-ancestral-v"])
def test_guidance_is_exact_for_gaussian_data(name):
    """Linear E on Gaussian data with the exact model and the Jacobian covariance (the exact
    posterior's, v'·I with v' ≤ v): the guidance of (7) is the exact ∇_{x_t}E_t within the rule's
    bound, taken at the largest |c_i| = β·√v·‖w‖ (the bounds grow with |c|)."""
    scheduler = make_scheduler(name)
    scheduler.set_timesteps(10)
    model = data_model().noise_model(scheduler)
    guidance = AnalyticEnergyGuidance(
        scheduler, model, estimator=GaussianQuadrature(linear_energy, BETA, "jacobian", points=12)
    )
    x_t = torch.randn(16, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    v = float(data_model().variances[0, 0])
    _, mean_bound = gh_bounds(torch.full((2,), BETA * math.sqrt(v) * math.sqrt(2.0)), 12)
    assert mean_bound < 1e-5
    for t in scheduler.timesteps[1:]:
        alpha, sigma = noise_level(scheduler, t)
        expected = (exact_guidance_term(alpha, sigma) / sigma).expand(16, 2)
        allowed = math.sqrt(v) * float(alpha / sigma**2) * mean_bound + 1e-9 * float(expected.abs().max())
        assert (guidance.energy_gradient(x_t, t) - expected).norm(dim=1).max() <= allowed


def test_smc_with_the_quadrature_twist_returns_the_tilted_gaussian():
    """As SMC's twist and proposal (DPM-Solver++ SDE, B = 128, K = 64) on the quadratic energy:
    the mean and second moment of the tilted discretised Gaussian and its log Z within Z standard
    errors, with weights that stay near uniform (a near-exact twist here)."""
    m, v = discretised_gaussian("dpm++-sde")
    mean, var, log_z = tilted_quadratic(m, v, SMC_BETA)
    make, eta = SMC_SCHEDULERS["dpm++-sde"]
    scheduler = make()
    estimator = GaussianQuadrature(quadratic_energy, SMC_BETA, "jacobian", points=5)
    guidance = AnalyticEnergyGuidance(scheduler, smc_data_model().noise_model(scheduler), estimator=estimator)
    result = run(guidance, eta)
    assert_within(population_estimates(result, lambda x: x), mean, "mean")
    assert_within(population_estimates(result, lambda x: x**2), var + mean**2, "second moment")
    estimate, se = log_mean_z(result)
    assert abs(estimate - log_z) <= Z_SE * se, (estimate, log_z, se)
    assert float(result.ess.mean()) > 0.9 * 64


@pytest.mark.parametrize("rule", ["gauss_hermite", "cubature"])
def test_scalar_and_diagonal_covariances_equal_their_matrices(rule):
    """Σ̂ given as c (B,) or diag (B, d) places the nodes as the full matrix would (no d×d formed)."""

    @dataclass(frozen=True)
    class Diagonal:
        values: torch.Tensor
        uses_model_graph: ClassVar[bool] = False

        def quadratic(self, g, alpha, sigma, **_):
            return (g.reshape(len(g), -1) ** 2 * self.values).sum(1)

        def covariance(self, alpha, sigma, *, dim, **_):
            return (
                self.values.expand(len(alpha), dim) if self.values.dim() else self.values.expand(len(alpha))
            )

    x0 = torch.tensor([[0.3, -0.5, 0.1], [1.0, 0.2, -0.4]], dtype=torch.float64)
    one = torch.ones(2, dtype=torch.float64)

    def energy(x):
        return torch.sigmoid(3 * x[:, 0] - x[:, 1]) + x[:, 2] ** 2

    for values in (
        torch.tensor(0.7, dtype=torch.float64),
        torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64),
    ):
        full = Fixed(torch.diag(values.expand(3)))
        a = GaussianQuadrature(energy, 4.0, Diagonal(values), rule=rule)
        b = GaussianQuadrature(energy, 4.0, full, rule=rule)
        kwargs = {"prediction": posterior(x0)}
        torch.testing.assert_close(
            a.x_t_gradient(x0, one, one, **kwargs), b.x_t_gradient(x0, one, one, **kwargs)
        )
        torch.testing.assert_close(a(x0, one, one, **kwargs), b(x0, one, one, **kwargs))


@pytest.mark.parametrize("tempered", [False, True])
def test_an_smc_step_evaluates_the_nodes_once(tempered):
    """``step_parts`` (E_t and the guided output, what SMC needs) places and evaluates the nodes
    once, with the same E_t and ∇E_t as the separate calls (also through the tempered twist)."""
    calls = []

    def energy(x):
        calls.append(len(x))
        return linear_energy(x)

    scheduler = make_scheduler("ddpm-eps")
    scheduler.set_timesteps(10)
    model = data_model().noise_model(scheduler)
    estimator = GaussianQuadrature(energy, BETA, "jacobian")
    if tempered:
        estimator = Tempered(estimator, 2.0)
    guidance = AnalyticEnergyGuidance(scheduler, model, estimator=estimator)
    x_t = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = scheduler.timesteps[5]
    value, _, guided = guidance.step_parts(x_t, t)
    assert calls == [4 * 9]
    torch.testing.assert_close(value, guidance.intermediate_energy(x_t, t))
    torch.testing.assert_close(guided, guidance.guided_model_output(x_t, t))


def test_non_finite_energies_at_the_nodes_are_named():
    def energy(x):
        return torch.where(x[:, 0] > 0, float("nan"), 0.0) + x[:, 1]

    est = GaussianQuadrature(energy, 1.0, Fixed(torch.eye(2, dtype=torch.float64)))
    x0 = torch.zeros(2, 2, dtype=torch.float64)
    one = torch.ones(2, dtype=torch.float64)
    with pytest.raises(NonFiniteError, match="quadrature nodes"):
        est.x_t_gradient(x0, one, one, prediction=posterior(x0))


def test_bad_arguments_are_rejected():
    cov = Fixed(torch.eye(2))
    with pytest.raises(ValueError, match="beta"):
        GaussianQuadrature(linear_energy, -1.0, cov)
    with pytest.raises(ValueError, match="rule"):
        GaussianQuadrature(linear_energy, 1.0, cov, rule="simpson")
    for points in (1, 2.5, True):
        with pytest.raises(ValueError, match="points"):
            GaussianQuadrature(linear_energy, 1.0, cov, points=points)

    class QuadraticOnly:
        uses_model_graph = False

        def quadratic(self, g, alpha, sigma, **_):
            return g.pow(2).sum(1)

    with pytest.raises(TypeError, match="covariance"):
        GaussianQuadrature(linear_energy, 1.0, QuadraticOnly())
    too_many = math.ceil(math.log(MAX_NODES + 1) / math.log(3))
    with pytest.raises(ValueError, match="cubature"):
        GaussianQuadrature(linear_energy, 1.0, cov).nodes(too_many)
    assert GaussianQuadrature(linear_energy, 1.0, cov, rule="cubature").nodes(too_many)[0].shape == (
        2 * too_many,
        too_many,
    )
