"""QGPO's contrastive energy prediction: the loss, its optimum, and the training loop."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler

from energy_guidance import IntermediateEnergyNet
from energy_guidance.baselines import contrastive_loss, draw_support, train_contrastive_energy
from energy_guidance.schedulers import noise_level


def test_loss_matches_a_hand_computation():
    predicted = [[0.3, -1.2, 0.5], [2.0, 0.0, -0.7]]
    energies = [[1.0, 0.2, -0.4], [0.0, 0.5, 0.1]]
    beta = 1.7
    total = 0.0
    for f, e in zip(predicted, energies, strict=True):
        z_target = sum(math.exp(-beta * v) for v in e)
        z_model = sum(math.exp(-v) for v in f)
        for fi, ei in zip(f, e, strict=True):
            total -= math.exp(-beta * ei) / z_target * (-fi - math.log(z_model))
    expected = total / 2
    got = contrastive_loss(torch.tensor(predicted), torch.tensor(energies), beta)
    assert abs(float(got) - expected) < 1e-6


def test_loss_is_the_entropy_at_its_optimum_and_larger_elsewhere():
    # Cross-entropy ≥ entropy (Gibbs), with equality iff softmax(-Ê) = softmax(-β·E) per set,
    # i.e. Ê = β·E + c_b; the constants c_b are invisible to the loss.
    gen = torch.Generator().manual_seed(0)
    energies, beta = torch.randn(5, 8, generator=gen, dtype=torch.float64), 2.5
    p = torch.softmax(-beta * energies, dim=1)
    entropy = -(p * p.log()).sum(1).mean()
    shift = torch.randn(5, 1, generator=gen, dtype=torch.float64) * 10
    optimum = contrastive_loss(beta * energies + shift, energies, beta)
    assert abs(float(optimum - entropy)) < 1e-12
    perturbed = beta * energies + 0.1 * torch.randn(5, 8, generator=gen, dtype=torch.float64)
    assert contrastive_loss(perturbed, energies, beta) > entropy


def test_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="both be"):
        contrastive_loss(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)


class Recorder(IntermediateEnergyNet):
    """Records the noise levels it is called with."""

    def forward(self, x_t, alpha, sigma, cond=None):
        self.seen = (alpha.detach().clone(), x_t.shape)
        return super().forward(x_t, alpha, sigma, cond)


def test_each_support_set_shares_one_noise_level():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    support = torch.randn(10, 4, 2)
    net = Recorder(2, hidden=16, beta=1.0)
    train_contrastive_energy(
        net, scheduler, lambda x: x[:, 0], support, steps=1, batch_size=3, progress=False
    )
    alpha, shape = net.seen
    assert shape == (12, 2)
    per_set = alpha.reshape(3, 4)
    assert torch.all(per_set == per_set[:, :1])
    assert float(net.target_scale) == pytest.approx(float(support[..., 0].std()), rel=1e-5)


def test_draw_support_shapes():
    scheduler = DDPMScheduler(num_train_timesteps=1000)

    def model(x, t, cond=None):
        return torch.zeros_like(x) if cond is None else torch.zeros_like(x) + cond[:, None]

    assert draw_support(scheduler, model, (2,), 3, num_groups=4, num_inference_steps=2).shape == (4, 3, 2)
    cond = torch.arange(5.0)
    assert draw_support(scheduler, model, (2,), 3, cond=cond, num_inference_steps=2).shape == (5, 3, 2)
    with pytest.raises(ValueError, match="num_groups"):
        draw_support(scheduler, model, (2,), 3)


def test_training_learns_the_gaussian_intermediate_energy_direction():
    # Data N(0, I) in 2-D and E(x) = wᵀx: E_t(x_t) = β·α/(α² + σ²)·wᵀx_t + const(t), so the
    # exact ∇E_t is parallel to w at every noise level. After a short training run the learned
    # gradient must point along w (mean cosine > 0.9; random networks give about 0).
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    w, beta = torch.tensor([1.0, -0.5]), 2.0
    support = torch.randn(64, 16, 2, generator=gen)
    net = IntermediateEnergyNet(2, hidden=64, depth=2, beta=beta)
    history = train_contrastive_energy(
        net,
        scheduler,
        lambda x: x @ w,
        support,
        steps=300,
        batch_size=16,
        lr=3e-3,
        generator=gen,
        progress=False,
    )
    assert history["loss"][-1] < history["loss"][0]  # means over the last and first 50 steps
    t = torch.full((256,), 200)
    alpha, sigma = noise_level(scheduler, t)
    x = torch.randn(256, 2, generator=gen).requires_grad_(True)
    (grad,) = torch.autograd.grad(net(x, alpha.float(), sigma.float()).sum(), x)
    cosine = torch.nn.functional.cosine_similarity(grad, w.expand(256, 2), dim=1)
    assert cosine.mean() > 0.9, float(cosine.mean())
