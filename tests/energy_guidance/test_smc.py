"""smc.py: sequential Monte Carlo with a guidance's twist and guided proposals.

Ground truth. For Gaussian data N(m, v·I) the exact noise model is affine in x_t, so every
supported sampler is an affine map of its Gaussian inputs (initial noise, one noise per step), and
the distribution it actually samples, q̃, is Gaussian N(m̃, ṽ·I). :func:`discretised_gaussian`
computes m̃ and ṽ exactly by pushing basis noises through the scheduler's own step. SMC targets
q̃·exp(-β·E)/Z̃ (its weights use the sampler's transitions), whose moments and log Z̃ are closed
form for linear and quadratic E: the tests compare against these with Monte Carlo tolerances
only (Z standard errors). q̃ differs from q by the sampler's discretisation; that gap is measured
here too (``test_the_discretised_target_is_close_to_the_exact_one``).

Monte Carlo errors come from the spread over B independent populations: per population b the
self-normalised estimates Σ_k W_bk·f(x_bk), whose mean over b has SE = sd_b/√B (plus an O(1/K)
self-normalisation bias, kept below the SE by K = 64), and for Z the unbiased Ẑ_b, whose mean has
SE = sd_b(Ẑ_b)/√B (delta method for log Z).
"""

import functools
import math
import sys
import textwrap

import diffusers
import pytest
import torch

import energy_guidance
from energy_guidance import AnalyticEnergyGuidance, ClosedForm, IntermediateEnergyNet, SMCResult, smc_sample
from energy_guidance.baselines import dps_guidance
from energy_guidance.estimators import AutogradGradient
from energy_guidance.schedulers import SchedulerAdapter
from energy_guidance.smc import _index_entries
from energy_guidance.testing import GaussianMixture

Z = 5.0  # standard errors allowed
STEPS = 50
D = 2
M = torch.tensor([0.3, -0.2], dtype=torch.float64)
V = 0.5
BETA = 1.5
W = torch.tensor([1.0, -1.0], dtype=torch.float64)
QUAD_A, QUAD_B = 2.0, torch.tensor([0.5, 1.0], dtype=torch.float64)  # E = ½·a·‖x‖² + bᵀx

# name -> (factory, DDIM's eta)
SCHEDULERS = {
    "ddpm": (lambda: diffusers.DDPMScheduler(clip_sample=False), None),
    "ddpm-trailing": (lambda: diffusers.DDPMScheduler(clip_sample=False, timestep_spacing="trailing"), None),
    "ddim-eta1": (lambda: diffusers.DDIMScheduler(clip_sample=False), 1.0),
    "euler-ancestral": (lambda: diffusers.EulerAncestralDiscreteScheduler(), None),
    "dpm++-sde": (lambda: diffusers.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"), None),
}


def stepper(scheduler, eta):
    """``scheduler.step`` with given noise, as SMC steps it (``SchedulerAdapter.step_with_noise``)."""
    adapter = SchedulerAdapter(scheduler)
    options = adapter.stochastic_step_options(eta)
    return lambda out, t, x, noise: adapter.step_with_noise(out, t, x, noise, options)


def linear_energy(x):
    return x @ W.to(x)


def quadratic_energy(x):
    return 0.5 * QUAD_A * (x**2).sum(1) + x @ QUAD_B.to(x)


def data_model() -> GaussianMixture:
    return GaussianMixture.gaussian(M, V)


@functools.cache
def discretised_gaussian(name: str, steps: int = STEPS) -> tuple[torch.Tensor, float]:
    """(m̃ (D,), ṽ) of the unguided sampler ``name`` on N(M, V·I) with the exact model: row 0 runs
    with zero noise (the mean), row 1 with the initial noise e = 1, row 2 + i with step i's
    noise = 1; the differences to row 0 are the coefficients of each noise source."""
    make, eta = SCHEDULERS[name]
    scheduler = make()
    model = data_model().noise_model(scheduler)
    scheduler.set_timesteps(steps)
    n = steps + 2
    x = torch.zeros(n, D, dtype=torch.float64)
    x[1] = float(scheduler.init_noise_sigma)
    step = stepper(scheduler, eta)
    for i, t in enumerate(scheduler.timesteps):
        out = model(scheduler.scale_model_input(x, t), t.expand(n))
        noise = torch.zeros_like(x)
        noise[2 + i] = 1.0
        x = step(out, t, x, noise)
    coefficients = x[1:] - x[0]
    variance = (coefficients**2).sum(0)
    torch.testing.assert_close(variance[0], variance[1], rtol=1e-5, atol=0)  # isotropic (float32 steps)
    return x[0], float(variance.mean())


def tilted_linear(m, v, beta):
    """N(m, v·I) tilted by exp(-β·wᵀx): mean, variance, log Z."""
    return m - beta * v * W, v, float(-beta * W @ m + 0.5 * beta**2 * v * (W @ W))


def tilted_quadratic(m, v, beta):
    """N(m, v·I) tilted by exp(-β·(½a‖x‖² + bᵀx)): mean, variance, log Z (docs/math.md)."""
    precision = 1 / v + beta * QUAD_A
    mean = (m / v - beta * QUAD_B) / precision
    g = QUAD_A * m + QUAD_B
    log_z = (
        -0.5 * D * math.log(1 + beta * v * QUAD_A)
        - beta * float(quadratic_energy(m[None])[0])
        + 0.5 * beta**2 * float(g @ g) / precision
    )
    return mean, 1 / precision, log_z


def guidance_for(name: str, energy, beta: float, *, dps: bool = False, paper: bool = False) -> tuple:
    """(guidance on the Gaussian data with the exact model, DDIM's eta or None): DPS-style
    (``dps``), the paper's closed form ``ClosedForm(energy, beta)`` (``paper``), or else the
    library's default estimator."""
    make, eta = SCHEDULERS[name]
    scheduler = make()
    model = data_model().noise_model(scheduler)
    if dps:
        return dps_guidance(scheduler, model, energy, beta), eta
    if paper:
        return AnalyticEnergyGuidance(scheduler, model, estimator=ClosedForm(energy, beta)), eta
    return AnalyticEnergyGuidance(scheduler, model, energy, beta), eta


def run(guidance, eta, b=128, k=64, steps=STEPS, seed=0, **kwargs) -> SMCResult:
    kwargs.setdefault("resample", False)
    return smc_sample(
        guidance.scheduler,
        guidance,
        (b, D),
        num_particles=k,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        eta=eta,
        dtype=torch.float64,
        **kwargs,
    )


def population_estimates(result: SMCResult, f) -> torch.Tensor:
    """Σ_k W_bk·f(x_bk) per population (B, ...)."""
    w = result.log_weights.exp()
    values = f(result.samples)
    return (w.reshape(w.shape + (1,) * (values.dim() - 2)) * values).sum(1)


def assert_within(estimates: torch.Tensor, expected, what: str) -> None:
    """The mean over populations of ``estimates`` (B, ...) is within Z standard errors of ``expected``."""
    mean, se = estimates.mean(0), estimates.std(0) / math.sqrt(len(estimates))
    expected = torch.as_tensor(expected, dtype=mean.dtype)
    error = (mean - expected).abs()
    assert (error <= Z * se).all(), f"{what}: {mean.tolist()} vs {expected.tolist()} (SE {se.tolist()})"


def log_mean_z(result: SMCResult) -> tuple[float, float]:
    """log of the mean over populations of the unbiased Ẑ_b, and its delta-method SE."""
    log_z = result.log_normalizer
    estimate = torch.logsumexp(log_z, 0) - math.log(len(log_z))
    se = torch.exp(log_z - estimate).std() / math.sqrt(len(log_z))
    return float(estimate), float(se)


# --- transitions -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_the_step_is_its_mean_plus_its_std_times_the_injected_noise(name):
    """Stepping with noise z gives μ + s·z, where μ is the step with z = 0 and s the step with z = 1
    minus μ; s does not depend on the model output; the scheduler's randn_tensor is restored."""
    make, eta = SCHEDULERS[name]
    scheduler = make()
    scheduler.set_timesteps(10)
    model = data_model().noise_model(scheduler)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, D, generator=gen, dtype=torch.float64) * float(scheduler.init_noise_sigma)
    step = stepper(scheduler, eta)
    module = sys.modules[next(c for c in type(scheduler).__mro__ if "step" in vars(c)).__module__]
    randn_before = getattr(module, "randn_tensor", None)
    t = scheduler.timesteps[3]
    scheduler._step_index = 3 if hasattr(scheduler, "_step_index") else None
    if hasattr(scheduler, "model_outputs"):  # a second-order DPM step, from a valid history
        scheduler.model_outputs = [torch.randn(8, D, generator=gen, dtype=torch.float64)] * 2
        scheduler.lower_order_nums = 2
    state = SchedulerAdapter(scheduler).snapshot()
    out = model(scheduler.scale_model_input(x, t), t.expand(8))
    other = out + torch.randn(8, D, generator=gen, dtype=torch.float64)
    z = torch.randn(8, D, generator=gen, dtype=torch.float64)
    results = {}
    for key, (o, noise) in {
        "mean": (out, torch.zeros_like(x)),
        "one": (out, torch.ones_like(x)),
        "z": (out, z),
        "other_mean": (other, torch.zeros_like(x)),
        "other_one": (other, torch.ones_like(x)),
    }.items():
        SchedulerAdapter(scheduler).restore(state)
        results[key] = step(o, t, x, noise)
    std = results["one"] - results["mean"]
    assert float(std.min()) > 1e-3
    torch.testing.assert_close(results["z"], results["mean"] + std * z, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(results["other_one"] - results["other_mean"], std, rtol=1e-6, atol=1e-6)
    assert (results["other_mean"] - results["mean"]).abs().max() > 1e-3
    assert getattr(module, "randn_tensor", None) is randn_before


def test_ddpm_transition_is_the_posterior_of_eq_7():
    """For DDPM the mean and std read off the step are DDPM's μ̃_t(x_t, x̂0) and √β̃_t."""
    scheduler = diffusers.DDPMScheduler(clip_sample=False)
    scheduler.set_timesteps(20)
    t, prev = int(scheduler.timesteps[5]), int(scheduler.timesteps[6])
    x = torch.randn(4, D, dtype=torch.float64)
    out = torch.randn(4, D, dtype=torch.float64)
    step = stepper(scheduler, None)
    mean = step(out, t, x, torch.zeros_like(x))
    std = step(out, t, x, torch.ones_like(x)) - mean
    acp = scheduler.alphas_cumprod.double()
    a_t, a_p = acp[t], acp[prev]
    beta_t = 1 - a_t / a_p
    x0 = (x - (1 - a_t).sqrt() * out) / a_t.sqrt()
    expected = a_p.sqrt() * beta_t / (1 - a_t) * x0 + (1 - beta_t).sqrt() * (1 - a_p) / (1 - a_t) * x
    torch.testing.assert_close(mean, expected, rtol=1e-5, atol=1e-6)
    expected_std = ((1 - a_p) / (1 - a_t) * beta_t).sqrt().expand_as(std)
    torch.testing.assert_close(std, expected_std, rtol=1e-5, atol=1e-7)


# --- exactness ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_beta_zero_is_the_model_itself(name):
    """β = 0: guided = unguided, the twist is 0, so every weight is exactly uniform and log Z = 0."""
    guidance, eta = guidance_for(name, linear_energy, 0.0)
    result = run(guidance, eta, b=4, k=8, steps=10)
    torch.testing.assert_close(result.ess, torch.full_like(result.ess, 8.0), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(result.log_normalizer, torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-9)
    assert not result.resampled.any()


class ExactMixtureTwist(AutogradGradient, torch.nn.Module):
    """The exact E_t of a Gaussian mixture for the linear energy (closed form, differentiable)."""

    def __init__(self, mixture: GaussianMixture, beta: float) -> None:
        super().__init__()
        self.mixture, self.beta, self.energy = mixture, beta, linear_energy

    def forward(self, x_t, alpha, sigma, cond=None, *, prediction=None):
        alpha, sigma = alpha.double().expand(len(x_t)), sigma.double().expand(len(x_t))
        return -self.mixture.linear_log_potential(x_t, alpha, sigma, W, self.beta).to(x_t.dtype)


TWO_MODES = GaussianMixture(
    torch.tensor([0.3, 0.7]), torch.tensor([[-1.0, 0.0], [1.0, 0.5]]), torch.full((2, 2), 0.2)
)


@pytest.mark.parametrize("data", [data_model(), TWO_MODES], ids=["gaussian", "two-modes"])
def test_the_exact_twist_keeps_the_weights_uniform_up_to_discretisation(data):
    """With the exact E_t the guided step is the exact tilted reverse process in continuous time,
    so the weights vary only by the discretisation. Measured ESS/K (B = 64, K = 16, no resampling;
    it falls monotonically, so the last row is the minimum):

        scheduler          steps   Gaussian   two modes
        DPM-Solver++ SDE   50      0.977      0.952
        DDPM               50      0.376      0.377
        DDPM               200     0.955      0.954

    DDPM's loss is at its last stochastic steps (t = 40 -> 20 -> 0 with 50 steps): its kernel has
    the variance β̃_t ≈ σ_{t'}² of a known x0, much narrower than the true reverse kernel's once
    σ_{t'} ≪ σ_t, and the guided mean moves by ~0.5 of that width while the twist barely changes.
    It is the sampler's discretisation, not the weights: the deficit 1 - ESS/K falls ~ steps⁻²
    (0.62 -> 0.045 from 50 to 200 steps). Bounds: ESS ≥ 0.9·K for DPM-Solver++ SDE at 50 steps and
    DDPM at 200; the DDPM deficit at 200 steps is below a quarter of that at 50.
    """
    deficits = {}
    for name, steps in [("dpm++-sde", 50), ("ddpm", 50), ("ddpm", 200)]:
        make, eta = SCHEDULERS[name]
        scheduler = make()
        guidance = AnalyticEnergyGuidance(
            scheduler, data.noise_model(scheduler), estimator=ExactMixtureTwist(data, BETA)
        )
        result = run(guidance, eta, b=64, k=16, steps=steps, ess_threshold=0.0)
        ess = result.ess.mean(1) / 16
        deficits[name, steps] = 1 - float(ess.min())
    assert deficits["dpm++-sde", 50] < 0.1
    assert deficits["ddpm", 200] < 0.1
    assert deficits["ddpm", 200] < deficits["ddpm", 50] / 4


def test_the_discretised_target_is_close_to_the_exact_one():
    """The gap between q̃ (what SMC targets) and q = N(M, V·I): the discretisation allowance that
    comparisons with the continuous target would need. The mean is exact; the variance ṽ is

        steps   DDPM / DDIM η=1   Euler ancestral   DPM-Solver++ SDE       (V = 0.5)
        50      0.414             0.413             0.525
        200     0.474             0.474             0.503

    (DDPM's last step returns x̂0, a posterior mean, and its coarse kernels under-disperse.)
    Bounds: |ṽ - V| < 0.2·V at 50 steps, < 0.06·V at 200, and shrinking with the steps."""
    for name in SCHEDULERS:
        mean, var = discretised_gaussian(name)
        torch.testing.assert_close(mean, M, rtol=0, atol=1e-4)
        fine = discretised_gaussian(name, 200)[1]
        assert abs(var - V) < 0.2 * V, (name, var)
        assert abs(fine - V) < min(0.06 * V, abs(var - V)), (name, fine)


CASES = [(name, "linear") for name in sorted(SCHEDULERS) if name != "ddpm-trailing"] + [
    ("ddpm-trailing", "quadratic"),
    ("dpm++-sde", "quadratic"),
]


@functools.cache
def tilted_run(name: str, energy_name: str) -> tuple[SMCResult, tuple]:
    """SMC with an imperfect twist: for the linear energy the paper's closed form built for β/2
    (twist and proposal too weak; B = 128, K = 64), for the quadratic one DPS-style guidance (no
    variance term; B = 128, K = 128).

    The quadratic case runs DDPM with "trailing" spacing: with the default "leading" spacing the
    last stochastic step jumps from t = 20 to t = 0 (noise variance ÷ 24) and DPS's guided mean
    moves by ~1 kernel width there, so the weights are heavy-tailed and the O(1/K) bias is slow
    to arrive (measured mean bias 0.060, 0.037, 0.021 at K = 16, 64, 256 against 0.031, 0.014,
    0.004 with "trailing" and 0.022, 0.009, 0.002 with DPM-Solver++ SDE)."""
    m, v = discretised_gaussian(name)
    if energy_name == "linear":
        guidance, eta = guidance_for(name, linear_energy, BETA / 2, paper=True)
        return run(guidance, eta, beta=BETA), tilted_linear(m, v, BETA)
    guidance, eta = guidance_for(name, quadratic_energy, BETA, dps=True)
    return run(guidance, eta, k=128, beta=BETA), tilted_quadratic(m, v, BETA)


@pytest.mark.parametrize(("name", "energy_name"), CASES)
def test_smc_returns_the_tilted_gaussian(name, energy_name):
    """Mean and second moment of the weighted particles match q̃·exp(-β·E)/Z̃ within Z SE."""
    result, (mean, var, _) = tilted_run(name, energy_name)
    assert_within(population_estimates(result, lambda x: x), mean, "mean")
    assert_within(population_estimates(result, lambda x: x**2), var + mean**2, "second moment")
    # the twist was imperfect: the weights mattered
    assert float(result.ess.min()) < 0.9 * result.log_weights.shape[1]


@pytest.mark.parametrize(("name", "energy_name"), CASES)
def test_log_normalizer_matches_the_exact_value(name, energy_name):
    """log mean_b Ẑ_b = log Z̃ within Z SE, Z̃ the normaliser of the *discretised* sampler's tilted
    marginal (what SMC is exact for; its gap to the continuous log Z is the discretisation's)."""
    result, (_, _, log_z_tilde) = tilted_run(name, energy_name)
    estimate, se = log_mean_z(result)
    assert abs(estimate - log_z_tilde) <= Z * se, (estimate, log_z_tilde, se)
    assert torch.isfinite(result.log_normalizer).all()


def test_the_error_falls_as_particles_grow():
    """A poor twist (a β = 0 guidance: unguided proposals, no twist, all correction at the end).
    The bias of SMC is O(1/K): at K = 4 the resampled draws' mean is off the target by more than
    Z standard errors (the bias is resolved), at K = 64 it is within Z SE."""
    name = "ddpm"
    m, v = discretised_gaussian(name)
    mean, _, _ = tilted_linear(m, v, BETA)
    errors, ses = {}, {}
    for k in (4, 64):
        guidance, eta = guidance_for(name, linear_energy, 0.0)
        result = run(guidance, eta, b=512, k=k, energy=linear_energy, beta=BETA, resample=True)
        assert result.samples.shape == (512, D)
        errors[k] = float((result.samples.mean(0) - mean).norm())
        ses[k] = float(result.samples.std(0).norm()) / math.sqrt(512)
    assert errors[4] > Z * ses[4], (errors, ses)
    assert errors[64] <= Z * ses[64], (errors, ses)


def test_resampling_every_step_and_multinomial_resampling_stay_exact():
    """ess_threshold = 1 resamples wherever the weights are not uniform (permuting DPM-Solver's
    per-particle history each time); multinomial resampling: both still return the tilted Gaussian.
    The twist and proposal: the paper's closed form built for β/2."""
    name = "dpm++-sde"
    m, v = discretised_gaussian(name)
    mean, var, _ = tilted_linear(m, v, BETA)
    guidance, eta = guidance_for(name, linear_energy, BETA / 2, paper=True)
    for kwargs in ({"ess_threshold": 1.0}, {"resampling": "multinomial"}):
        result = run(guidance, eta, beta=BETA, **kwargs)
        if "ess_threshold" in kwargs:
            # the twist is exact up to the discretisation, so the weights are close to uniform but
            # not equal: most steps still resample, which is what exercises the permutations
            assert float(result.resampled[:-1].float().mean()) > 0.5
        assert_within(population_estimates(result, lambda x: x), mean, f"mean {kwargs}")
        assert_within(population_estimates(result, lambda x: x**2), var + mean**2, f"second moment {kwargs}")


def test_uniform_weights_are_never_resampled():
    """β = 0: the twist is 0 and the proposal the model's step, so every weight stays 1/K; even
    ess_threshold = 1 ("whenever the weights are not uniform") must not resample, although the
    ESS of uniform weights computes to just below K in floating point (63.99999999999998 for 64)."""
    guidance, eta = guidance_for("ddpm", linear_energy, 0.0)
    result = run(guidance, eta, b=4, k=64, steps=5, beta=0.0, ess_threshold=1.0)
    assert not result.resampled.any()
    torch.testing.assert_close(result.log_weights, torch.full((4, 64), -math.log(64), dtype=torch.float64))


def test_resampling_permutes_every_per_particle_state_tensor():
    """After a DPM-Solver step the history holds per-particle tensors: indexing the snapshot
    permutes them (and nothing else: the schedule's tensors are untouched)."""
    scheduler = diffusers.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")
    scheduler.set_timesteps(10)
    x = torch.randn(6, D, dtype=torch.float64)
    step = stepper(scheduler, None)
    t = scheduler.timesteps[0]
    step(torch.randn_like(x), t, x, torch.zeros_like(x))
    state = SchedulerAdapter(scheduler).snapshot()
    index = torch.tensor([5, 5, 0, 1, 2, 3])
    permuted = _index_entries(state, index, SchedulerAdapter(scheduler).state_shape(x))
    torch.testing.assert_close(permuted["model_outputs"][-1], state["model_outputs"][-1][index])
    assert permuted["model_outputs"][0] is None
    for key in ("timesteps", "sigmas", "alphas_cumprod"):
        assert permuted[key] is state[key]


# --- contract -----------------------------------------------------------------------------------


def test_each_population_has_its_own_condition():
    """cond (B, D) sets the energy's direction per population, E(x, c) = cᵀx: population b's
    weighted mean is m̃ - β·ṽ·c_b (the populations' targets differ by far more than the SE)."""
    name = "ddpm"
    make, eta = SCHEDULERS[name]
    scheduler = make()
    base = data_model().noise_model(scheduler)

    def model(x_t, t, cond):
        return base(x_t, t)

    def energy(x, cond):
        return (x * cond).sum(1)

    cond = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    guidance = AnalyticEnergyGuidance(scheduler, model, energy, BETA / 2)
    b, reps = len(cond), 32
    result = run(guidance, eta, b=b * reps, k=32, beta=BETA, cond=cond.repeat_interleave(reps, 0))
    m, v = discretised_gaussian(name)
    means = population_estimates(result, lambda x: x).reshape(b, reps, D)
    for i in range(b):
        assert_within(means[i], m - BETA * v * cond[i], f"population {i}")


def test_shapes_reproducibility_and_dtypes():
    guidance, _ = guidance_for("euler-ancestral", linear_energy, BETA)
    kwargs = {"num_particles": 3, "num_inference_steps": 5}
    a = smc_sample(guidance.scheduler, guidance, (4, D), generator=torch.Generator().manual_seed(1), **kwargs)
    assert isinstance(a, SMCResult)
    assert a.samples.shape == (4, D) and a.samples.dtype == torch.float32
    assert a.log_weights.shape == (4, 3) and a.ess.shape == (6, 4) and a.resampled.shape == (6, 4)
    assert a.log_normalizer.shape == (4,) and a.log_normalizer.dtype == torch.float64
    torch.testing.assert_close(torch.logsumexp(a.log_weights, 1), torch.zeros(4, dtype=torch.float64))
    assert ((a.ess >= 1 - 1e-9) & (a.ess <= 3 + 1e-9)).all()
    b = smc_sample(guidance.scheduler, guidance, (4, D), generator=torch.Generator().manual_seed(1), **kwargs)
    torch.testing.assert_close(a.samples, b.samples, rtol=0, atol=0)
    c = smc_sample(
        guidance.scheduler, guidance, (4, D), resample=False, progress=True, dtype=torch.float64, **kwargs
    )
    assert c.samples.shape == (4, 3, D) and c.samples.dtype == torch.float64
    assert c.log_weights.shape == (4, 3)
    # clip_sample=True: a non-linear step mean, but still a Gaussian step that SMC can weigh
    scheduler = diffusers.DDPMScheduler()
    images = AnalyticEnergyGuidance(
        scheduler, lambda x, t: 0.5 * x, lambda x: x.flatten(1).sum(1), 1.0, allow_clipping=True
    )
    result = smc_sample(images.scheduler, images, (2, 1, 2, 2), num_particles=2, num_inference_steps=3)
    assert result.samples.shape == (2, 1, 2, 2) and torch.isfinite(result.log_normalizer).all()


@pytest.mark.parametrize(
    "scheduler",
    [
        diffusers.DDIMScheduler(clip_sample=False),
        diffusers.DPMSolverMultistepScheduler(),
        diffusers.EulerDiscreteScheduler(),
        diffusers.UniPCMultistepScheduler(),
        diffusers.FlowMatchEulerDiscreteScheduler(),
    ],
    ids=["ddim", "dpm++", "euler", "unipc", "flow"],
)
def test_deterministic_schedulers_are_rejected(scheduler):
    guidance = AnalyticEnergyGuidance(scheduler, data_model().noise_model(scheduler), linear_energy, BETA)
    kwargs = {"eta": 0.0} if isinstance(scheduler, diffusers.DDIMScheduler) else {}
    with pytest.raises(ValueError, match="deterministic"):
        smc_sample(guidance.scheduler, guidance, (2, D), num_particles=2, num_inference_steps=3, **kwargs)


def test_bad_arguments_are_rejected():
    guidance, _ = guidance_for("ddpm", linear_energy, BETA)
    call = functools.partial(smc_sample, guidance.scheduler, guidance, num_inference_steps=2)
    with pytest.raises(ValueError, match="at least one dimension"):
        call((4,))
    with pytest.raises(ValueError, match="particle"):
        call((4, D), num_particles=0)
    with pytest.raises(ValueError, match="ess_threshold"):
        call((4, D), ess_threshold=1.5)
    with pytest.raises(ValueError, match="resampling"):
        call((4, D), resampling="stratified")
    with pytest.raises(ValueError, match="one per population"):
        call((4, D), cond=torch.zeros(3, 1))
    with pytest.raises(ValueError, match="eta"):
        call((4, D), eta=1.0)
    with pytest.raises(ValueError, match="beta"):
        call((4, D), beta=-1.0)
    scheduler = diffusers.DDPMScheduler(clip_sample=False)
    net = AnalyticEnergyGuidance(
        scheduler, data_model().noise_model(scheduler), estimator=IntermediateEnergyNet(D, beta=BETA)
    )
    with pytest.raises(ValueError, match="energy="):
        smc_sample(net.scheduler, net, (2, D), num_particles=2, num_inference_steps=2)
    smc_sample(net.scheduler, net, (2, D), num_particles=2, num_inference_steps=2, energy=linear_energy)
    with pytest.raises(ValueError, match="another scheduler"):
        smc_sample(diffusers.DDPMScheduler(clip_sample=False), guidance, (2, D), num_inference_steps=2)
    plain = data_model().noise_model(scheduler)
    with pytest.raises(ValueError, match="energy= and beta="):
        smc_sample(scheduler, plain, (2, D), num_inference_steps=2, beta=BETA)
    with pytest.raises(ValueError, match="not guided"):
        smc_sample(scheduler, plain, (2, D), num_inference_steps=2, energy=linear_energy, beta=BETA, temper=3)


def test_an_unguided_model_is_corrected_by_the_weights_alone():
    """A plain model is a model too: no twist, its own steps as proposal, and the final weights
    exp(-β·E(x0)) make the populations' weighted means the tilted target's."""
    scheduler = SCHEDULERS["ddpm"][0]()
    model, beta = data_model().noise_model(scheduler), BETA / 3  # weights of modest spread: ESS ≈ 0.8·K
    result = smc_sample(
        scheduler,
        model,
        (128, D),
        num_particles=64,
        num_inference_steps=STEPS,
        resample=False,
        energy=linear_energy,
        beta=beta,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    m, v = discretised_gaussian("ddpm")
    assert_within(population_estimates(result, lambda x: x), m - beta * v * W, "mean")


def test_the_module_example_runs():
    """The usage example of the module docstring runs as written and steers to the right mode."""
    doc = energy_guidance.smc.__doc__
    code = textwrap.dedent(doc.split("Example (", 1)[1].split("::\n", 1)[1])
    namespace: dict = {}
    exec(compile(code, "smc.py example", "exec"), namespace)
    result = namespace["result"]
    assert result.samples.shape == (256, 2)
    assert float((result.samples[:, 0] > 0).float().mean()) > 0.99


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_one_model_evaluation_per_step(name):
    """The twist, the model's step and the guided step share one batched model evaluation per
    step (``guidance.step_parts``), as many as a best-of-K sampler makes. The paper's closed form:
    the default estimator also samples the model once beforehand (its calibration)."""
    make, eta = SCHEDULERS[name]
    scheduler = make()
    base, calls = data_model().noise_model(scheduler), []

    def model(x_t, t):
        calls.append(len(x_t))
        return base(x_t, t)

    guidance = AnalyticEnergyGuidance(scheduler, model, estimator=ClosedForm(linear_energy, BETA))
    smc_sample(guidance.scheduler, guidance, (3, D), num_particles=4, num_inference_steps=6, eta=eta)
    assert calls == [12] * len(scheduler.timesteps)
