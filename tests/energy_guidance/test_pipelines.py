"""guide_pipeline: stock diffusers pipelines sample the guided model and are left as they were."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

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


@pytest.mark.parametrize("variance", [None, 0.0, "jacobian"], ids=["default", "dps", "jacobian"])
@pytest.mark.parametrize("kind", ["ddpm", "ddim", "euler"])
def test_guidance_lowers_the_mean_energy(kind, variance):
    # The guided and unguided runs share every random draw of the sampler (same generator; the
    # default's own draws are hashes of the state and its calibration has its own generator), so
    # E(unguided_i) - E(guided_i) are paired; guidance must lower the energy by more than 4
    # standard errors of the paired mean. variance=None is the default estimator.
    unet = tiny_unet()
    pipe = make_pipe(kind, unet)
    options = {} if variance is None else {"variance": variance}
    unguided = run(pipe, kind)
    with guide_pipeline(pipe, mean_pixel, beta=2.0, **options):
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
    with guide_pipeline(pipe, mean_pixel, beta=2.0, variance=0.0) as wrapper:
        assert pipe.unet is wrapper and isinstance(pipe.unet, GuidedModel)
        assert dict(pipe.config) == config  # the swap does not go through the config
        run(pipe, "ddim", n=4, steps=2)
    assert pipe.unet is unet
    with (
        pytest.raises(RuntimeError, match="inside"),
        guide_pipeline(pipe, mean_pixel, beta=2.0, variance=0.0),
    ):
        raise RuntimeError("inside")
    assert pipe.unet is unet
    assert dict(pipe.config) == config
    assert [p.requires_grad for p in unet.parameters()] == flags
    assert all(torch.equal(state[k], v) for k, v in unet.state_dict().items())
    assert unet.training == tiny_unet().training


def test_wrapper_keeps_shape_dtype_and_model_attributes():
    unet = tiny_unet().to(torch.float64)
    pipe = make_pipe("ddpm", unet)
    with guide_pipeline(pipe, mean_pixel, beta=2.0, variance=0.0) as wrapper:
        assert wrapper.dtype == torch.float64 and wrapper.device == unet.device
        assert wrapper.config is unet.config and wrapper.conv_in is unet.conv_in
        images = run(pipe, "ddpm", n=4, steps=3)
        x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
        (out,) = wrapper(x, torch.tensor(500), return_dict=False)
    assert images.shape == (4, 1, 8, 8) and images.dtype == torch.float64
    assert out.shape == x.shape and out.dtype == torch.float64


def test_noise_levels_come_from_the_scheduler_the_pipeline_steps_with():
    # The wrapper reads pipe.scheduler at every call: a scheduler swapped in inside the block (a
    # cosine schedule instead of the linear one the guidance began with) gives the noise levels.
    unet = tiny_unet()
    pipe = make_pipe("ddim", unet)
    other = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    first = AnalyticEnergyGuidance(pipe.scheduler, unet, mean_pixel, beta=2.0, variance=0.0)
    right = AnalyticEnergyGuidance(other, unet, mean_pixel, beta=2.0, variance=0.0)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor(600)
    with guide_pipeline(pipe, mean_pixel, beta=2.0, variance=0.0) as wrapper:
        pipe.scheduler = other
        out = wrapper(x, t).sample
    expected = right.guided_model_output(x, t)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert (out - first.guided_model_output(x, t)).abs().max() > 1e-3


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
    with guide_pipeline(pipe, mean_pixel, 2.0, variance=0.0) as w:
        out = w(x, t, class_labels=labels).sample
    torch.testing.assert_close(out, expected_guidance.guided_model_output(x, t), rtol=1e-5, atol=1e-6)


def test_guiding_twice_is_refused():
    unet = tiny_unet()
    pipe = make_pipe("ddpm", unet)
    with (
        guide_pipeline(pipe, mean_pixel, beta=2.0, variance=0.0),
        pytest.raises(ValueError, match="already guided"),
    ):
        with guide_pipeline(pipe, mean_pixel, beta=2.0, variance=0.0):
            pass
    assert pipe.unet is unet


# Classifier-free guidance: a real StableDiffusionPipeline from tiny local parts.


@pytest.fixture(scope="module")
def stable_diffusion(tmp_path_factory):
    """(pipe, brightness): a StableDiffusionPipeline with a tiny cross-attention UNet, VAE and CLIP
    text encoder (random weights), a CLIP tokenizer over single letters, and E(z) = the mean
    brightness of the VAE decoding of latents z."""
    transformers = pytest.importorskip("transformers")
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tokenizer")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16
    )
    text_encoder = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=8,
    )
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)

    def brightness(latents: torch.Tensor) -> torch.Tensor:
        return vae.decode(latents / vae.config.scaling_factor).sample.mean((1, 2, 3))

    return pipe, brightness


def sd_latents(pipe, guidance_scale: float = 3.0, steps: int = 4, **kwargs) -> torch.Tensor:
    return pipe(
        ["dark", "bright"],
        num_images_per_prompt=3,
        height=8,
        width=8,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    ).images


def test_cfg_energy_sees_each_real_sample_once_with_its_prompts_condition(stable_diffusion):
    # Two prompts × 3 images: the UNet sees 12 (CFG), the energy 6, each with its prompt's sign
    # (+1: darker is better, -1: brighter is better); guidance moves each image its own way.
    pipe, brightness = stable_diffusion
    calls, model_batches = [], []

    def energy(latents, sign):
        calls.append((latents.shape[0], sign.tolist()))
        return sign * brightness(latents)

    hook = pipe.unet.register_forward_pre_hook(lambda _, args: model_batches.append(args[0].shape[0]))
    try:
        plain = sd_latents(pipe)
        model_batches.clear()
        with guide_pipeline(pipe, energy, beta=20.0, variance=0.0, condition=torch.tensor([1.0, -1.0])):
            guided = sd_latents(pipe)
            assert calls and all(call == (6, [1.0] * 3 + [-1.0] * 3) for call in calls)
            assert set(model_batches) == {12}
            calls.clear()
            model_batches.clear()
            sd_latents(pipe, guidance_scale=1.0, steps=2)  # no CFG: read from the pipeline per call
            assert set(model_batches) == {6} and [c[0] for c in calls] == [6, 6]
    finally:
        hook.remove()
    with torch.no_grad():
        change = brightness(guided) - brightness(plain)
    assert (change[:3] < 0).all() and (change[3:] > 0).all()


def test_cfg_guided_halves_combine_to_the_guided_combined_prediction(stable_diffusion):
    pipe, brightness = stable_diffusion
    unet, w, b = pipe.unet, 3.0, 2
    x = torch.randn(b, 4, 8, 8)
    hidden = torch.randn(2 * b, 5, 16)  # unconditional half, then conditional half
    t = torch.tensor(601)

    def energy(latents, cond):
        assert latents.shape[0] == b and torch.equal(cond, hidden[b:])
        return brightness(latents) + cond.mean((1, 2))

    def halves(z):
        return unet(torch.cat([z, z]), t, encoder_hidden_states=hidden).sample.chunk(2)

    def combined(z, _t, _cond=None):  # diffusers' StableDiffusionPipeline: the same formula
        uncond, text = halves(z)
        return uncond + w * (text - uncond)

    guidance = AnalyticEnergyGuidance(pipe.scheduler, unet, energy, beta=5.0, variance=0.0)
    wrapper = GuidedModel(unet, guidance, pipe, cfg_scale=w, condition="encoder_hidden_states")
    uncond, text = wrapper(torch.cat([x, x]), t, encoder_hidden_states=hidden).sample.chunk(2)
    expected = guidance.replace(model=combined).guided_model_output(x, t, hidden[b:])
    torch.testing.assert_close(uncond + w * (text - uncond), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        plain_uncond, plain_text = halves(x)
    torch.testing.assert_close(text - uncond, plain_text - plain_uncond, rtol=1e-5, atol=1e-5)
    assert (expected - combined(x, t)).abs().max() > 1e-3  # the guidance is not trivial here
    assert wrapper.last_info.x0_hat.shape == x.shape


def test_cfg_with_zero_beta_leaves_the_pipeline_output_unchanged(stable_diffusion):
    pipe, brightness = stable_diffusion
    plain = sd_latents(pipe, steps=3)
    with guide_pipeline(pipe, brightness, beta=0.0, variance=0.0):
        same = sd_latents(pipe, steps=3)
    torch.testing.assert_close(same, plain, rtol=1e-5, atol=1e-6)


def test_callback_on_step_end_reads_and_switches_off_the_guidance(stable_diffusion):
    pipe, brightness = stable_diffusion
    calls, norms = [], []

    def energy(latents):
        calls.append(latents.shape[0])
        return brightness(latents)

    def on_step_end(pipe, step, timestep, callback_kwargs):
        norms.append(pipe.unet.last_info.guidance_norm)
        if step == 1:
            pipe.unet.enabled = False  # guide the first two steps only
        return callback_kwargs

    with guide_pipeline(pipe, energy, beta=5.0, variance=0.0):
        sd_latents(pipe, steps=4, callback_on_step_end=on_step_end)
    assert calls == [6, 6] and len(norms) == 4
    assert norms[0].shape == (6,) and bool((norms[0] > 0).all())
    assert norms[3] is norms[1]  # no guided evaluation after step 1


def test_cfg_layout_is_checked():
    unet = tiny_unet()
    pipe = make_pipe("ddpm", unet)  # no do_classifier_free_guidance attribute
    x, t = torch.randn(2, 1, 8, 8), torch.tensor(500)
    doubled = torch.cat([x, x])
    with (
        guide_pipeline(pipe, mean_pixel, beta=2.0, variance=0.0) as wrapper,
        pytest.raises(ValueError, match="identical halves"),
    ):
        wrapper(doubled, t)
    with guide_pipeline(pipe, mean_pixel, beta=2.0, variance=0.0, cfg_scale=None) as wrapper:
        assert wrapper(doubled, t).sample.shape == doubled.shape  # independent samples, as asked
    with guide_pipeline(pipe, mean_pixel, beta=2.0, variance=0.0, cfg_scale=2.0) as wrapper:
        with pytest.raises(ValueError, match="halves differ"):
            wrapper(torch.randn(4, 1, 8, 8), t)
        assert wrapper(doubled, t).sample.shape == doubled.shape
    with guide_pipeline(
        pipe, mean_pixel, beta=2.0, variance=0.0, condition=torch.tensor([1.0, 2.0, 3.0])
    ) as wrapper:
        with pytest.raises(ValueError, match="one per sample or one per prompt"):
            wrapper(torch.randn(4, 1, 8, 8), t)
    with (
        pytest.raises(ValueError, match="cfg_scale"),
        guide_pipeline(pipe, mean_pixel, beta=2.0, variance=0.0, cfg_scale="on"),
    ):
        pass


class KeywordModel(torch.nn.Module):
    """Called like diffusers' transformers: ``hidden_states=``, ``timestep=`` by name, and the
    condition as the second positional parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, hidden_states, encoder_hidden_states=None, timestep=None, return_dict=True):
        assert timestep is not None and encoder_hidden_states is not None
        return (self.weight * hidden_states + encoder_hidden_states.mean(),)


def test_models_called_by_keyword_are_called_back_by_keyword():
    model = KeywordModel()
    scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    pipe = SimpleNamespace(scheduler=scheduler, transformer=model)
    hidden = torch.randn(3, 4)
    guidance = AnalyticEnergyGuidance(scheduler, model, mean_pixel, beta=2.0, variance=0.0)
    x, t = torch.randn(3, 1, 4, 4), torch.tensor([400, 400, 400])
    with guide_pipeline(pipe, mean_pixel, beta=2.0, variance=0.0, attribute="transformer") as wrapper:
        (out,) = wrapper(hidden_states=x, encoder_hidden_states=hidden, timestep=t, return_dict=False)
    reference = guidance.replace(model=lambda z, _t: model(z, hidden, timestep=t)[0])
    torch.testing.assert_close(out, reference.guided_model_output(x, t[0]))


def test_a_guidance_for_another_model_is_refused():
    unet = tiny_unet()
    pipe = make_pipe("ddpm", unet)
    guidance = AnalyticEnergyGuidance(pipe.scheduler, tiny_unet(), mean_pixel, beta=2.0, variance=0.0)
    with pytest.raises(ValueError, match="built for the model it wraps"):
        GuidedModel(unet, guidance, pipe)
