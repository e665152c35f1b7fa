"""baselines/cost.py: the cost meter counts forward and backward sample-passes and wall time."""

import time
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from energy_guidance import sample
from energy_guidance.baselines import Cost, CountingModel, dps_guidance, measure
from energy_guidance.testing import GaussianMixture


def linear(x, t, *args, **kwargs):
    """A model whose output depends differentiably on x_t (a backward reaches it)."""
    return 0.5 * x


def test_counts_forward_calls_and_samples_of_a_sampling_run():
    scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    counter = CountingModel(GaussianMixture.gaussian([0.0, 1.0], 0.5).noise_model(scheduler))
    x, cost = measure(lambda: sample(scheduler, counter, (8, 2), num_inference_steps=10), counter)
    assert x.shape == (8, 2)
    assert (counter.forward_calls, counter.forward_samples, counter.backward_samples) == (10, 80, 0)
    assert counter.passes == 80 and cost.passes == 80 and cost.seconds > 0
    # measure resets the counter: a second run counts only itself.
    _, again = measure(lambda: sample(scheduler, counter, (3, 2), num_inference_steps=4), counter)
    assert again.passes == 12 and counter.forward_calls == 4
    counter.reset()
    assert (counter.forward_calls, counter.forward_samples, counter.backward_samples, counter.passes) == (
        0,
    ) * 4


def test_counts_each_backward_through_the_output_per_sample():
    counter = CountingModel(linear)
    x = torch.randn(5, 3, requires_grad=True)
    out = counter(x, torch.zeros(5))
    assert counter.backward_samples == 0  # a forward alone counts no backward
    out.sum().backward(retain_graph=True)
    assert counter.backward_samples == 5
    torch.autograd.grad(out.pow(2).sum(), x)  # a second backward through the same output
    assert counter.backward_samples == 10 and counter.passes == 15
    # Double backward: the gradient's own graph goes through the output again, and counts again.
    counter.reset()
    out = counter(x, torch.zeros(5))
    (g,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
    torch.autograd.grad(g.sum(), x)
    assert counter.backward_samples == 10
    # Without grad there is no graph, no hook and no backward to count.
    with torch.no_grad():
        counter(x, torch.zeros(5))
    assert counter.forward_calls == 2 and counter.backward_samples == 10


def test_guided_sampling_through_the_model_counts_one_backward_per_forward():
    """DPS-style guidance differentiates through the model at each step: forward and backward
    sample-passes are equal (the first DDPM step, at α ≈ 0.006 > 0, is guided too)."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    counter = CountingModel(GaussianMixture.gaussian([0.0, 1.0], 0.5).noise_model(scheduler))
    guidance = dps_guidance(scheduler, counter, lambda x: x[:, 0], 1.0)
    _, cost = measure(lambda: guidance.sample((4, 2), num_inference_steps=6), counter)
    assert counter.forward_samples == 24 and counter.backward_samples == 24 and cost.passes == 48


def test_is_transparent_forwards_arguments_and_attributes():
    seen = {}
    output = SimpleNamespace(sample=torch.ones(2, 3, requires_grad=True) * 2)

    def model(x, t, cond, *, scale):
        seen.update(cond=cond, scale=scale)
        return output

    model.config = {"in_channels": 3}
    counter = CountingModel(model)
    x = torch.zeros(2, 3)
    assert counter(x, torch.zeros(2), "c", scale=3) is output  # the very object, .sample and all
    assert seen == {"cond": "c", "scale": 3}
    assert counter.config == {"in_channels": 3}
    output.sample.sum().backward()  # the hook sits on .sample, the tensor callers differentiate
    assert (counter.forward_calls, counter.forward_samples, counter.backward_samples) == (1, 2, 2)
    with pytest.raises(AttributeError):
        _ = counter.no_such_attribute
    # A tuple output (diffusers' return_dict=False) is returned as is, its first entry hooked.
    pair = (torch.ones(4, 1, requires_grad=True) * 3, None)
    counter = CountingModel(lambda x, t: pair)
    assert counter(torch.zeros(4, 1), torch.zeros(4)) is pair
    pair[0].sum().backward()
    assert counter.backward_samples == 4


def test_measure_times_the_call_and_returns_its_result():
    counter = CountingModel(linear)

    def run():
        counter(torch.zeros(7, 1), torch.zeros(7))
        time.sleep(0.02)
        return "result"

    counter(torch.zeros(100, 1), torch.zeros(100))  # before measure: reset away
    result, cost = measure(run, counter)
    assert result == "result"
    assert cost.passes == 7 and 0.02 <= cost.seconds < 5
    assert isinstance(cost, Cost)
    with pytest.raises(AttributeError):  # frozen
        cost.passes = 0
