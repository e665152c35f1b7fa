"""guide_pipeline: stock diffusers pipelines sample the guided model and are left as they were."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import (
    DDIMPipeline,
    DDPMPipeline,
    DDPMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    UNet2DModel,
)

from energy_guidance import AnalyticEnergyGuidance
from energy_guidance.pipelines import GuidedModel, guide_pipeline


def tiny_unet(**kwargs) -> UNet2DModel:
    """A random-weight UNet (41.6k parameters; the default mid-block has attention)."""
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        **kwargs,
    )


def mean_pixel(x: torch.Tensor) -> torch.Tensor:
    """A linear energy: lower means darker images."""
    return x.flatten(1).mean(1)


class EulerLoopPipeline(DiffusionPipeline):
    """A minimal third-party pipeline: scale_model_input, model, then scheduler.step."""

    def __init__(self, unet, scheduler) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, batch_size: int, generator: torch.Generator, num_inference_steps: int) -> torch.Tensor:
        self.scheduler.set_timesteps(num_inference_steps)
        shape = (batch_size, 1, 8, 8)
        x = torch.randn(shape, generator=generator, dtype=self.unet.dtype) * self.scheduler.init_noise_sigma
        for t in self.scheduler.timesteps:
            out = self.unet(self.scheduler.scale_model_input(x, t), t).sample
            x = self.scheduler.step(out, t, x).prev_sample
        return x


def make_pipe(kind: str, unet: UNet2DModel):
    if kind == "euler":
        return EulerLoopPipeline(unet, EulerDiscreteScheduler(num_train_timesteps=1000))
    scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    pipe = (DDPMPipeline if kind == "ddpm" else DDIMPipeline)(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, kind: str, n: int = 64, steps: int = 10) -> torch.Tensor:
    """Samples in model space [-1, 1] (DDPM/DDIM pipelines return (x/2 + 1/2) clamped to [0, 1])."""
    gen = torch.Generator().manual_seed(1)
    if kind == "euler":
        return pipe(n, gen, steps)
    return pipe(batch_size=n, generator=gen, num_inference_steps=steps, output_type="pt").images * 2 - 1


@pytest.mark.parametrize("variance", [0.0, "jacobian"])
@pytest.mark.parametrize("kind", ["ddpm", "ddim", "euler"])
def test_guidance_lowers_the_mean_energy(kind, variance):
    # The guided and unguided runs share every random draw (same generator, and guidance draws
    # none), so E(unguided_i) - E(guided_i) are paired; guidance must lower the energy by more
    # than 4 standard errors of the paired mean.
    unet = tiny_unet()
    pipe = make_pipe(kind, unet)
    guidance = AnalyticEnergyGuidance(pipe.scheduler, unet, mean_pixel, beta=2.0, variance=variance)
    unguided = run(pipe, kind)
    with guide_pipeline(pipe, guidance):
        guided = run(pipe, kind)
    assert guided.shape == unguided.shape and guided.dtype == unguided.dtype
    diff = mean_pixel(unguided) - mean_pixel(guided)
    assert diff.mean() > 4 * diff.std() / math.sqrt(len(diff))


def test_pipeline_is_unchanged_after_the_block_even_on_error():
    unet = tiny_unet()
    pipe = make_pipe("ddim", unet)
    config = dict(pipe.config)
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    flags = [p.requires_grad for p in unet.parameters()]
    guidance = AnalyticEnergyGuidance(pipe.scheduler, unet, mean_pixel, beta=2.0, variance=0.0)
    with guide_pipeline(pipe, guidance) as wrapper:
        assert pipe.unet is wrapper and isinstance(pipe.unet, GuidedModel)
        assert dict(pipe.config) == config  # the swap does not go through the config
        run(pipe, "ddim", n=4, steps=2)
    assert pipe.unet is unet
    with pytest.raises(RuntimeError, match="inside"), guide_pipeline(pipe, guidance):
        raise RuntimeError("inside")
    assert pipe.unet is unet
    assert dict(pipe.config) == config
    assert [p.requires_grad for p in unet.parameters()] == flags
    assert all(torch.equal(state[k], v) for k, v in unet.state_dict().items())
    assert unet.training == tiny_unet().training


def test_wrapper_keeps_shape_dtype_and_model_attributes():
    unet = tiny_unet().to(torch.float64)
    pipe = make_pipe("ddpm", unet)
    guidance = AnalyticEnergyGuidance(pipe.scheduler, unet, mean_pixel, beta=2.0, variance=0.0)
    with guide_pipeline(pipe, guidance) as wrapper:
        assert wrapper.dtype == torch.float64 and wrapper.device == unet.device
        assert wrapper.config is unet.config and wrapper.conv_in is unet.conv_in
        images = run(pipe, "ddpm", n=4, steps=3)
        x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
        (out,) = wrapper(x, torch.tensor(500), return_dict=False)
    assert images.shape == (4, 1, 8, 8) and images.dtype == torch.float64
    assert out.shape == x.shape and out.dtype == torch.float64


def test_noise_levels_come_from_the_scheduler_the_pipeline_steps_with():
    # DDIMPipeline converts its scheduler with from_config; a guidance built on another schedule
    # (cosine instead of linear) must still read the pipeline's noise levels.
    unet = tiny_unet()
    pipe = make_pipe("ddim", unet)
    other = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    stale = AnalyticEnergyGuidance(other, unet, mean_pixel, beta=2.0, variance=0.0)
    right = AnalyticEnergyGuidance(pipe.scheduler, unet, mean_pixel, beta=2.0, variance=0.0)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor(600)
    with guide_pipeline(pipe, stale) as wrapper:
        out = wrapper(x, t).sample
    expected = right.guided_model_output(x, t)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert (out - stale.guided_model_output(x, t)).abs().max() > 1e-3


def test_extra_model_arguments_reach_every_model_evaluation():
    unet = tiny_unet(num_class_embeds=3)
    pipe = make_pipe("ddpm", unet)
    labels = torch.tensor([0, 2, 1])

    def conditional(x, t):
        return unet(x, t, class_labels=labels).sample

    expected_guidance = AnalyticEnergyGuidance(
        pipe.scheduler, conditional, mean_pixel, beta=2.0, variance=0.0
    )
    x, t = torch.randn(3, 1, 8, 8), torch.tensor(300)
    with guide_pipeline(
        pipe, AnalyticEnergyGuidance(pipe.scheduler, unet, mean_pixel, 2.0, variance=0.0)
    ) as w:
        out = w(x, t, class_labels=labels).sample
    torch.testing.assert_close(out, expected_guidance.guided_model_output(x, t), rtol=1e-5, atol=1e-6)


def test_guiding_twice_is_refused():
    unet = tiny_unet()
    pipe = make_pipe("ddpm", unet)
    guidance = AnalyticEnergyGuidance(pipe.scheduler, unet, mean_pixel, beta=2.0, variance=0.0)
    with guide_pipeline(pipe, guidance), pytest.raises(ValueError, match="already guided"):
        with guide_pipeline(pipe, guidance):
            pass
    assert pipe.unet is unet
