"""The behaviour policy's pieces: timestep embedding, x̂0 clipping, the diffusion loss."""

import math

import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

from energy_guidance import noise_level, to_eps_x0
from recipes.behaviour import BehaviourConfig, NoiseMLP, clip_x0, diffusion_loss, timestep_embedding


def test_timestep_embedding_values():
    emb = timestep_embedding(torch.tensor([0, 7]), 8)
    assert torch.allclose(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    freqs = torch.exp(-math.log(10000.0) * torch.arange(4) / 4)
    assert torch.allclose(emb[1], torch.cat([(7 * freqs).sin(), (7 * freqs).cos()]), atol=1e-6)


def test_clip_x0_equals_ddpm_clip_sample():
    """DDPM(clip_sample=False) fed the clipped output steps exactly like DDPM(clip_sample=True)."""
    clipping = DDPMScheduler(clip_sample=True)
    plain = DDPMScheduler(clip_sample=False)
    clipping.set_timesteps(10)
    plain.set_timesteps(10)
    x = torch.randn(64, 2) * 2
    t = clipping.timesteps[3]
    out = torch.randn(64, 2) * 3
    wrapped = clip_x0(lambda x_t, t, c: out, plain)
    a = clipping.step(out, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    b = plain.step(wrapped(x, t), t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    assert torch.allclose(a, b, atol=1e-5)


def test_clip_x0_clips_only_outside_the_box():
    scheduler = DPMSolverMultistepScheduler()
    scheduler.set_timesteps(15)
    t = scheduler.timesteps[5]
    x = torch.randn(256, 3)
    out = torch.randn(256, 3)
    alpha, sigma = noise_level(scheduler, t)
    _, x0 = to_eps_x0(out, x, alpha, sigma, "epsilon")
    _, clipped_x0 = to_eps_x0(clip_x0(lambda x_t, t, c: out, scheduler)(x, t), x, alpha, sigma, "epsilon")
    assert torch.allclose(clipped_x0, x0.clamp(-1, 1), atol=1e-5)
    inside = x0.abs() < 1
    assert inside.any() and (~inside).any()


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
