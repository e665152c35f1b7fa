"""The behaviour policy's pieces: timestep embedding, the samplers' x̂0 clipping, the diffusion loss."""

import dataclasses
import math

import pytest
import torch
from diffusers import DDPMScheduler

from energy_guidance import sample
from energy_guidance.recipes.behaviour import (
    SAMPLERS,
    BehaviourConfig,
    NoiseMLP,
    diffusion_loss,
    sampling_scheduler,
    training_scheduler,
)
from energy_guidance.schedulers import from_eps_x0, noise_level, to_eps_x0


def test_timestep_embedding_is_the_transformer_embedding():
    """diffusers' Timesteps as configured gives [sin(t·ω_k), cos(t·ω_k)], ω_k = 10000^(−k/4) for
    width 8: the embedding the recipe's earlier hand-written version computed (same weights)."""
    emb = NoiseMLP(2, 3, time_dim=8).time_embedding(torch.tensor([0, 7]))
    assert torch.allclose(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    freqs = torch.exp(-math.log(10000.0) * torch.arange(4) / 4)
    assert torch.allclose(emb[1], torch.cat([(7 * freqs).sin(), (7 * freqs).cos()]), atol=1e-6)


def _clipping_reference(model, scheduler):
    """The model with its implied x̂0 clipped to [-1, 1] (ε recomputed): what the samplers'
    clip option must amount to."""

    def clipped(x_t, t):
        out = model(x_t, t)
        alpha, sigma = (c.to(x_t).reshape(-1, 1) for c in noise_level(scheduler, t))
        _, x0 = to_eps_x0(out, x_t, alpha, sigma, "epsilon")
        x0 = x0.clamp(-1, 1)
        return from_eps_x0((x_t - alpha * x0) / sigma, x0, alpha, sigma, "epsilon")

    return clipped


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_sampling_scheduler_clips_x0_like_clipping_the_model_output(sampler):
    """Sampling (B, d) vectors with the scheduler's own clip option equals sampling the unclipped
    scheduler with a model whose x̂0 is clipped (DDIM excepted: its ``clip_sample`` keeps ε̂ in
    the direction term); without the option samples leave the box."""
    config = BehaviourConfig(sampler=sampler, num_train_timesteps=100)
    train = training_scheduler(config)
    clipping = sampling_scheduler(config, train)
    plain = sampling_scheduler(dataclasses.replace(config, clip_sample=False), train)

    def model(x_t, t):  # pushes x̂0 far outside the box, differently per coordinate
        return -1.5 * x_t + torch.tensor([0.3, -2.0, 4.0])

    def draw(scheduler, fn):
        return sample(
            scheduler, fn, (64, 3), num_inference_steps=8, generator=torch.Generator().manual_seed(0)
        )

    clipped = draw(clipping, model)
    assert clipped.abs().max() <= 1 + 1e-4
    reference = draw(plain, _clipping_reference(model, plain))
    assert torch.allclose(clipped, reference, atol=1e-4) != (sampler == "ddim")
    assert draw(plain, model).abs().max() > 1.5


def test_diffusion_loss_is_zero_for_the_true_noise():
    """A model that returns the true ε has loss 0; ε_θ ≡ 0 has loss E‖ε‖²/d ≈ 1."""
    config = BehaviourConfig()
    scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps)
    actions, states = torch.rand(4096, 2) * 2 - 1, torch.randn(4096, 3)
    g = torch.Generator().manual_seed(0)
    zero = diffusion_loss(lambda x, t, s: torch.zeros_like(x), scheduler, actions, states, g)
    # mean of 8192 squared standard normals: sd √(2/8192) ≈ 0.016, so 5 sd is 0.08
    assert abs(zero.item() - 1.0) < 0.08

    class Oracle(torch.nn.Module):
        def forward(self, noisy, t, s):
            alpha, sigma = noise_level(scheduler, t)
            return (noisy - alpha[:, None].float() * actions) / sigma[:, None].float()

    assert diffusion_loss(Oracle(), scheduler, actions, states, g).item() < 1e-8


def test_noise_mlp_shapes():
    model = NoiseMLP(2, 3, hidden=16)
    out = model(torch.randn(5, 2), torch.tensor(10), torch.randn(5, 3))
    assert out.shape == (5, 2)
