"""schedules.py: (scheduler, timestep) -> (α_t, σ_t) and the prediction-type conversions."""

import diffusers
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from energy_guidance import AnalyticEnergyGuidance, from_eps_x0, noise_level, to_eps_x0
from energy_guidance.schedules import PREDICTION_TYPES, SUPPORTED_SCHEDULERS, log_snr, prediction_type

from .schedulers import SCHEDULER_CONFIGS, make_scheduler

# float32 tensors of unit scale: add_noise / scale_model_input round at ~1e-7 per operation.
FLOAT32_ATOL = 1e-5


def _scheduler_model_input(scheduler, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
    """What the model sees at timestep t when the scheduler itself noises x0."""
    if isinstance(scheduler, diffusers.FlowMatchEulerDiscreteScheduler):
        return scheduler.scale_noise(x0, t.reshape(1), noise)
    noisy = scheduler.add_noise(x0, noise, t.reshape(1))
    return scheduler.scale_model_input(noisy, t)


@pytest.mark.parametrize("name", sorted(SCHEDULER_CONFIGS))
def test_noise_level_matches_the_schedulers_own_noising(name):
    """α_t·x0 + σ_t·ε equals the scheduler's add_noise (scale_noise for flow matching) followed by
    scale_model_input, at every timestep of an inference schedule."""
    scheduler = make_scheduler(name)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(8, 3, generator=gen), torch.randn(8, 3, generator=gen)
    scheduler.set_timesteps(12)
    timesteps = scheduler.timesteps.clone()
    for t in timesteps:
        scheduler.set_timesteps(12)  # resets the step index that scale_model_input caches
        alpha, sigma = noise_level(scheduler, t)
        expected = _scheduler_model_input(scheduler, x0, noise, t)
        torch.testing.assert_close(
            alpha.float() * x0 + sigma.float() * noise, expected, atol=FLOAT32_ATOL, rtol=0
        )


@pytest.mark.parametrize("name", sorted(SCHEDULER_CONFIGS))
def test_noise_level_is_vp_or_flow_and_monotone(name):
    """VP/VE schedulers satisfy α² + σ² = 1 in model-input coordinates, flow matching α + σ = 1;
    noise grows along the timestep axis (the schedule runs from noisy to clean)."""
    scheduler = make_scheduler(name)
    scheduler.set_timesteps(12)
    alpha, sigma = noise_level(scheduler, scheduler.timesteps)
    assert alpha.shape == sigma.shape == scheduler.timesteps.shape
    assert alpha.dtype == torch.float64
    if prediction_type(scheduler) == "flow_prediction":
        torch.testing.assert_close(alpha + sigma, torch.ones_like(alpha))
    else:
        torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha))
    lam = log_snr(alpha.clamp_min(1e-12), sigma)
    assert (lam[1:] > lam[:-1]).all(), "log-SNR must increase along the sampling schedule"


@pytest.mark.parametrize(
    "name", [n for n in sorted(SCHEDULER_CONFIGS) if SCHEDULER_CONFIGS[n][1].get("use_flow_sigmas") is None]
)
def test_off_schedule_timesteps_use_the_training_noise_schedule(name):
    """Integer timesteps that are not in the current schedule read alphas_cumprod (training grid)."""
    scheduler = make_scheduler(name)
    if isinstance(scheduler, diffusers.FlowMatchEulerDiscreteScheduler):
        scheduler.set_timesteps(7)
        t = torch.tensor([5.0, 333.0, 777.0])
        alpha, sigma = noise_level(scheduler, t)
        torch.testing.assert_close(sigma, t.double() / scheduler.config.num_train_timesteps)
        return
    scheduler.set_timesteps(7)
    t = torch.tensor([1, 251, 778])
    assert not torch.isin(t.double(), scheduler.timesteps.double()).any()
    alpha, sigma = noise_level(scheduler, t)
    torch.testing.assert_close(alpha**2, scheduler.alphas_cumprod[t].double(), rtol=1e-6, atol=0)


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


@pytest.mark.parametrize("unsupported", [diffusers.HeunDiscreteScheduler, diffusers.PNDMScheduler])
def test_unsupported_scheduler_error_names_the_supported_ones(unsupported):
    scheduler = unsupported()
    name = unsupported.__name__
    for call in (
        lambda: noise_level(scheduler, 10),
        lambda: prediction_type(scheduler),
        lambda: AnalyticEnergyGuidance(scheduler, lambda x, t: x, lambda x: x.sum(1), beta=1.0),
    ):
        with pytest.raises(TypeError) as info:
            call()
        message = str(info.value)
        assert name in message and "not supported" in message
        assert all(s in message for s in SUPPORTED_SCHEDULERS)


def test_prediction_type_of_each_scheduler_family():
    assert prediction_type(diffusers.DDPMScheduler()) == "epsilon"
    assert prediction_type(diffusers.DDIMScheduler(prediction_type="v_prediction")) == "v_prediction"
    assert prediction_type(diffusers.FlowMatchEulerDiscreteScheduler()) == "flow_prediction"
    flow_dpm = diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")
    assert prediction_type(flow_dpm) == "flow_prediction"


# --- prediction-type conversions -------------------------------------------------------------

unit = st.floats(0.01, 1.0)


@st.composite
def noise_levels(draw, ptype: str):
    """(α, σ) of the kind the prediction type is used with: α + σ = 1 for flow matching,
    otherwise any positive pair (VP has α² + σ² = 1, but the conversions do not need it)."""
    sigma = draw(st.floats(0.01, 0.99))
    if ptype == "flow_prediction":
        return 1.0 - sigma, sigma
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
    AnalyticEnergyGuidance(mine, lambda x, t: x, lambda x: x.sum(1), beta=1.0)
