"""Non-finite values traced to their source, with the step and the number of samples affected,
and sampling that freezes or drops only the affected samples.

Ground truth: the Gaussian case of test_guidance.py on a 6-step DDIM; every sample is guided
independently there, so a sample's path does not depend on which other samples are evaluated
with it.
"""

import re
from types import SimpleNamespace

import diffusers
import pytest
import torch

from energy_guidance import AnalyticEnergyGuidance, sample
from energy_guidance.callables import (
    ENERGY_GRADIENT,
    ENERGY_VALUE,
    GUIDED_OUTPUT,
    MODEL_OUTPUT,
    SCHEDULER_STEP,
    NonFiniteError,
    call_energy,
    energy_and_grad,
)
from energy_guidance.estimators import AutogradGradient

from .gaussian_case import BETA, W, data_model, linear_energy

STEPS, BATCH, BAD = 6, 8, 2


def ddim():
    return diffusers.DDIMScheduler(clip_sample=False)


def timestep(k: int) -> int:
    scheduler = ddim()
    scheduler.set_timesteps(STEPS)
    return int(scheduler.timesteps[k])


def poisoned(base, at_step: int, rows=(BAD,)):
    """The model, with NaN in ``rows`` of its output at the ``at_step``-th timestep (of the full
    batch only: a re-evaluation of the remaining samples is clean)."""
    t_bad = timestep(at_step)

    def model(x_t, t, cond=None):
        out = base(x_t, t).clone()
        if int(t[0]) == t_bad and len(x_t) == BATCH:
            out[list(rows)] = torch.nan
        return out

    return model


def run(model, guided: bool, generator_seed: int = 0, **kwargs):
    scheduler = ddim()
    common = {"num_inference_steps": STEPS, "dtype": torch.float64}
    common["generator"] = torch.Generator().manual_seed(generator_seed)
    if guided:
        guidance = AnalyticEnergyGuidance(scheduler, model, linear_energy, BETA)
        return guidance.sample((BATCH, 2), **common, **kwargs)
    return sample(scheduler, model, (BATCH, 2), **common, **kwargs)


def exact_model():
    return data_model().noise_model(ddim())


def message(source: str, count: int, step: int, total: int = BATCH) -> str:
    where = f"at step {step}, timestep {timestep(step)}"
    return re.escape(f"{source}: {count} non-finite values (NaN or inf) out of {total} samples {where}")


@pytest.mark.parametrize("guided", [False, True], ids=["unguided", "guided"])
def test_model_output_is_named_with_its_step_and_count(guided):
    """The unguided path checks the model output too."""
    with pytest.raises(NonFiniteError, match=message(MODEL_OUTPUT, 1, 3)) as info:
        run(poisoned(exact_model(), 3), guided)
    assert info.value.source == MODEL_OUTPUT and info.value.count == 1 and bool(info.value.bad[BAD])


def test_energy_value_is_named():
    def energy(x0):
        return torch.where(torch.arange(len(x0)) == BAD, torch.nan, linear_energy(x0))

    guidance = AnalyticEnergyGuidance(ddim(), exact_model(), energy, BETA)
    with pytest.raises(NonFiniteError, match=message(ENERGY_VALUE, 1, 0)):
        guidance.sample((BATCH, 2), num_inference_steps=STEPS, dtype=torch.float64)


class _NanGradient(torch.autograd.Function):
    """wᵀx forward, NaN gradient for row BAD."""

    @staticmethod
    def forward(ctx, x):
        return x @ W.to(x)

    @staticmethod
    def backward(ctx, g):
        grad = g[:, None] * W.to(g)
        return torch.where((torch.arange(len(g)) == BAD)[:, None], torch.nan, grad)


def test_energy_gradient_is_named():
    guidance = AnalyticEnergyGuidance(ddim(), exact_model(), _NanGradient.apply, BETA)
    with pytest.raises(NonFiniteError, match=message(ENERGY_GRADIENT, 1, 0)):
        guidance.sample((BATCH, 2), num_inference_steps=STEPS, dtype=torch.float64)


class _NanEstimator(AutogradGradient, torch.nn.Module):
    beta = BETA

    def forward(self, x_t, alpha, sigma, cond=None, *, prediction=None):
        value = x_t @ W.to(x_t)
        return torch.where(torch.arange(len(x_t)) == BAD, torch.nan, value)


class _NanGradientEstimator(AutogradGradient, torch.nn.Module):
    beta = BETA

    def forward(self, x_t, alpha, sigma, cond=None, *, prediction=None):
        return _NanGradient.apply(x_t)


@pytest.mark.parametrize(
    ("estimator", "source"),
    [
        (_NanEstimator(), "intermediate energy E_t of the estimator _NanEstimator"),
        (
            _NanGradientEstimator(),
            "gradient ∇E_t with respect to x_t (backward pass through _NanGradientEstimator)",
        ),
    ],
    ids=["value", "gradient"],
)
def test_intermediate_energy_network_and_its_gradient_are_named(estimator, source):
    guidance = AnalyticEnergyGuidance(ddim(), exact_model(), estimator=estimator)
    with pytest.raises(NonFiniteError, match=message(source, 1, 0)):
        guidance.sample((BATCH, 2), num_inference_steps=STEPS, dtype=torch.float64)


def test_guided_output_overflow_is_named():
    """A finite but huge guidance term overflows float32 in the guided output itself."""
    guidance = AnalyticEnergyGuidance(ddim(), exact_model(), linear_energy, BETA, scale=1e39)
    with pytest.raises(NonFiniteError, match=message(GUIDED_OUTPUT, BATCH, 0)) as info:
        guidance.sample((BATCH, 2), num_inference_steps=STEPS)
    assert "lower beta or scale" in str(info.value)


def test_scheduler_step_is_named():
    class Exploding(diffusers.DDIMScheduler):
        def step(self, model_output, timestep, sample, **kwargs):
            prev = super().step(model_output, timestep, sample, **kwargs).prev_sample.clone()
            if int(timestep) == timestep_2:
                prev[BAD] = torch.inf
            return SimpleNamespace(prev_sample=prev)

    timestep_2 = timestep(2)
    scheduler = Exploding(clip_sample=False)
    with pytest.raises(NonFiniteError, match=message(SCHEDULER_STEP, 1, 2)):
        sample(scheduler, exact_model(), (BATCH, 2), num_inference_steps=STEPS)


def test_float16_energy_overflow_says_so():
    def latent_energy(x0):  # a decoder-like energy whose scale exceeds float16's 65504
        return (300 * x0).pow(2).sum(1)

    x0 = torch.full((4, 2), 2.0, dtype=torch.float16)
    with pytest.raises(NonFiniteError, match="float16 overflow") as info:
        call_energy(latent_energy, x0)
    assert info.value.source == ENERGY_VALUE and info.value.count == 4
    with pytest.raises(NonFiniteError, match="float16 overflow"):
        energy_and_grad(latent_energy, x0)
    # A NaN is not an overflow, and float32 is not half precision.
    with pytest.raises(NonFiniteError) as info:
        call_energy(lambda x: x.sum(1) * torch.nan, x0)
    assert "overflow" not in str(info.value)
    assert torch.isfinite(call_energy(latent_energy, x0.float())).all()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_beta_and_scale_must_be_finite(value):
    model = exact_model()
    with pytest.raises(ValueError, match="beta must be finite"):
        AnalyticEnergyGuidance(ddim(), model, linear_energy, beta=value)
    with pytest.raises(ValueError, match="scale must be a finite number"):
        AnalyticEnergyGuidance(ddim(), model, linear_energy, beta=1.0, scale=value)

    class Net(_NanEstimator):
        beta = value

    with pytest.raises(ValueError, match="finite"):
        AnalyticEnergyGuidance(ddim(), model, estimator=Net())


# --- freezing and dropping the affected samples ---------------------------------------------------


@pytest.mark.parametrize("guided", [False, True], ids=["unguided", "guided"])
@pytest.mark.parametrize("mode", ["freeze", "drop"])
def test_only_the_affected_samples_are_frozen_or_dropped(mode, guided):
    """NaN in one sample's model output at step 3: the others finish exactly as in a clean run;
    the affected one keeps its state after step 2 (freeze) or becomes a NaN row (drop)."""
    states = []
    clean = run(exact_model(), guided, callback=lambda r: states.append(r["sample"]))
    with pytest.warns(RuntimeWarning, match=f"1 samples {'frozen' if mode == 'freeze' else 'dropped'}"):
        x, bad = run(poisoned(exact_model(), 3), guided, on_nonfinite=mode, return_mask=True)
    expected_bad = torch.arange(BATCH) == BAD
    assert torch.equal(bad, expected_bad)
    torch.testing.assert_close(x[~bad], clean[~expected_bad], rtol=0, atol=1e-12)
    if mode == "freeze":
        torch.testing.assert_close(x[BAD], states[2][BAD], rtol=0, atol=0)
    else:
        assert torch.isnan(x[BAD]).all()


def test_a_per_sample_condition_follows_the_remaining_samples():
    """Energy NaN for the sample whose condition flags it: it is frozen at its initial noise, and
    the model and energy of every later step see the other samples with their own conditions."""
    flags = (torch.arange(BATCH) == BAD).double()
    base = exact_model()
    seen = []

    def model(x_t, t, cond):
        seen.append(len(cond))
        assert len(cond) == len(x_t)
        return base(x_t, t)

    def energy(x0, cond):
        return torch.where(cond > 0, torch.nan, linear_energy(x0))

    guidance = AnalyticEnergyGuidance(ddim(), model, energy, BETA)
    clean = AnalyticEnergyGuidance(ddim(), model, lambda x0, cond: linear_energy(x0), BETA)
    kwargs = {"num_inference_steps": STEPS, "dtype": torch.float64, "cond": flags}
    reference = clean.sample((BATCH, 2), generator=torch.Generator().manual_seed(0), **kwargs)
    with pytest.warns(RuntimeWarning, match=re.escape(f"{ENERGY_VALUE}: 1 non-finite")):
        x, bad = guidance.sample(
            (BATCH, 2),
            generator=torch.Generator().manual_seed(0),
            on_nonfinite="freeze",
            return_mask=True,
            **kwargs,
        )
    assert torch.equal(bad, flags > 0)
    torch.testing.assert_close(x[~bad], reference[~bad], rtol=0, atol=1e-12)
    initial = torch.randn((BATCH, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(x[BAD], initial[BAD], rtol=0, atol=0)
    assert seen[-1] == BATCH - 1


def test_on_nonfinite_is_validated():
    with pytest.raises(ValueError, match="on_nonfinite must be one of"):
        sample(ddim(), exact_model(), (2, 2), num_inference_steps=2, on_nonfinite="skip")
