"""classifier.py: the intermediate energy as the logit of a noise-conditional classifier."""

import math

import pytest
import torch
from diffusers import DDPMScheduler
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.functional import softplus

from energy_guidance import AnalyticEnergyGuidance, IntermediateEnergyNet
from energy_guidance.classifier import (
    classifier_batches,
    classifier_loss,
    tilt_log_weights,
    train_classifier_energy,
)
from energy_guidance.schedulers import noise_level
from energy_guidance.testing import GaussianMixture

from .gaussian_case import Z


def noised(mixture: GaussianMixture, alpha: float, sigma: float) -> GaussianMixture:
    """The marginal of x_t = α·x0 + σ·ε for x0 ~ ``mixture``."""
    return GaussianMixture(mixture.weights, alpha * mixture.means, alpha**2 * mixture.variances + sigma**2)


@settings(max_examples=40, deadline=None)
@given(
    beta=st.floats(0.1, 5.0),
    alpha=st.floats(0.05, 1.0),
    gap=st.floats(0.5, 3.0),
    share=st.floats(0.1, 0.9),
)
def test_the_log_density_ratio_is_the_intermediate_energy_and_minimises_the_loss(beta, alpha, gap, share):
    """Equation (6) on a 1-D two-component mixture and E(x) = x, all in closed form:
    log q_t - log p̃_t = E_t + log Z, with E_t = -log E[exp(-β·x0) | x_t]; and on a grid of x_t the
    expected loss (C) of E_t + log Z is below that of any perturbation of it (the pointwise
    minimiser of p̃·softplus(f) + q·softplus(-f) is f = log(q/p̃))."""
    dtype = torch.float64
    sigma = math.sqrt(1 - alpha**2)
    w = torch.ones(1, dtype=dtype)
    data = GaussianMixture(
        torch.tensor([share, 1 - share], dtype=dtype),
        torch.tensor([[-gap / 2], [gap / 2]], dtype=dtype),
        torch.tensor([[0.3], [0.5]], dtype=dtype),
    )
    tilted = data.tilted(w, beta)
    log_z = float(
        torch.logsumexp(
            torch.log(data.weights) - beta * data.means[:, 0] + 0.5 * beta**2 * data.variances[:, 0], 0
        )
    )
    x = torch.linspace(-6, 6, 2001, dtype=dtype)[:, None]
    a, s = torch.tensor(alpha, dtype=dtype), torch.tensor(sigma, dtype=dtype)
    e_t = -data.linear_log_potential(x, a, s, w, beta)
    log_q, log_p = noised(data, alpha, sigma).log_prob(x), noised(tilted, alpha, sigma).log_prob(x)
    torch.testing.assert_close(log_q - log_p, e_t + log_z, rtol=0, atol=1e-9)

    def expected_loss(f):
        return float((log_p.exp() * softplus(f) + log_q.exp() * softplus(-f)).sum())

    best = expected_loss(e_t + log_z)
    for delta in (0.3, -0.3, 0.05):
        assert expected_loss(e_t + log_z + delta) > best
        assert expected_loss(e_t + log_z + delta * torch.sin(x[:, 0])) > best


def test_loss_matches_a_hand_computation():
    predicted, label = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 0.25, 0.0])
    expected = (math.log(2) + 0.25 * math.log(1 + math.e) + 0.75 * math.log(1 + 1 / math.e)) / 3
    expected += math.log(1 + math.exp(2)) / 3
    assert classifier_loss(predicted, label).item() == pytest.approx(expected)


@settings(max_examples=50, deadline=None)
@given(
    energies=st.lists(st.floats(-3, 3), min_size=2, max_size=12),
    beta=st.floats(0.0, 5.0),
    seed=st.integers(0, 2**16),
)
def test_the_soft_labelled_mixture_loss_is_half_the_two_class_loss(energies, beta, seed):
    """(C') = ½·(C) in expectation, for any E_Θ: on N data points (q uniform, p̃ ∝ exp(-β·E)),
    drawing x0 from m = ½(q + p̃) with labels π = w/(1 + w), w = p̃/q, weights each point by
    ½(q + p̃)·π = ½·p̃ in the softplus(E_Θ) term and ½(q + p̃)·(1 - π) = ½·q in the other."""
    e = torch.tensor(energies, dtype=torch.float64)
    n = len(e)
    log_w = tilt_log_weights(lambda x: x[:, 0], e[:, None], beta)
    p_tilde, q = log_w.exp(), torch.full((n,), 1 / n, dtype=torch.float64)
    ratio = p_tilde / q
    label = ratio / (1 + ratio)
    f = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    mixture = 0.5 * (q + p_tilde)
    soft = float((mixture * (label * softplus(f) + (1 - label) * softplus(-f))).sum())
    two_class = float((p_tilde * softplus(f)).sum() + (q * softplus(-f)).sum())
    assert soft == pytest.approx(0.5 * two_class, rel=1e-12)
    # classifier_loss is the sample mean of that integrand
    assert float(classifier_loss(f, label)) == pytest.approx(
        float((label * softplus(f) + (1 - label) * softplus(-f)).mean()), rel=1e-12
    )


def test_batches_draw_the_mixture_with_its_labels_and_paired_timesteps():
    """classifier_batches draws half its x0 uniformly from the data and half by the tilt weights,
    so each data point's frequency is ½(1/N + p̃_i) (binomial: within Z s.e.), each carries its
    label π_i = w_i/(1 + w_i), the mean label is ½·Σ_i p̃_i = ½ (within Z s.e.), the two halves
    share their timesteps pairwise, and x_t = α·x0 + σ·ε with ε standard normal."""
    data = torch.arange(6, dtype=torch.float64)[:, None]
    beta, n = 0.7, 6
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    gen = torch.Generator().manual_seed(0)
    draw, _ = classifier_batches(scheduler, lambda x: x[:, 0], data, beta=beta, batch_size=64, generator=gen)
    p_tilde = torch.softmax(-beta * data[:, 0], 0)
    label_of = (n * p_tilde) / (1 + n * p_tilde)  # distinct: they identify the data point
    labels, noises, indices = [], [], []
    for _ in range(400):
        batch = draw()
        torch.testing.assert_close(batch.alpha[:32], batch.alpha[32:])
        index = (batch.label[:, None] - label_of[None]).abs().argmin(1)
        torch.testing.assert_close(batch.label, label_of[index])
        noises.append((batch.x_t - batch.alpha[:, None] * data[index]) / batch.sigma[:, None])
        labels.append(batch.label)
        indices.append(index)
    labels, noise, index = torch.cat(labels), torch.cat(noises), torch.cat(indices)
    m = len(labels)
    frequency = torch.bincount(index, minlength=n).double() / m
    expected = 0.5 * (1 / n + p_tilde)
    assert ((frequency - expected).abs() <= Z * (expected * (1 - expected) / m).sqrt()).all()
    assert abs(float(labels.mean()) - 0.5) <= Z * float(labels.std()) / math.sqrt(m)
    assert abs(float(noise.mean())) <= Z / math.sqrt(m)
    assert abs(float(noise.pow(2).mean()) - 1) <= Z * math.sqrt(2 / m)


def test_tilt_weights_subtract_the_baseline_per_condition():
    data = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    cond = torch.tensor([[0.0], [0.0], [5.0], [5.0]])

    def energy(x, c):
        return x[:, 0] + c[:, 0]

    plain = tilt_log_weights(energy, data, 2.0, cond)
    torch.testing.assert_close(plain, torch.log_softmax(-2.0 * (data[:, 0] + cond[:, 0]).double(), 0))
    even = tilt_log_weights(energy, data, 2.0, cond, baseline=lambda c: c[:, 0])
    torch.testing.assert_close(even, torch.log_softmax(-2.0 * data[:, 0].double(), 0))


def test_a_baseline_without_a_condition_is_refused_by_name():
    """baseline(cond) is a function of the condition: without one it was called with None."""
    data = torch.tensor([[0.0], [1.0]])
    with pytest.raises(ValueError, match="baseline"):
        tilt_log_weights(lambda x: x[:, 0], data, 2.0, baseline=lambda c: c[:, 0])


def test_training_learns_the_gaussian_intermediate_energy_gradient():
    """Data N(m, v·I) and E(x) = wᵀx: ∇E_t = β·α·v/(α²·v + σ²)·w exactly (docs/math.md). After a
    short run the learned gradient has relative error below 0.05 (σ²-weighted over noise levels,
    as the toys benchmark's guidance error; 0.006–0.010 over seeds 0–3; an untrained network
    has about 1: a check that training works, not a derived bound), and guided DDPM samples
    reach the tilted mean up to what that error allows."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    m, v, beta = torch.tensor([0.5, -0.5]), 0.5, 1.0
    w = torch.tensor([1.0, -0.5])
    data_model = GaussianMixture.gaussian(m.double(), v)
    data = data_model.sample(4096, gen).float()
    net = IntermediateEnergyNet(2, hidden=64, depth=2, beta=beta)
    history = train_classifier_energy(
        net, scheduler, lambda x: x @ w, data, steps=600, lr=3e-3, generator=gen, progress=False
    )
    assert history["loss"][-1] < history["loss"][0]
    t = torch.randint(20, 1000, (512,), generator=gen)
    alpha, sigma = (c.float() for c in noise_level(scheduler, t))
    x = alpha[:, None] * data[:512] + sigma[:, None] * torch.randn(512, 2, generator=gen)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(net(x, alpha, sigma).sum(), x)
    exact = (beta * alpha * v / (alpha**2 * v + sigma**2))[:, None] * w
    s2 = sigma[:, None] ** 2
    error = float((s2 * (grad - exact) ** 2).sum() / (s2 * exact**2).sum())
    assert error < 0.05, error
    guidance = AnalyticEnergyGuidance(scheduler, data_model.noise_model(scheduler), estimator=net)
    samples = guidance.sample((1024, 2), num_inference_steps=50, generator=gen)
    tilted_mean = m - beta * v * w  # the exact target N(m - β·v·w, v·I)
    # allowance: 5 SE of the sample mean plus the shift a guidance of that RMS relative error can
    # leave undone (√error of the whole tilt β·v·w)
    allowance = 5 * math.sqrt(v / 1024) + math.sqrt(error) * float((beta * v * w).norm())
    assert float((samples.mean(0) - tilted_mean).norm()) < allowance


def test_bad_inputs_are_rejected():
    net = IntermediateEnergyNet(2, hidden=8, depth=1)
    scheduler = DDPMScheduler()
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        train_classifier_energy(
            net, scheduler, lambda x: x[:, 0], torch.zeros(4, 2), batch_size=1, progress=False
        )
    with pytest.raises(ValueError, match="at least 2"):
        train_classifier_energy(net, scheduler, lambda x: x[:, 0], torch.zeros(1, 2), steps=1, progress=False)
    with pytest.raises(ValueError, match="rows"):
        energy = lambda x, c: x[:, 0]  # noqa: E731
        data, cond = torch.zeros(4, 2), torch.zeros(3, 1)
        train_classifier_energy(net, scheduler, energy, data, cond, steps=1, progress=False)
