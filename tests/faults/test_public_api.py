"""Hypothesis-generated bad arguments for the library's public API: every one is answered by a
TypeError or ValueError (a one-line message naming the argument), never by an internal error
(AttributeError, IndexError, RuntimeError from inside torch or diffusers, ...)."""

import diffusers
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from energy_guidance import AnalyticEnergyGuidance, NonFiniteError, sample

SCHEDULER = diffusers.DDPMScheduler()


def model(x_t, t):
    return torch.zeros_like(x_t)


def energy(x):
    return x.sum(1)


anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.floats(-3, 3), max_size=3).map(torch.tensor),
    st.lists(st.integers(-3, 3), max_size=3),
)
USER_ERRORS = (TypeError, ValueError, NonFiniteError)  # NonFiniteError names the samples and the step


def accepted_or_named(call) -> None:
    try:
        call()
    except USER_ERRORS as error:
        message = str(error)
        assert message and "\n" not in message.strip(), message
    # anything else propagates and fails the test


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(beta=anything)
def test_beta(beta):
    accepted_or_named(lambda: AnalyticEnergyGuidance(SCHEDULER, model, energy, beta))


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(steps=anything)
def test_num_inference_steps(steps):
    accepted_or_named(lambda: sample(SCHEDULER, model, (2, 2), num_inference_steps=steps))


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(scale=anything, rescale=anything)
def test_scale_and_rescale(scale, rescale):
    accepted_or_named(
        lambda: AnalyticEnergyGuidance(SCHEDULER, model, energy, 1.0, scale=scale, rescale=rescale)
    )


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.one_of(anything, st.tuples(st.integers(-2, 3), st.integers(-2, 3))))
def test_shape(shape):
    accepted_or_named(lambda: sample(SCHEDULER, model, shape, num_inference_steps=2))


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(output=anything)
def test_what_an_energy_returns(output):
    guided = AnalyticEnergyGuidance(SCHEDULER, model, lambda x: output, 1.0)
    accepted_or_named(lambda: sample(SCHEDULER, guided, (2, 2), num_inference_steps=2))
