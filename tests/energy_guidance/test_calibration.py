"""calibration.py: the default guidance's table from the model's own samples, and the noise levels
it passes through the model only where the default estimator reads them."""

import pytest
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

from energy_guidance import AnalyticEnergyGuidance, sample
from energy_guidance.baselines import CountingModel
from energy_guidance.calibration import NUM_LEVELS, NUM_SAMPLES, draw_pilot, table_levels
from energy_guidance.posterior import MAX_COVARIANCE_DIM
from energy_guidance.testing import GaussianMixture

STEPS = 10


@pytest.mark.parametrize(
    ("shape", "levels"),
    [
        ((2,), 0),
        ((MAX_COVARIANCE_DIM,), 0),
        ((MAX_COVARIANCE_DIM + 1,), NUM_LEVELS),
        ((3, 16, 16), NUM_LEVELS),
    ],
)
def test_the_table_has_noise_levels_only_where_its_covariance_is_not_kept(shape, levels):
    assert table_levels(shape) == levels


@pytest.mark.parametrize("d", [4, MAX_COVARIANCE_DIM + 8])
def test_the_pilots_table_passes_through_the_model_only_the_levels_it_needs(d):
    """Up to MAX_COVARIANCE_DIM values a sample, the table takes no model pass (Σ̂ follows from the
    covariance) and has no levels; above, it has NUM_LEVELS levels of P passes each."""
    data = GaussianMixture.gaussian(torch.zeros(d), torch.full((d,), 0.5))
    model = CountingModel(data.noise_model(DDPMScheduler()))
    pilot = draw_pilot(DPMSolverMultistepScheduler(), model, (d,), num_inference_steps=STEPS)
    assert model.passes == NUM_SAMPLES * STEPS
    table = pilot.table(model)
    assert model.passes - NUM_SAMPLES * STEPS == table_levels((d,)) * NUM_SAMPLES
    assert len(table.log_snr) == table_levels((d,))
    assert (table.principal_axes is not None) == (d <= MAX_COVARIANCE_DIM)
    assert table.samples is not None and table.samples.shape == (NUM_SAMPLES, d)


def test_the_default_guidance_calibrates_without_the_levels_and_samples_as_with_them():
    """At d = 2 the default estimator reads the covariance, range and samples only, so a table with
    32 levels (what the calibration built before) and one without (the same samples: they are
    drawn before the levels' noise) give the same samples, bit for bit; the calibration costs P·S
    passes plus one call at the caller's batch."""
    data = GaussianMixture(
        torch.ones(2), torch.tensor([[-2.0, 0.0], [2.0, 0.5]]), torch.tensor([[0.25, 0.5], [0.25, 0.5]])
    )
    model = CountingModel(data.noise_model(DDPMScheduler()))

    def energy(x: torch.Tensor) -> torch.Tensor:
        return -x[:, 0] + 0.5 * x[:, 1]

    def run(table) -> torch.Tensor:
        scheduler = DPMSolverMultistepScheduler()
        guided = AnalyticEnergyGuidance(scheduler, model, energy, 3.0, variance_table=table)
        generator = torch.Generator().manual_seed(1)
        return sample(scheduler, guided, (64, 2), num_inference_steps=STEPS, generator=generator)

    pilot = draw_pilot(DPMSolverMultistepScheduler(), model, (2,))
    with_levels = run(pilot.table(model, num_levels=NUM_LEVELS))
    without = run(draw_pilot(DPMSolverMultistepScheduler(), model, (2,)).table(model))
    torch.testing.assert_close(without, with_levels, rtol=0, atol=0)
    before = model.passes
    scheduler = DPMSolverMultistepScheduler()
    guided = AnalyticEnergyGuidance(scheduler, model, energy, 3.0)
    sample(scheduler, guided, (64, 2), num_inference_steps=STEPS, generator=torch.Generator().manual_seed(1))
    assert model.passes - before == NUM_SAMPLES * 25 + 64 + 64 * STEPS
