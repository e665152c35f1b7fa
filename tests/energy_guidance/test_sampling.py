"""sampling.py's arguments: each bad one is a one-line error that names it (issue 19, item 3)."""

import diffusers
import pytest
import torch

from energy_guidance import sample, smc_sample


def zero_model(x_t, t):
    return torch.zeros_like(x_t)


@pytest.mark.parametrize(
    ("steps", "error", "message"),
    [
        (2.5, TypeError, "num_inference_steps must be an integer >= 1, got float 2.5"),
        (True, TypeError, "num_inference_steps must be an integer >= 1, got bool True"),
        ("10", TypeError, "num_inference_steps must be an integer >= 1, got str '10'"),
        (0, ValueError, "num_inference_steps must be >= 1, got 0"),
        (1001, ValueError, "at most the scheduler's 1000 training steps (num_train_timesteps), got 1001"),
    ],
)
@pytest.mark.parametrize("sampler", ["sample", "smc_sample"])
def test_a_bad_number_of_steps_is_named(steps, error, message, sampler):
    scheduler = diffusers.DPMSolverMultistepScheduler()
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        if sampler == "sample":
            sample(scheduler, zero_model, (4, 2), num_inference_steps=steps)
        else:
            smc_sample(
                scheduler,
                zero_model,
                (4, 2),
                2,
                num_inference_steps=steps,
                energy=lambda x: x.sum(1),
                beta=1.0,
            )


def test_a_continuous_schedule_takes_more_steps_than_its_training_grid():
    """Flow matching's sigmas are continuous: 1,001 steps of a 1,000-step configuration run."""
    x = sample(diffusers.FlowMatchEulerDiscreteScheduler(), zero_model, (2, 2), num_inference_steps=1001)
    assert torch.isfinite(x).all()


def test_a_model_that_returns_no_tensor_is_named():
    def model(x_t, t):
        return None

    with pytest.raises(
        TypeError, match=r"the model must return a tensor shaped like its input x_t \(4, 2\).*NoneType"
    ):
        sample(diffusers.DDPMScheduler(), model, (4, 2), num_inference_steps=3)


@pytest.mark.parametrize(("environment", "shown"), [("0", True), ("1", False)])
def test_the_samplers_bars_follow_tqdm_disable(monkeypatch, capsys, environment, shown):
    monkeypatch.setenv("TQDM_DISABLE", environment)
    sample(diffusers.DDPMScheduler(), zero_model, (2, 2), num_inference_steps=3, progress=True)
    smc_sample(
        diffusers.DDPMScheduler(),
        zero_model,
        (2, 2),
        2,
        num_inference_steps=3,
        energy=lambda x: x.sum(1),
        beta=1.0,
        progress=True,
    )
    err = capsys.readouterr().err
    assert ("sampling" in err and "smc" in err) is shown
