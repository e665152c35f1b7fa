"""tilted.py: the recommended sampler picks guidance or resampling by the pilot's ESS and spends
the same model passes either way."""

import math

import pytest
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

from energy_guidance import AnalyticEnergyGuidance, sample, tilted_sample
from energy_guidance.baselines import CountingModel, effective_sample_size
from energy_guidance.calibration import NUM_SAMPLES, draw_pilot, table_levels
from energy_guidance.testing import GaussianMixture
from energy_guidance.tilted import RESAMPLE_ESS, TiltedSamples

from .gaussian_case import Z

STEPS = 25
DATA = GaussianMixture(
    torch.ones(2), torch.tensor([[-2.0, 0.0], [2.0, 0.5]]), torch.tensor([[0.25, 0.5], [0.25, 0.5]])
)
W = torch.tensor([-1.0, 0.5], dtype=torch.float64)
# The exact ε-model on DDPM's (and DPM-Solver's default) training schedule: like a trained model it
# reads no sampler's state, so the samplers below may copy and step their schedulers freely.
MODEL = DATA.noise_model(DDPMScheduler())


def linear(x: torch.Tensor) -> torch.Tensor:
    return x @ W.to(x)


def _run(beta: float, batch: int, scheduler=None, **kwargs) -> TiltedSamples:
    scheduler = scheduler or DPMSolverMultistepScheduler()
    return tilted_sample(
        scheduler,
        MODEL,
        linear,
        beta,
        (batch, 2),
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(1),
        **kwargs,
    )


def _pilot_fraction(beta: float) -> float:
    """f of the module docstring, computed here from the pilot the sampler draws (seed 0)."""
    scheduler = DPMSolverMultistepScheduler()
    pilot = draw_pilot(scheduler, MODEL, (2,), num_inference_steps=STEPS)
    return float(effective_sample_size(-beta * linear(pilot.samples).double())) / NUM_SAMPLES


def test_a_mild_tilt_is_resampled_from_the_guided_branchs_budget_and_hits_the_target():
    """β = 0.3: the pilot keeps most of its ESS, so the sampler resamples a pool of
    P + ⌈L·P/S⌉ + B unguided samples. Its mean is the closed-form tilted mixture's within Z
    standard errors, SE = sd·√(1/B + 1/ESS) (the resampling draws and the pool's self-normalised
    estimate, as in the resampling baseline's test)."""
    beta, batch = 0.3, 500
    fraction = _pilot_fraction(beta)
    assert fraction >= RESAMPLE_ESS
    result = _run(beta, batch)
    assert result.method == "resampling"
    assert result.ess_fraction == pytest.approx(fraction, rel=1e-6)
    assert table_levels((2,)) == 0  # the covariance is kept: the table reads no levels
    assert result.pool == NUM_SAMPLES + batch
    assert 1 <= result.ess <= result.pool and result.samples.shape == (batch, 2)
    target = DATA.tilted(W, beta)
    se = target.covariance().diagonal().sqrt() * math.sqrt(1 / batch + 1 / result.ess)
    error = (result.samples.double().mean(0) - target.mean()).abs()
    assert (error <= Z * se).all(), (error, se)
    assert ((target.mean() - DATA.mean()).abs()[0] > 2 * Z * se[0]).all()  # the tilt is visible


def test_a_sharp_tilt_takes_the_default_guidance_with_the_pilots_table():
    """β = 5: the pilot's ESS is a few percent, so the sampler returns exactly what the default
    guidance gives (its calibration is the same pilot: same seed, same table)."""
    beta, batch = 5.0, 64
    assert _pilot_fraction(beta) < RESAMPLE_ESS
    result = _run(beta, batch)
    assert result.method == "guided" and result.pool == 0 and result.ess == 0
    scheduler = DPMSolverMultistepScheduler()
    guided = AnalyticEnergyGuidance(scheduler, MODEL, linear, beta)
    expected = sample(
        scheduler, guided, (batch, 2), num_inference_steps=STEPS, generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(result.samples, expected, rtol=0, atol=0)


def test_both_branches_spend_the_same_model_passes():
    """Guided: P·S (pilot) + L·P (table; L = 0 here) + B·S; resampling: (P + ⌈L·P/S⌉ + B)·S. They
    differ by less than S passes, and
    ``method=`` forces a branch without changing the pilot's ESS."""
    batch, counts, fractions = 64, {}, set()
    for method in ("guided", "resampling"):
        scheduler = DPMSolverMultistepScheduler()
        model = CountingModel(MODEL)
        result = tilted_sample(
            scheduler, model, linear, 1.0, (batch, 2), method=method, num_inference_steps=STEPS
        )
        assert result.method == method
        counts[method] = model.passes
        fractions.add(result.ess_fraction)
    p, s, levels = NUM_SAMPLES, STEPS, table_levels((2,))
    assert counts["guided"] == p * s + levels * p + batch * s
    assert counts["resampling"] == (p + math.ceil(levels * p / s) + batch) * s
    assert 0 <= counts["resampling"] - counts["guided"] < s
    assert len(fractions) == 1


def test_samples_outside_the_energys_domain_get_no_weight():
    """E = +inf where x[0] > 0 (outside the domain): no resampled sample lies there."""
    scheduler = DPMSolverMultistepScheduler()

    def half_plane(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x[:, 0] > 0, torch.full_like(x[:, 0], math.inf), 0.1 * x[:, 1])

    result = tilted_sample(scheduler, MODEL, half_plane, 1.0, (200, 2))
    assert result.method == "resampling"  # half the pilot keeps (nearly) equal weights
    assert 0.3 < result.ess_fraction < 0.6
    assert (result.samples[:, 0] <= 0).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "best"}, "method must be one of"),
        ({"beta": -1.0}, "beta"),
        ({"shape": (4,)}, "shape must be"),
    ],
)
def test_bad_input_is_a_one_line_error(kwargs, message):
    scheduler = DPMSolverMultistepScheduler()
    args = {"beta": 1.0, "shape": (4, 2), **kwargs}
    beta, shape = args.pop("beta"), args.pop("shape")
    with pytest.raises(ValueError, match=message):
        tilted_sample(scheduler, MODEL, linear, beta, shape, **args)


def test_an_energy_of_the_wrong_shape_is_named():
    scheduler = DPMSolverMultistepScheduler()
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        tilted_sample(scheduler, MODEL, lambda x: x, 1.0, (4, 2))
