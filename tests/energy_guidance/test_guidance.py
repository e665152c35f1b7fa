"""guidance.py: AnalyticEnergyGuidance on every supported scheduler configuration.

Ground truth: Gaussian data q = N(m, vI), the exact noise model and the linear energy E(x) = wᵀx.
The posterior q(x0 | x_t) is Gaussian and E linear, so the paper's closed form is exact and the
guided model is exactly the noise model of the target p = N(m - β·v·w, vI) (its ε̂ is affine in
x_t). The tests of that exactness ask for the paper's form explicitly
(``estimator=ClosedForm(energy, beta)``): ``AnalyticEnergyGuidance(scheduler, model, energy, beta)``
alone builds the default estimator (:class:`~energy_guidance.importance.ImportanceTilt`).
"""

import functools
import math
import warnings
from types import SimpleNamespace

import diffusers
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from energy_guidance import AnalyticEnergyGuidance, ClosedForm, IntermediateEnergyNet, sample
from energy_guidance.estimators import AutogradGradient
from energy_guidance.schedulers import noise_level, prediction_type, to_eps_x0
from energy_guidance.testing import GaussianMixture
from energy_guidance.variance import Constant, DataVar, Jacobian, estimate_variance_table

from .gaussian_case import (
    BETA,
    M_DATA,
    M_TARGET,
    STEPS,
    N,
    V,
    W,
    Z,
    data_model,
    exact_guidance_term,
    linear_energy,
    target_model,
)
from .schedulers import SCHEDULER_CONFIGS, STARTS_AT_PURE_NOISE, make_scheduler


@functools.cache
def sampling_runs(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(guided by the paper's closed form, unguided, exact target) samples of one configuration, all
    from the same seed."""
    with warnings.catch_warnings():
        # torchsde's Brownian tree (DPM-Solver SDE) warns that float32 sigmas lie outside its
        # float64 interval; KDPM2's set_timesteps passes tensors through numpy functions.
        warnings.filterwarnings("ignore", "Should have", UserWarning)
        warnings.filterwarnings("ignore", "__array_wrap__", DeprecationWarning)
        return _sampling_runs(name)


def _sampling_runs(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kwargs = {"num_inference_steps": STEPS, "dtype": torch.float64}
    scheduler = make_scheduler(name)
    paper = ClosedForm(linear_energy, BETA)
    guidance = AnalyticEnergyGuidance(scheduler, data_model().noise_model(scheduler), estimator=paper)
    guided = guidance.sample((N, 2), generator=torch.Generator().manual_seed(0), **kwargs)
    scheduler = make_scheduler(name)
    unguided = sample(
        scheduler,
        data_model().noise_model(scheduler),
        (N, 2),
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )
    scheduler = make_scheduler(name)
    target = sample(
        scheduler,
        target_model().noise_model(scheduler),
        (N, 2),
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )
    return guided, unguided, target


PURE_NOISE_XFAIL = pytest.mark.xfail(
    strict=True,
    raises=AssertionError,  # the known deviation, not any error
    reason=(
        "Known limitation: at α = 0 (the first flow-matching step, σ = 1) guided_model_output sets the "
        "guidance to 0 and returns the unguided x̂0 = E_q[x0], but the guided velocity needs the tilted "
        "E_p[x0] = m - β·v·w, which the local closed form cannot see there. The first step is off by "
        "h·β·v·w (h = first step size): an O(1/steps) bias that the distributional test tolerates."
    ),
)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=PURE_NOISE_XFAIL) if n in STARTS_AT_PURE_NOISE else n
        for n in sorted(SCHEDULER_CONFIGS)
    ],
)
def test_guided_sampling_equals_the_exact_target_model_pathwise(name):
    """The paper's closed form reproduces the target's own noise model step by step, so from the
    same seed the guided samples equal the target model's samples up to rounding. The models run
    in float64 (differences ~1e-16), but the DPM-Solver, Euler and flow-matching steps round the
    state to float32, where such a difference can flip a rounding: at most 1 ulp per step, which
    is < 2e-6 once carried to the final sample (|x| < 16; Euler's early VE states are larger by
    their s, and perturbations of them shrink by ~1/s on the way down), over 24 steps."""
    guided, _, target = sampling_runs(name)
    torch.testing.assert_close(guided, target, rtol=0, atol=STEPS * 2e-6)


@pytest.mark.parametrize("name", sorted(SCHEDULER_CONFIGS))
def test_guided_samples_follow_the_tilted_gaussian(name):
    """Guided samples have mean m - β·v·w and variance v, to MC error plus discretisation error.

    With the exact Gaussian noise model every supported sampler is affine in its Gaussian inputs
    z and in the data mean: x_out = N(z) + B·m, with B the sampler's (per-coordinate) mean
    contraction and N(z) a zero-mean term that is the same for the same seed. Hence
    mean_guided - m' = N̄ + (B - 1)·m' and mean_unguided - m = N̄ + (B - 1)·m. Choosing m' = -m,
        |mean_guided - m'| ≤ |mean_unguided - m| + 2·|N̄|,   |N̄| ≤ 5·SE (SE = std/√n),
    i.e. the scheduler's own (unguided) discretisation error, measured here, plus MC error. The
    variance does not depend on m at all: the same bound with the SE of a Gaussian sample
    variance, v·sqrt(2/(n-1)).
    """
    guided, unguided, _ = sampling_runs(name)
    se_mean = guided.std(0) / math.sqrt(N)
    tol_mean = (unguided.mean(0) - M_DATA).abs() + 2 * Z * se_mean
    assert ((guided.mean(0) - M_TARGET).abs() <= tol_mean).all()
    # The test can tell guided from unguided sampling: the tilt is larger than twice the tolerance.
    assert (tol_mean < (M_TARGET - M_DATA).abs() / 2).all()
    se_var = guided.var(0) * math.sqrt(2 / (N - 1))
    tol_var = (unguided.var(0) - V).abs() + 2 * Z * se_var
    assert ((guided.var(0) - V).abs() <= tol_var).all()


@pytest.mark.parametrize("name", ["ddpm-eps", "ddim-v", "dpm++-x0", "euler-karras-v", "flow-euler"])
def test_intermediate_energy_is_exact_for_gaussian_data(name):
    """The paper's closed form: E_t(x_t) = -log E[exp(-β·wᵀx0) | x_t] exactly (jacobian variance is
    exact here), in every prediction type; the guided output decodes to the target's exact ε̂ and x̂0."""
    scheduler = make_scheduler(name)
    scheduler.set_timesteps(10)
    q, p = data_model(), target_model()
    guidance = AnalyticEnergyGuidance(
        scheduler, q.noise_model(scheduler), estimator=ClosedForm(linear_energy, BETA)
    )
    gen = torch.Generator().manual_seed(1)
    for t in scheduler.timesteps[1:]:
        x_t = torch.randn(16, 2, generator=gen, dtype=torch.float64)
        alpha, sigma = (c.expand(16) for c in noise_level(scheduler, t))
        exact = -q.linear_log_potential(x_t, alpha, sigma, W, BETA)
        torch.testing.assert_close(guidance.intermediate_energy(x_t, t), exact, rtol=1e-10, atol=1e-10)

        out, info = guidance.guided_model_output(x_t, t, return_info=True)
        eps, x0 = to_eps_x0(out, x_t, alpha, sigma, prediction_type(scheduler))
        torch.testing.assert_close(eps, p.noise_prediction(x_t, alpha, sigma), rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(x0, p.posterior_mean(x_t, alpha, sigma), rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(info.x0_hat, x0)
        norm = exact_guidance_term(alpha[0], sigma[0]).norm()
        torch.testing.assert_close(info.guidance_norm, norm.expand(16), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("variance", ["eps_norm", "data_var", "diagonal", 0.3])
def test_every_variance_estimator_guides_gaussian_data_exactly(variance):
    """For Gaussian data and linear E every estimate of Σ̂ depends on t only, so it shifts E_t by a
    constant and the guided output equals that of the exact (jacobian) estimator. With the Tweedie
    gradient the estimate matters (it replaces ∂x̂0/∂x_t): exact only with the Jacobian one."""
    scheduler = diffusers.DDIMScheduler(clip_sample=False)
    q = data_model()
    model = q.noise_model(scheduler)
    table = estimate_variance_table(scheduler, model, q.sample(500), num_levels=8)
    exact = AnalyticEnergyGuidance(scheduler, model, linear_energy, BETA, variance="jacobian")
    other = AnalyticEnergyGuidance(
        scheduler, model, linear_energy, BETA, variance=variance, variance_table=table
    )
    x_t = torch.randn(32, 2, dtype=torch.float64)
    for t in (900, 500, 100):
        torch.testing.assert_close(
            other.guided_model_output(x_t, t), exact.guided_model_output(x_t, t), rtol=1e-9, atol=1e-12
        )


@pytest.mark.parametrize("name", ["ddim-eps", "dpm++-v"])
def test_rescale_keeps_the_unguided_score_norm_per_sample(name):
    """rescale="paper" (AEPO's rescale): ‖ε̃‖ = ‖ε̂‖ for every sample (scores are -ε/σ, so the same
    holds for them), while the direction still changes; and sampling with it runs and stays finite."""
    scheduler = make_scheduler(name)
    model = data_model().noise_model(scheduler)
    guidance = AnalyticEnergyGuidance(scheduler, model, linear_energy, beta=3.0, rescale="paper")
    ptype = prediction_type(scheduler)
    scheduler.set_timesteps(8)
    gen = torch.Generator().manual_seed(2)
    for t in scheduler.timesteps:
        x_t = torch.randn(64, 2, generator=gen, dtype=torch.float64)
        alpha, sigma = (c.expand(64) for c in noise_level(scheduler, t))
        eps_guided, _ = to_eps_x0(guidance.guided_model_output(x_t, t), x_t, alpha, sigma, ptype)
        eps_plain, _ = to_eps_x0(model(x_t, t.expand(64)), x_t, alpha, sigma, ptype)
        torch.testing.assert_close(eps_guided.norm(dim=1), eps_plain.norm(dim=1), rtol=1e-10, atol=1e-12)
        assert (eps_guided - eps_plain).abs().max() > 1e-3
    samples = guidance.sample((256, 2), num_inference_steps=8, generator=gen, dtype=torch.float64)
    assert samples.shape == (256, 2) and torch.isfinite(samples).all()


def test_scale_multiplies_the_guidance_term():
    scheduler = diffusers.DDPMScheduler(clip_sample=False)
    model = data_model().noise_model(scheduler)
    x_t, t = torch.randn(8, 2, dtype=torch.float64), torch.tensor(400)
    plain = model(x_t, t.expand(8))

    def term(scale):
        guidance = AnalyticEnergyGuidance(scheduler, model, linear_energy, BETA, scale=scale)
        return guidance.guided_model_output(x_t, t) - plain

    torch.testing.assert_close(term(0.0), torch.zeros_like(x_t))
    torch.testing.assert_close(term(2.5), 2.5 * term(1.0))


def test_conditional_model_and_energy_receive_cond():
    """model(x, t, cond) and energy(x0, cond): each row is guided by its own w = cond[b] (the
    paper's closed form, exact here)."""
    scheduler = diffusers.DDIMScheduler(clip_sample=False)
    q = data_model()
    base = q.noise_model(scheduler)
    seen = {}

    def model(x, t, cond):
        seen["model"] = cond
        return SimpleNamespace(sample=base(x, t))  # diffusers models return an object with .sample

    def energy(x0, cond):
        seen["energy"] = cond
        return (x0 * cond.to(x0)).sum(1)

    ws = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]], dtype=torch.float64)
    guidance = AnalyticEnergyGuidance(scheduler, model, estimator=ClosedForm(energy, BETA))
    x_t, t = torch.randn(3, 2, dtype=torch.float64), torch.tensor(300)
    out = guidance.guided_model_output(x_t, t, ws)
    assert seen["model"] is ws and seen["energy"] is ws
    alpha, sigma = noise_level(scheduler, t)
    expected = base(x_t, t.expand(3)) + sigma * BETA * alpha * V / (alpha**2 * V + sigma**2) * ws
    torch.testing.assert_close(out, expected)
    samples = guidance.sample((3, 2), cond=ws, num_inference_steps=4, dtype=torch.float64)
    assert samples.shape == (3, 2)


def test_sampling_callback_reports_each_step():
    """The reported guidance norm is the exact one: the paper's closed form is exact here."""
    scheduler = diffusers.DPMSolverMultistepScheduler()
    paper = ClosedForm(linear_energy, BETA)
    guidance = AnalyticEnergyGuidance(scheduler, data_model().noise_model(scheduler), estimator=paper)
    records = []
    guidance.sample((5, 2), num_inference_steps=6, callback=records.append, dtype=torch.float64)
    assert [r["step"] for r in records] == list(range(6))
    for r in records:
        assert r["sample"].shape == r["x0_hat"].shape == (5, 2)
        alpha, sigma = noise_level(scheduler, r["timestep"])
        torch.testing.assert_close(r["guidance_norm"], exact_guidance_term(alpha, sigma).norm().expand(5))


# --- errors ----------------------------------------------------------------------------------------


def _guidance(energy, model=None):
    scheduler = diffusers.DDIMScheduler(clip_sample=False)
    return AnalyticEnergyGuidance(scheduler, model or data_model().noise_model(scheduler), energy, BETA)


@pytest.mark.parametrize(
    "energy", [lambda x: (x @ W.to(x))[:, None], lambda x: (x @ W.to(x)).sum()], ids=["(B,1)", "scalar"]
)
def test_wrong_energy_shape_is_a_clear_error(energy):
    guidance = _guidance(energy)
    with pytest.raises(ValueError, match=r"energy must return shape \(B,\) = \(4,\)"):
        guidance.guided_model_output(torch.randn(4, 2, dtype=torch.float64), 500)
    with pytest.raises(ValueError, match="one value per sample"):
        guidance.sample((4, 2), num_inference_steps=2, dtype=torch.float64)


def test_nan_energy_is_a_clear_error():
    def energy(x):
        value = x @ W.to(x)
        return torch.where(torch.arange(len(x)) == 1, torch.nan, value)

    with pytest.raises(FloatingPointError, match=r"1 non-finite values \(NaN or inf\) out of 4"):
        _guidance(energy).guided_model_output(torch.randn(4, 2, dtype=torch.float64), 500)


def test_energy_returning_a_non_tensor_is_a_clear_error():
    with pytest.raises(TypeError, match=r"energy must return a torch\.Tensor"):
        _guidance(lambda x: [0.0] * len(x)).guided_model_output(torch.randn(4, 2), 500)


def test_model_output_of_the_wrong_shape_is_a_clear_error():
    guidance = _guidance(linear_energy, model=lambda x, t: x[:, :1])
    with pytest.raises(ValueError, match=r"model returned shape \(4, 1\) for input \(4, 2\)"):
        guidance.guided_model_output(torch.randn(4, 2), 500)


def test_constructor_rejects_negative_beta_and_missing_energy():
    scheduler = diffusers.DDIMScheduler()
    with pytest.raises(ValueError, match="beta must be finite and >= 0"):
        AnalyticEnergyGuidance(scheduler, lambda x, t: x, linear_energy, beta=-0.1)
    with pytest.raises(ValueError, match="give an energy"):
        AnalyticEnergyGuidance(scheduler, lambda x, t: x, None, beta=1.0)


def test_constructor_rejects_unknown_or_unusable_variance_estimators():
    scheduler = diffusers.DDIMScheduler()
    with pytest.raises(ValueError, match="unknown posterior variance 'eps-norm'"):
        AnalyticEnergyGuidance(scheduler, lambda x, t: x, linear_energy, 1.0, variance="eps-norm")
    with pytest.raises(ValueError, match="'data_var' needs a VarianceTable"):
        AnalyticEnergyGuidance(scheduler, lambda x, t: x, linear_energy, 1.0, variance="data_var")
    with pytest.raises(ValueError, match="must be >= 0"):
        AnalyticEnergyGuidance(scheduler, lambda x, t: x, linear_energy, 1.0, variance=-0.5)


def test_non_differentiable_energy_is_a_clear_error():
    def detached(x):
        return (x @ W.to(x)).detach()

    with pytest.raises(TypeError, match="does not depend differentiably on x0"):
        _guidance(detached).guided_model_output(torch.randn(4, 2, dtype=torch.float64), 500)


# --- estimators are values --------------------------------------------------------------------


def test_a_variance_object_equals_its_string_shortcut():
    scheduler = diffusers.DDIMScheduler(clip_sample=False)
    q = data_model()
    model = q.noise_model(scheduler)
    table = estimate_variance_table(scheduler, model, q.sample(300), num_levels=8)
    x_t = torch.randn(16, 2, dtype=torch.float64)
    for name, value in (("data_var", DataVar(table)), ("jacobian", Jacobian()), (0.2, Constant(0.2))):
        by_name = AnalyticEnergyGuidance(
            scheduler, model, linear_energy, BETA, variance=name, variance_table=table
        )
        by_value = AnalyticEnergyGuidance(scheduler, model, linear_energy, BETA, variance=value)
        assert by_name.estimator.variance == value
        torch.testing.assert_close(
            by_name.guided_model_output(x_t, 700), by_value.guided_model_output(x_t, 700)
        )


def test_a_user_defined_variance_estimator_is_one_class():
    """A new estimator needs only ``quadratic`` (and ``uses_model_graph``): here the exact
    posterior variance of the Gaussian data, which must guide exactly like the Jacobian one."""

    class ExactGaussianVariance:
        uses_model_graph = False

        def quadratic(self, g, alpha, sigma, **_):
            var = V * sigma**2 / (alpha**2 * V + sigma**2)
            return var * g.pow(2).sum(1)

    scheduler = make_scheduler("ddim-v")
    model = data_model().noise_model(scheduler)
    ours = AnalyticEnergyGuidance(scheduler, model, linear_energy, BETA, variance=ExactGaussianVariance())
    jacobian = AnalyticEnergyGuidance(scheduler, model, linear_energy, BETA, variance="jacobian")
    x_t = torch.randn(16, 2, dtype=torch.float64)
    for t in (900, 300):
        torch.testing.assert_close(ours.intermediate_energy(x_t, t), jacobian.intermediate_energy(x_t, t))
        torch.testing.assert_close(ours.guided_model_output(x_t, t), jacobian.guided_model_output(x_t, t))


def test_any_declared_estimator_guides_and_the_closed_form_is_an_estimator():
    """An estimator is any IntermediateEnergyEstimator: here the exact E_t of the Gaussian case
    (its gradient autograd's), which guides exactly like the closed form built from the energy; a
    bare callable is refused with an error naming the argument."""
    scheduler = make_scheduler("dpm++-x0")
    scheduler.set_timesteps(10)
    q = data_model()

    class ExactLinear(AutogradGradient, torch.nn.Module):
        beta = BETA

        def forward(self, x_t, alpha, sigma, cond=None, *, prediction=None):
            return -q.linear_log_potential(x_t, alpha, sigma, W, BETA)

    model = q.noise_model(scheduler)
    exact = AnalyticEnergyGuidance(scheduler, model, estimator=ExactLinear())
    closed = AnalyticEnergyGuidance(scheduler, model, estimator=ClosedForm(linear_energy, BETA))
    assert exact.beta == BETA and exact.amortized and not closed.amortized
    x_t = torch.randn(16, 2, dtype=torch.float64)
    for t in scheduler.timesteps[1:4]:
        torch.testing.assert_close(exact.guided_model_output(x_t, t), closed.guided_model_output(x_t, t))
    with pytest.raises(ValueError, match="not both"):
        AnalyticEnergyGuidance(scheduler, model, linear_energy, BETA, estimator=ExactLinear())
    with pytest.raises(TypeError, match="estimator must be an IntermediateEnergyEstimator"):
        AnalyticEnergyGuidance(scheduler, model, estimator=lambda x_t, a, s, c=None: x_t.sum(1))


@pytest.mark.parametrize("name", ["ddpm-eps", "ddim-v", "dpm++-x0", "euler-karras-v", "flow-euler"])
@pytest.mark.parametrize("form", ["paper", "tweedie", "jacobian", "network"])
def test_step_parts_are_the_three_separate_calls(name, form):
    """(E_t, model output, guided output) from one model evaluation equal intermediate_energy,
    the model and guided_model_output (to float64 rounding), for every kind of estimator."""
    scheduler = make_scheduler(name)
    scheduler.set_timesteps(10)
    model = data_model().noise_model(scheduler)
    kwargs = {
        "paper": {"estimator": ClosedForm(linear_energy, BETA)},
        "tweedie": {"energy": linear_energy, "beta": BETA, "gradient": "tweedie", "variance": Jacobian()},
        "jacobian": {"energy": linear_energy, "beta": BETA, "variance": Jacobian()},
        "network": {"estimator": IntermediateEnergyNet(2, hidden=8, beta=BETA).double()},
    }[form]
    guidance = AnalyticEnergyGuidance(scheduler, model, **kwargs)
    x_t = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for t in scheduler.timesteps[[1, 5, -1]]:  # (flow's first, α = 0: E_t is infinite)
        value, out, guided = guidance.step_parts(x_t, t)
        torch.testing.assert_close(value, guidance.intermediate_energy(x_t, t))
        torch.testing.assert_close(out, model(x_t, t))
        torch.testing.assert_close(guided, guidance.guided_model_output(x_t, t))


@pytest.mark.parametrize("family", [diffusers.DPMSolverMultistepScheduler, diffusers.UniPCMultistepScheduler])
def test_scheduler_thresholding_clips_vector_samples(family):
    """``thresholding=True, sample_max_value=1`` clips x̂0 to [-1, 1] inside the scheduler, also
    for (B, d) samples (diffusers' own reshape needs (B, C, ...)): the same as clipping the
    model's x̂0 before an unthresholded scheduler."""
    q = data_model()

    def run(scheduler, clip: bool):
        model = q.noise_model(scheduler)

        def clipped(x_t, t):
            alpha, sigma = (c.to(x_t).reshape(-1, 1) for c in noise_level(scheduler, t))
            x0 = ((x_t - sigma * model(x_t, t)) / alpha).clamp(-1, 1)
            return (x_t - alpha * x0) / sigma

        gen = torch.Generator().manual_seed(0)
        return sample(scheduler, clipped if clip else model, (256, 2), num_inference_steps=8, generator=gen)

    thresholded = run(family(thresholding=True, sample_max_value=1.0), clip=False)
    by_hand = run(family(), clip=True)
    torch.testing.assert_close(thresholded, by_hand)
    assert thresholded.abs().max() <= 1 + 1e-6 and run(family(), clip=False).abs().max() > 1.5


# --- the second-order closed form -------------------------------------------------------------


@pytest.mark.parametrize("name", ["ddpm-eps", "ddim-v", "dpm++-x0", "euler-karras-v"])
@pytest.mark.parametrize("variance", ["jacobian", "exact_constant"])
@pytest.mark.parametrize("gradient", ["autograd", "tweedie"])
def test_second_order_guidance_is_exact_for_a_quadratic_energy(name, variance, gradient):
    """Gaussian data N(m, vI) and E(x) = ½k‖x - a‖²: the target is N(m', v'I), v' = 1/(1/v + βk),
    m' = v'(m/v + βka). The posterior is Gaussian with covariance v·σ²/(α²v + σ²)·I, which the
    Jacobian estimator recovers exactly from the exact model, so (3) is exact: the guided output
    is the target's own noise model, at a β where (1) is far off. The Tweedie gradient (no
    backward pass through the model) is exact here too: the posterior covariance is constant."""
    k, beta = 2.0, 4.0
    a = torch.tensor([1.0, -0.5], dtype=torch.float64)
    v_target = 1 / (1 / V + beta * k)
    target = GaussianMixture.gaussian(v_target * (M_DATA / V + beta * k * a), v_target)

    def quadratic(x):
        return 0.5 * k * (x - a.to(x)).pow(2).sum(1)

    scheduler = make_scheduler(name)
    scheduler.set_timesteps(10)
    model = data_model().noise_model(scheduler)
    x_t = torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for t in scheduler.timesteps[1:]:
        alpha, sigma = noise_level(scheduler, t)
        if variance == "exact_constant":  # the exact posterior variance, as a per-step constant
            chosen = Constant(float(V * sigma**2 / (alpha**2 * V + sigma**2)))
        else:
            chosen = variance
        kwargs = {"variance": chosen, "gradient": gradient}
        second = AnalyticEnergyGuidance(scheduler, model, quadratic, beta, order=2, **kwargs)
        first = AnalyticEnergyGuidance(scheduler, model, quadratic, beta, order=1, **kwargs)
        expected = target.noise_model(scheduler)(x_t, t.expand(16))
        torch.testing.assert_close(second.guided_model_output(x_t, t), expected, rtol=1e-8, atol=1e-9)
        if float(sigma / alpha) > 1:  # at high noise the paper's form is visibly wrong here
            assert (first.guided_model_output(x_t, t) - expected).abs().max() > 0.1


@settings(max_examples=25, deadline=None)
@given(k=st.floats(-4.0, 4.0), beta=st.floats(0.1, 10.0), step=st.integers(1, 9))
def test_second_order_tweedie_gradient_is_the_damped_tilted_mean_step(k, beta, step):
    """Gaussian data, E = ½k‖x - a‖² of either curvature, Σ̂ = c·I the exact posterior variance (a
    per-step constant, so autograd's ∂x̂0/∂x_t = (α/σ²)·Σ̂ exactly). Where (3) is undamped
    (k ≥ 0) the Tweedie gradient is the derivative of its value, autograd's; where it is damped
    (k < 0, δ = -β·c·k with floor 1) it is the damped tilted mean's step, and autograd's
    derivative of the damped value is exactly 1 + δ times larger (docs/math.md (4))."""
    a = torch.tensor([1.0, -0.5], dtype=torch.float64)

    def quadratic(x):
        return 0.5 * k * (x - a.to(x)).pow(2).sum(1)

    scheduler = make_scheduler("ddpm-eps")
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[step]
    alpha, sigma = noise_level(scheduler, t)
    c = float(V * sigma**2 / (alpha**2 * V + sigma**2))
    model = data_model().noise_model(scheduler)
    x_t = torch.randn(8, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    gradients = {
        gradient: AnalyticEnergyGuidance(
            scheduler, model, quadratic, beta, order=2, variance=Constant(c), gradient=gradient
        ).energy_gradient(x_t, t)
        for gradient in ("autograd", "tweedie")
    }
    delta = max(0.0, -beta * c * k)
    torch.testing.assert_close(
        gradients["autograd"], (1 + delta) * gradients["tweedie"], rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("name", ["ddpm-eps", "ddim-v", "dpm++-x0", "euler-ancestral-v", "unipc-eps"])
def test_tweedie_gradient_is_exact_for_gaussian_data(name):
    """Linear E on Gaussian data: (α/σ²)·Σ̂·β·w with the Jacobian covariance is the exact
    ∇_{x_t} E_t, the same as autograd through the model (the paper's closed form)."""
    scheduler = make_scheduler(name)
    scheduler.set_timesteps(10)
    model = data_model().noise_model(scheduler)
    tweedie = AnalyticEnergyGuidance(scheduler, model, linear_energy, BETA, gradient="tweedie")
    autograd = AnalyticEnergyGuidance(scheduler, model, estimator=ClosedForm(linear_energy, BETA))
    x_t = torch.randn(16, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for t in scheduler.timesteps[1:]:
        alpha, sigma = noise_level(scheduler, t)
        expected = exact_guidance_term(alpha, sigma) / sigma
        torch.testing.assert_close(tweedie.energy_gradient(x_t, t), expected.expand(16, 2))
        torch.testing.assert_close(tweedie.guided_model_output(x_t, t), autograd.guided_model_output(x_t, t))


def test_tweedie_gradient_with_a_table_variance_never_differentiates_the_model():
    """With a table variance the Tweedie gradient needs no model gradient: a model that refuses
    to be differentiated still guides."""
    scheduler = diffusers.DDIMScheduler(clip_sample=False)
    q = data_model()
    exact = q.noise_model(scheduler)
    table = estimate_variance_table(scheduler, exact, q.sample(500), num_levels=8)

    def model(x_t, t):
        assert not torch.is_grad_enabled(), "the model was evaluated with gradients on"
        return exact(x_t, t)

    guidance = AnalyticEnergyGuidance(
        scheduler, model, linear_energy, BETA, variance="data_var", variance_table=table, gradient="tweedie"
    )
    assert guidance.amortized  # in the sense of: no backward pass through the model
    x = guidance.sample((500, 2), num_inference_steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("beta", [10.0, 50.0])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"variance": "jacobian"},  # the paper's closed form
        {"variance": 0.0},
        {"variance": Jacobian(max_variance=0.3), "gradient": "tweedie"},
    ],
    ids=["default", "paper", "dps", "tweedie"],
)
def test_ddim_clipping_does_not_reverse_guidance(beta, kwargs):
    """Data in [-1, 1] (modes at ±0.5), asking for darker samples strongly enough that x̂0 is
    pushed past -1: DDIM clips it, and with diffusers' default step (unclipped ε̂) the samples got
    brighter instead (mean energy 0.00 -> +0.66 at β = 10 with the paper's closed form).
    Guided DDIM now steps with ε recomputed from the clipped x̂0: the guidance saturates. Checked
    for the default estimator, the paper's closed form, DPS-style and the Tweedie gradient."""
    data = GaussianMixture(torch.ones(2), torch.tensor([[-0.5] * 4, [0.5] * 4]), torch.full((2, 4), 0.05))

    def darkness(x):
        return x.mean(1)

    scheduler = diffusers.DDIMScheduler(clip_sample=True)
    model = data.noise_model(scheduler)
    gen = torch.Generator().manual_seed(0)
    plain = sample(scheduler, model, (1000, 4), num_inference_steps=25, generator=gen)
    guidance = AnalyticEnergyGuidance(scheduler, model, darkness, beta, allow_clipping=True, **kwargs)
    guided = guidance.sample((1000, 4), num_inference_steps=25, generator=torch.Generator().manual_seed(0))
    # Darker than unguided by more than 0.3 (the unguided mean is 0 ± 0.016, 1000 samples of ±0.5).
    assert darkness(guided).mean() < darkness(plain).mean() - 0.3
    assert guided.abs().max() <= 1.0 + 1e-5


def test_an_estimator_that_returns_no_value_when_asked_for_one_is_named():
    """step_parts (SMC's twist) asks value_and_x_t_gradient for E_t (with_value=True); an estimator
    that returns None there breaks the protocol and is named, not passed on as a weight."""

    class NoValue:
        beta, energy, model_derivatives = 1.0, None, 0

        def __call__(self, x_t, alpha, sigma, cond=None, *, prediction=None):
            return torch.zeros(len(x_t))

        def value_and_x_t_gradient(self, x_t, alpha, sigma, cond=None, *, prediction=None, with_value=True):
            return None, torch.zeros_like(x_t)

    scheduler = diffusers.DDPMScheduler(clip_sample=False)
    guidance = AnalyticEnergyGuidance(scheduler, lambda x, t: torch.zeros_like(x), estimator=NoValue())
    with pytest.raises(TypeError, match=r"NoValue\.value_and_x_t_gradient returned no value"):
        guidance.step_parts(torch.randn(3, 2), torch.tensor(500))


@pytest.mark.parametrize(
    ("beta", "message"),
    [
        (torch.tensor([1.0, 2.0]), r"beta must be a number \(an inverse temperature >= 0\), got Tensor"),
        ("1", r"beta must be a number \(an inverse temperature >= 0\), got str '1'"),
    ],
)
def test_a_beta_that_is_not_a_number_is_named(beta, message):
    scheduler = diffusers.DDPMScheduler()
    with pytest.raises(TypeError, match=message):
        AnalyticEnergyGuidance(scheduler, lambda x, t: torch.zeros_like(x), lambda x: x.sum(1), beta)


def test_an_estimator_given_by_name_is_named():
    scheduler = diffusers.DDPMScheduler()
    with pytest.raises(TypeError, match=r"estimator must be an IntermediateEnergyEstimator.*got str"):
        AnalyticEnergyGuidance(scheduler, lambda x, t: torch.zeros_like(x), estimator="quadrature")


def test_the_explosion_warning_is_given_once_for_a_guidance_and_its_copies():
    """A closed form on a steep linear energy (E = 1e4·x_1) makes the guidance term thousands of
    times ‖ε̂‖: the first sampling warns, its replace() copies (a pipeline or SMC makes one per
    call) do not warn again, and a new guidance does."""
    from energy_guidance.guidance import GuidanceExplosionWarning

    data = GaussianMixture.gaussian(torch.zeros(2), torch.ones(2))
    scheduler = diffusers.DDPMScheduler(clip_sample=False)
    model = data.noise_model(scheduler)

    def steep(x: torch.Tensor) -> torch.Tensor:
        return 1e4 * x[:, 0]

    def count(guidance: AnalyticEnergyGuidance) -> int:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            guidance.sample((8, 2), num_inference_steps=5, generator=torch.Generator().manual_seed(0))
        return sum(issubclass(w.category, GuidanceExplosionWarning) for w in caught)

    def closed_form() -> AnalyticEnergyGuidance:
        estimator = ClosedForm(steep, 1.0, Constant(1.0), gradient="tweedie")
        return AnalyticEnergyGuidance(scheduler, model, estimator=estimator)

    first = closed_form()
    assert count(first) == 1
    assert count(first.replace(scale=1.0)) == 0
    assert count(first.replace(scheduler=diffusers.DDPMScheduler(clip_sample=False))) == 0
    assert count(closed_form()) == 1
