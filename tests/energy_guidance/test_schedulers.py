"""schedulers.py: (scheduler, timestep) -> (α_t, σ_t) and the prediction-type conversions."""

import math
import re
import warnings

import diffusers
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from energy_guidance import AnalyticEnergyGuidance, sample
from energy_guidance.schedulers import (
    PREDICTION_TYPES,
    SUPPORTED_SCHEDULERS,
    ClippingWarning,
    from_eps_x0,
    log_snr,
    noise_level,
    prediction_type,
    to_eps_x0,
    training_timesteps,
)

from .gaussian_case import Z
from .schedulers import DETERMINISTIC, SCHEDULER_CONFIGS, make_scheduler

# KDPM2's and DPM-Solver SDE's set_timesteps pass torch tensors through numpy functions.
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")

# float32 tensors of unit scale: add_noise / scale_model_input round at ~1e-7 per operation.
FLOAT32_ATOL = 1e-5


FLOW_MATCHING = (diffusers.FlowMatchEulerDiscreteScheduler, diffusers.FlowMatchHeunDiscreteScheduler)
# Two-evaluation steps whose second evaluation is at an interpolated sigma (module docstring of
# schedulers.py); diffusers' add_noise maps those timesteps to the step's own sigma instead.
INTERPOLATED_SECOND_EVALUATION = (
    diffusers.KDPM2DiscreteScheduler,
    diffusers.KDPM2AncestralDiscreteScheduler,
    diffusers.DPMSolverSDEScheduler,
)


def _scheduler_model_input(scheduler, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
    """What the model sees at timestep t when the scheduler itself noises x0."""
    if isinstance(scheduler, FLOW_MATCHING):
        return scheduler.scale_noise(x0, t.reshape(1), noise)
    noisy = scheduler.add_noise(x0, noise, t.reshape(1))
    return scheduler.scale_model_input(noisy, t)


@pytest.mark.parametrize("name", sorted(SCHEDULER_CONFIGS))
def test_noise_level_matches_the_schedulers_own_noising(name):
    """α_t·x0 + σ_t·ε equals the scheduler's add_noise (scale_noise for flow matching) followed by
    scale_model_input, at every timestep of an inference schedule where the model is evaluated at
    the step's own sigma. KDPM2's and DPM-Solver SDE's second evaluations sit at an interpolated
    sigma whose timestep the scheduler computed from the training noise schedule (log σ linear in
    t between training timesteps); there noise_level must return that schedule's level."""
    scheduler = make_scheduler(name)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(8, 3, generator=gen), torch.randn(8, 3, generator=gen)
    scheduler.set_timesteps(12)
    timesteps = scheduler.timesteps.clone()
    for i, t in enumerate(timesteps):
        scheduler.set_timesteps(12)  # resets the step index that scale_model_input caches
        alpha, sigma = noise_level(scheduler, t)
        if i % 2 == 1 and isinstance(scheduler, INTERPOLATED_SECOND_EVALUATION):
            acp = scheduler.alphas_cumprod.double()
            log_sigmas = ((1 - acp) / acp).sqrt().log().numpy()
            expected = np.exp(np.interp(float(t), np.arange(len(acp)), log_sigmas))
            torch.testing.assert_close(float(sigma / alpha), expected, rtol=1e-6, atol=0)
            continue
        expected = _scheduler_model_input(scheduler, x0, noise, t)
        torch.testing.assert_close(
            alpha.float() * x0 + sigma.float() * noise, expected, atol=FLOAT32_ATOL, rtol=0
        )


PLMS_V_XFAIL = pytest.mark.xfail(
    strict=True,
    raises=AssertionError,  # the known deviation, not any error
    reason=(
        "diffusers' PLMS (PNDMScheduler) combines the raw model outputs of up to four timesteps "
        "linearly and converts the combination to ε with the current timestep's α; for v-prediction "
        "(v = α·ε − σ·x0) that is not the combination of the ε's, so its states drift off the noise "
        "level even for a point mass (rms of ε̂ 0.67 at the last step). The levels read are right "
        "(pndm-eps, the same timesteps, passes); the scheduler's own v-prediction update is not."
    ),
)


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=PLMS_V_XFAIL) if n == "pndm-plms-v" else n for n in sorted(SCHEDULER_CONFIGS)],
)
def test_noise_level_is_that_of_every_model_evaluation(name):
    """Data at the point mass x0 = 0: at every model evaluation of a sampling run the model input
    is σ_true·ε with ε the sampler's current noise, and the model ε̂ = x_t/σ reads σ from
    noise_level at that moment (mid-step for Heun, KDPM2, DPM-Solver SDE, PNDM's warm-up). A
    deterministic sampler keeps ε the initial noise ε₀, so ε̂ = (σ_true/σ)·ε₀ must be ε₀ at every
    evaluation (to 1 %: the multistep extrapolations amplify float32 rounding of the schedules);
    a stochastic one draws fresh noise, so mean(ε̂²) must be 1 to Monte Carlo error (8192 values)."""
    scheduler = make_scheduler(name)
    ptype = prediction_type(scheduler)
    shape = (4096, 2)
    ratios = []

    def point_mass(x_t, t):
        alpha, sigma = noise_level(scheduler, t[0])
        eps = x_t / sigma.to(x_t)
        ratios.append(eps / eps0 if name in DETERMINISTIC else eps.pow(2).mean())
        return from_eps_x0(eps, torch.zeros_like(x_t), alpha, sigma, ptype)

    eps0 = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with warnings.catch_warnings():  # torchsde's Brownian tree warns about float32 sigma ends
        warnings.simplefilter("ignore", UserWarning)
        sample(
            scheduler,
            point_mass,
            shape,
            num_inference_steps=12,
            generator=torch.Generator().manual_seed(0),
            dtype=torch.float64,
        )
    assert len(ratios) == len(scheduler.timesteps)  # one evaluation per entry, repeated ones too
    # 1 % for the schedules' float32 rounding; a stochastic sampler's mean of 8192 squared normals
    # adds Z standard errors, √(2/8192) each
    tol = 1e-2 if name in DETERMINISTIC else 1e-2 + Z * math.sqrt(2 / eps0.numel())
    for k, ratio in enumerate(ratios):
        assert (ratio - 1).abs().max() < tol, f"evaluation {k} at t = {scheduler.timesteps[k]}"


@pytest.mark.parametrize("name", sorted(SCHEDULER_CONFIGS))
def test_noise_level_is_vp_or_flow_and_monotone(name):
    """VP/VE schedulers satisfy α² + σ² = 1 in model-input coordinates, EDM α²·σ_d² + σ² = 1
    (its input is scaled by c_in = 1/sqrt(s² + σ_d²)), flow matching α + σ = 1; noise shrinks
    along the sampling schedule (strictly, except between a repeated timestep's evaluations)."""
    scheduler = make_scheduler(name)
    scheduler.set_timesteps(12)
    alpha, sigma = noise_level(scheduler, scheduler.timesteps)
    assert alpha.shape == sigma.shape == scheduler.timesteps.shape
    assert alpha.dtype == torch.float64
    if prediction_type(scheduler) == "flow_prediction":
        torch.testing.assert_close(alpha + sigma, torch.ones_like(alpha))
    elif prediction_type(scheduler).startswith("edm_"):
        data_sigma = scheduler.config.sigma_data
        torch.testing.assert_close((alpha * data_sigma) ** 2 + sigma**2, torch.ones_like(alpha))
    else:
        torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha))
    lam = log_snr(alpha.clamp_min(1e-12), sigma)
    repeated = scheduler.timesteps[1:] == scheduler.timesteps[:-1]
    torch.testing.assert_close(lam[1:][repeated], lam[:-1][repeated])
    if isinstance(scheduler, INTERPOLATED_SECOND_EVALUATION):  # KDPM2 ancestral's midpoint is ≈ its end
        assert (lam[1:] > lam[:-1] - 1e-5).all(), "log-SNR must not decrease along the sampling schedule"
    else:
        assert (lam[1:] > lam[:-1])[~repeated].all(), "log-SNR must increase along the sampling schedule"


@pytest.mark.parametrize(
    "name", [n for n in sorted(SCHEDULER_CONFIGS) if SCHEDULER_CONFIGS[n][1].get("use_flow_sigmas") is None]
)
def test_off_schedule_timesteps_use_the_training_noise_schedule(name):
    """Integer timesteps that are not in the current schedule read alphas_cumprod (training grid)."""
    scheduler = make_scheduler(name)
    if isinstance(scheduler, FLOW_MATCHING):
        scheduler.set_timesteps(7)
        t = torch.tensor([5.0, 333.0, 777.0])
        alpha, sigma = noise_level(scheduler, t)
        torch.testing.assert_close(sigma, t.double() / scheduler.config.num_train_timesteps)
        return
    if prediction_type(scheduler).startswith("edm_"):  # c_noise = ¼·log s, any s
        scheduler.set_timesteps(7)
        t = torch.tensor([-1.2, 0.1, 0.9])
        alpha, sigma = noise_level(scheduler, t)
        torch.testing.assert_close(sigma / alpha, torch.exp(4 * t.double()))
        return
    scheduler.set_timesteps(7)
    t = torch.tensor([1, 251, 778])
    assert not torch.isin(t.double(), scheduler.timesteps.double()).any()
    alpha, sigma = noise_level(scheduler, t)
    torch.testing.assert_close(alpha**2, scheduler.alphas_cumprod[t].double(), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "name", [n for n in sorted(SCHEDULER_CONFIGS) if SCHEDULER_CONFIGS[n][1].get("use_flow_sigmas") is None]
)
def test_a_scheduler_without_a_schedule_reads_the_training_noise_schedule(name):
    """Before set_timesteps, DPM-Solver, UniPC and DEIS hold ascending training sigmas beside
    descending timesteps; the level of a timestep must still be the training one (a model or a
    variance table built with a fresh scheduler, or a copy of it, reads it)."""
    scheduler = make_scheduler(name)
    if isinstance(scheduler, FLOW_MATCHING) or prediction_type(scheduler).startswith("edm_"):
        pytest.skip("continuous training noise: covered by the off-schedule test")
    if scheduler.num_inference_steps is not None:
        pytest.skip("sets a schedule in its constructor (Heun, KDPM2, LMS, DPM-Solver SDE)")
    t = torch.tensor([1, 251, 778, 999])
    alpha, sigma = noise_level(scheduler, t)
    torch.testing.assert_close(alpha**2, scheduler.alphas_cumprod[t].double(), rtol=1e-6, atol=0)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones(4, dtype=torch.float64))


def test_noise_level_keeps_the_timestep_shape():
    scheduler = diffusers.DDPMScheduler()
    alpha, sigma = noise_level(scheduler, torch.tensor([[3, 4], [5, 999]]))
    assert alpha.shape == sigma.shape == (2, 2)
    alpha0, _ = noise_level(scheduler, 0)
    assert alpha0.shape == ()


def test_discrete_schedulers_reject_fractional_timesteps():
    with pytest.raises(ValueError, match="integer timesteps"):
        noise_level(diffusers.DDPMScheduler(), 10.5)
    with pytest.raises(ValueError, match="integer timesteps"):
        noise_level(diffusers.DDIMScheduler(), 1000)


@pytest.mark.parametrize(
    ("unsupported", "why"),
    [
        (diffusers.IPNDMScheduler, "reads that level only for the scheduler families it knows"),
        (diffusers.ScoreSdeVeScheduler, "predictor-corrector pair"),
        (diffusers.VQDiffusionScheduler, "discrete (categorical) diffusion"),
    ],
)
def test_unsupported_scheduler_error_names_the_supported_ones_and_why(unsupported, why):
    scheduler = unsupported() if unsupported is not diffusers.VQDiffusionScheduler else unsupported(8)
    name = unsupported.__name__
    for call in (
        lambda: noise_level(scheduler, 10),
        lambda: prediction_type(scheduler),
        lambda: AnalyticEnergyGuidance(scheduler, lambda x, t: x, lambda x: x.sum(1), beta=1.0),
    ):
        with pytest.raises(TypeError) as info:
            call()
        message = str(info.value)
        assert name in message and "not supported" in message and why in message
        assert all(s in message for s in SUPPORTED_SCHEDULERS)


def test_prediction_type_of_each_scheduler_family():
    assert prediction_type(diffusers.DDPMScheduler()) == "epsilon"
    assert prediction_type(diffusers.DDIMScheduler(prediction_type="v_prediction")) == "v_prediction"
    assert prediction_type(diffusers.FlowMatchEulerDiscreteScheduler()) == "flow_prediction"
    flow_dpm = diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")
    assert prediction_type(flow_dpm) == "flow_prediction"
    assert prediction_type(diffusers.FlowMatchHeunDiscreteScheduler()) == "flow_prediction"
    assert prediction_type(diffusers.HeunDiscreteScheduler(prediction_type="sample")) == "sample"
    assert prediction_type(diffusers.EDMEulerScheduler()) == "edm_epsilon"
    edm_v = diffusers.EDMDPMSolverMultistepScheduler(prediction_type="v_prediction")
    assert prediction_type(edm_v) == "edm_v_prediction"


@pytest.mark.parametrize("name", ["edm-euler-eps", "edm-euler-v", "edm-dpm++-eps"])
def test_edm_prediction_decodes_to_the_schedulers_own_denoised_sample(name):
    """EDM: x̂0 from to_eps_x0 is the scheduler's precondition_outputs (c_skip·sample + c_out·F) on
    the model input's VE sample (model input / c_in), at every sigma of a schedule."""
    scheduler = make_scheduler(name)
    scheduler.set_timesteps(10)
    gen = torch.Generator().manual_seed(5)
    for t, s in zip(scheduler.timesteps, scheduler.sigmas, strict=False):
        x_t, out = (torch.randn(6, 3, generator=gen, dtype=torch.float64) for _ in range(2))
        alpha, sigma = noise_level(scheduler, t)
        _, x0 = to_eps_x0(out, x_t, alpha, sigma, prediction_type(scheduler))
        expected = scheduler.precondition_outputs(x_t / alpha, out, s.double())
        torch.testing.assert_close(x0, expected, rtol=1e-6, atol=1e-9)


def test_edm_training_timesteps_cover_the_sigma_range():
    scheduler = diffusers.EDMEulerScheduler()
    t = training_timesteps(scheduler)
    assert len(t) == scheduler.config.num_train_timesteps
    alpha, sigma = noise_level(scheduler, t)
    ratio = sigma / alpha
    torch.testing.assert_close(
        ratio[[0, -1]], torch.tensor([0.002, 80.0], dtype=torch.float64), rtol=1e-5, atol=0
    )


# --- prediction-type conversions -------------------------------------------------------------

unit = st.floats(0.01, 1.0)


@st.composite
def noise_levels(draw, ptype: str):
    """(α, σ) of the kind the prediction type is used with: α + σ = 1 for flow matching,
    otherwise any positive pair (VP has α² + σ² = 1, but the conversions do not need it)."""
    sigma = draw(st.floats(0.01, 0.99))
    if ptype == "flow_prediction":
        return 1.0 - sigma, sigma
    if ptype.startswith("edm_"):  # α = c_in = sqrt(1 - σ²)/σ_d for a data scale σ_d
        return (1 - sigma**2) ** 0.5 / draw(st.floats(0.2, 2.0)), sigma
    return draw(unit), sigma


@pytest.mark.parametrize("ptype", PREDICTION_TYPES)
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_prediction_type_conversions_round_trip(ptype, data, seed):
    """from_eps_x0 then to_eps_x0 recovers (ε, x0) when x_t = α·x0 + σ·ε, and to_eps_x0 then
    from_eps_x0 recovers any model output."""
    alpha, sigma = data.draw(noise_levels(ptype))
    gen = torch.Generator().manual_seed(seed)
    eps, x0, out = (torch.randn(4, 3, 2, generator=gen, dtype=torch.float64) for _ in range(3))
    a = torch.full((4,), alpha, dtype=torch.float64)
    s = torch.full((4,), sigma, dtype=torch.float64)
    x_t = alpha * x0 + sigma * eps

    encoded = from_eps_x0(eps, x0, a, s, ptype)
    eps_back, x0_back = to_eps_x0(encoded, x_t, a, s, ptype)
    # Decoding divides by α or σ (≥ 0.01), which scales rounding errors by at most 1e2.
    torch.testing.assert_close(eps_back, eps, rtol=0, atol=1e-12)
    torch.testing.assert_close(x0_back, x0, rtol=0, atol=1e-12)

    eps_hat, x0_hat = to_eps_x0(out, x_t, a, s, ptype)
    torch.testing.assert_close(alpha * x0_hat + sigma * eps_hat, x_t, rtol=0, atol=1e-12)
    torch.testing.assert_close(from_eps_x0(eps_hat, x0_hat, a, s, ptype), out, rtol=0, atol=1e-12)


def test_epsilon_conversion_is_tweedie():
    x_t, eps = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    a, s = torch.tensor(0.6, dtype=torch.float64), torch.tensor(0.8, dtype=torch.float64)
    _, x0 = to_eps_x0(eps, x_t, a, s, "epsilon")
    torch.testing.assert_close(x0, (x_t - 0.8 * eps) / 0.6)


def test_unknown_prediction_type_is_an_error():
    x = torch.zeros(2, 2)
    one = torch.tensor(0.5)
    with pytest.raises(ValueError, match="unknown prediction type 'original_sample'"):
        to_eps_x0(x, x, one, one, "original_sample")
    with pytest.raises(ValueError, match="unknown prediction type"):
        from_eps_x0(x, x, one, one, "score")


def test_the_shared_configurations_cover_every_supported_scheduler():
    """The parametrized scheduler tests run over SCHEDULER_CONFIGS; a newly supported scheduler
    must be added there too."""
    covered = {cls.__name__ for cls, _ in SCHEDULER_CONFIGS.values()}
    assert covered == set(SUPPORTED_SCHEDULERS)


@pytest.mark.parametrize("base", [diffusers.DDIMScheduler, diffusers.DPMSolverMultistepScheduler])
def test_a_subclass_of_a_supported_scheduler_is_supported(base):
    """Support follows what a scheduler is, not its class name."""
    subclass = type(f"My{base.__name__}", (base,), {})
    mine, theirs = subclass(), base()
    for s in (mine, theirs):
        s.set_timesteps(10)
    for t in theirs.timesteps:
        for a, b in zip(noise_level(mine, t), noise_level(theirs, t), strict=True):
            assert torch.equal(a, b)
    AnalyticEnergyGuidance(mine, lambda x, t: x, lambda x: x.sum(1), beta=1.0, allow_clipping=True)


# --- x̂0 clipping after guidance ----------------------------------------------------------------


def _guide(scheduler, **kwargs):
    return AnalyticEnergyGuidance(scheduler, lambda x, t: x, lambda x: x.sum(1), beta=1.0, **kwargs)


def test_ddim_clip_sample_warns_once_and_names_the_fix():
    scheduler = diffusers.DDIMScheduler()  # diffusers' default: clip_sample=True
    with pytest.warns(ClippingWarning) as record:
        guidance = _guide(scheduler)
    assert len(record) == 1
    message = str(record[0].message)
    assert "clip_sample=True" in message and "use_clipped_model_output=True" in message
    assert "guide_pipeline" in message
    assert "DDIMScheduler.from_config(scheduler.config, clip_sample=False)" in message
    assert "allow_clipping=True" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClippingWarning)
        _guide(scheduler)  # once per scheduler: a pipeline rebuilds its guidance at every step
        guidance.replace(rescale=True)
        _guide(diffusers.DDIMScheduler.from_config(scheduler.config, clip_sample=False))
        opted_in = _guide(diffusers.DDIMScheduler(), allow_clipping=True)
        opted_in.replace(scheduler=diffusers.DDPMScheduler())  # the opt-in travels with replace


@pytest.mark.parametrize(
    ("scheduler", "option"),
    [
        (diffusers.DDPMScheduler(), "clip_sample=False"),
        (diffusers.DPMSolverMultistepScheduler(thresholding=True), "thresholding=False"),
        (diffusers.UniPCMultistepScheduler(thresholding=True), "thresholding=False"),
    ],
)
def test_other_clipping_schedulers_warn(scheduler, option):
    with pytest.warns(ClippingWarning, match=re.escape(f"from_config(scheduler.config, {option})")):
        _guide(scheduler)


def test_an_option_the_scheduler_does_not_have_is_not_clipping():
    """from_config can carry a DDPM config's clip_sample=True into a DPM-Solver++ config, whose
    step never reads it: no warning (as in the RL recipe's sampling scheduler)."""
    train = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=True, prediction_type="epsilon")
    scheduler = diffusers.DPMSolverMultistepScheduler.from_config(train.config, thresholding=False)
    assert scheduler.config.get("clip_sample")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClippingWarning)
        _guide(scheduler)
