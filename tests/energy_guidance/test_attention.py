"""Models and energies with attention are guided in every mode (issue 8, item 3).

The fused scaled-dot-product attention kernels (on CPU the flash kernel) have no double
backward. Guidance differentiates a function twice only where its mode needs it, and there runs
that function's forward pass with the math kernel:

| mode                                   | model      | energy           |
|----------------------------------------|------------|------------------|
| autograd, order 1, ``Constant(0.0)``   | once       | once             |
| autograd, order 1, constant or table   | once       | twice (HVP)      |
| autograd, order 1, ``Jacobian``        | twice      | twice            |
| autograd, order 2                      | as order 1 | three times      |
| ``"tweedie"``, constant or table       | never      | twice (HVP)      |
| ``"tweedie"``, ``Jacobian``            | once (VJP) | twice            |
| amortized (sampling)                   | never      | never            |

Model: a tiny ``UNet2DModel`` with attention blocks on 2×2 latents with 2 channels; energy: the
mean brightness of a tiny ``AutoencoderKL``'s decoding of x̂0 (its mid block has attention).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DModel

from energy_guidance import AnalyticEnergyGuidance, IntermediateEnergyNet, train_intermediate_energy
from energy_guidance.callables import double_backward_attention
from energy_guidance.pipelines import guide_pipeline
from energy_guidance.posterior import DataVar, Jacobian, VarianceTable
from energy_guidance.sampling import sample

SHAPE = (4, 2, 2, 2)  # B = 4 latents of 2 channels, 2×2: d = 8 (order 2 takes d HVPs or VJPs)
STEPS = 3
BETA = 2.0


@pytest.fixture(scope="module")
def parts():
    """(scheduler, UNet with attention, energy decoding with a VAE) — random weights."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=2,
        in_channels=2,
        out_channels=2,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D"),
        attention_head_dim=4,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        latent_channels=2,
        block_out_channels=(8,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=2,
    )

    def brightness(latents: torch.Tensor) -> torch.Tensor:  # lower is better: darker decodings
        return vae.decode(latents).sample.flatten(1).mean(1)

    return DDIMScheduler(clip_sample=False), unet, brightness


def _table() -> VarianceTable:
    d = SHAPE[1] * SHAPE[2] * SHAPE[3]
    half = torch.full((2,), 0.5)
    return VarianceTable(
        log_snr=torch.tensor([-20.0, 20.0]),
        eps_norm=half,
        data_var=half,
        diagonal=torch.full((2, d), 0.5),
        data_variance=torch.ones(d),
    )


# Modes whose model is differentiated twice: their model call needs the math kernel, which the
# guidance chooses in AnalyticEnergyGuidance._predict and guide_pipeline in its wrapper.
TWICE_THROUGH_MODEL = {"jacobian", "order2-jacobian"}

MODES = {
    "dps": dict(variance=0.0),
    "constant": dict(variance=0.3),
    "table": dict(variance="data_var"),
    "jacobian": dict(variance=Jacobian(max_variance=1.0)),
    "order2-constant": dict(variance=0.3, order=2),
    "order2-jacobian": dict(variance=Jacobian(max_variance=1.0), order=2),
    "tweedie-constant": dict(variance=0.3, gradient="tweedie"),
    "tweedie-jacobian": dict(variance=Jacobian(max_variance=1.0), gradient="tweedie"),
    "tweedie-order2": dict(variance=Jacobian(max_variance=1.0), gradient="tweedie", order=2),
}


def _options(mode: str) -> dict:
    kwargs = dict(MODES[mode])
    if kwargs["variance"] == "data_var":
        kwargs["variance"] = DataVar(_table())
    return kwargs


def _guidance(parts, mode: str) -> AnalyticEnergyGuidance:
    scheduler, unet, brightness = parts
    return AnalyticEnergyGuidance(scheduler, unet, brightness, beta=BETA, **_options(mode))


def _draw(parts, guidance=None) -> torch.Tensor:
    scheduler, unet, _ = parts
    gen = torch.Generator().manual_seed(1)
    if guidance is None:
        return sample(scheduler, unet, SHAPE, num_inference_steps=STEPS, generator=gen)
    return guidance.sample(SHAPE, num_inference_steps=STEPS, generator=gen)


def _check_guided(parts, guided: torch.Tensor, *, lowers: bool = True) -> None:
    """Finite, different from the unguided samples drawn with the same noise, and (``lowers``)
    of lower mean energy than them."""
    _, _, brightness = parts
    plain = _draw(parts)
    assert torch.isfinite(guided).all()
    assert (guided - plain).abs().max() > 1e-4
    if lowers:
        with torch.no_grad():
            assert (brightness(plain) - brightness(guided)).mean() > 0


@pytest.mark.parametrize("mode", list(MODES))
def test_every_training_free_mode_guides_attention_model_and_energy(parts, mode):
    _check_guided(parts, _draw(parts, _guidance(parts, mode)))


class LoopPipeline(DiffusionPipeline):
    """A minimal pipeline: scale_model_input, model, scheduler.step, under no_grad."""

    def __init__(self, unet, scheduler) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, generator: torch.Generator) -> torch.Tensor:
        self.scheduler.set_timesteps(STEPS)
        x = torch.randn(SHAPE, generator=generator) * self.scheduler.init_noise_sigma
        for t in self.scheduler.timesteps:
            out = self.unet(self.scheduler.scale_model_input(x, t), t).sample
            x = self.scheduler.step(out, t, x).prev_sample
        return x


@pytest.mark.parametrize("mode", sorted(TWICE_THROUGH_MODEL))
def test_model_differentiated_twice_through_a_pipeline(parts, mode):
    scheduler, unet, _ = parts
    pipe = LoopPipeline(unet, scheduler)
    with guide_pipeline(pipe, parts[2], BETA, **_options(mode)):
        guided = pipe(torch.Generator().manual_seed(1))
    _check_guided(parts, guided)


@pytest.mark.parametrize("order", [1, 2])
def test_amortized_guidance_trained_and_sampled_with_attention(parts, order):
    # Training targets call the energy (∇E; ∇²E for order 2) and the Jacobian variance's VJP
    # through the model; sampling differentiates only the network.
    scheduler, unet, brightness = parts
    net = IntermediateEnergyNet(dim=8, hidden=16, depth=2, beta=BETA)
    data = torch.randn(16, *SHAPE[1:])
    train_intermediate_energy(
        net,
        scheduler,
        unet,
        brightness,
        data,
        variance=Jacobian(max_variance=1.0) if order == 1 else 0.3,
        order=order,
        steps=5,
        batch_size=8,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    guidance = AnalyticEnergyGuidance(scheduler, unet, estimator=net)
    _check_guided(parts, _draw(parts, guidance), lowers=False)  # 5 steps of training: no direction


# Which derivatives each mode takes, checked with functions that cannot be differentiated twice.


class _SecondDerivative(torch.autograd.Function):
    """(x, g) ↦ 2·x·g, the backward of :class:`OnceSquare`, whose own backward refuses."""

    @staticmethod
    def forward(ctx, x, grad):
        return 2 * x * grad

    @staticmethod
    def backward(ctx, _):
        raise RuntimeError("differentiated twice")


class OnceSquare(torch.autograd.Function):
    """x ↦ x², whose gradient cannot itself be differentiated (as fused attention kernels)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return _SecondDerivative.apply(x, grad)


def _once_energy(x: torch.Tensor) -> torch.Tensor:
    return OnceSquare.apply(x).flatten(1).mean(1)


def _once_model(x: torch.Tensor, t) -> torch.Tensor:
    return 0.5 * OnceSquare.apply(x) - 0.1 * x


def _linear_energy(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


def _linear_model(x: torch.Tensor, t) -> torch.Tensor:
    return 0.3 * x


FIRST_ORDER_MODEL = ["dps", "constant", "table", "order2-constant", "tweedie-constant", "tweedie-jacobian"]


@pytest.mark.parametrize("mode", FIRST_ORDER_MODEL)
def test_the_model_is_differentiated_once_unless_the_jacobian_is_differentiated(mode):
    scheduler = DDIMScheduler(clip_sample=False)
    guidance = _guidance((scheduler, _once_model, _linear_energy), mode)
    out = guidance.guided_model_output(torch.randn(3, 2, 2, 2), torch.tensor(500))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("mode", sorted(TWICE_THROUGH_MODEL))
def test_the_jacobian_variance_with_autograd_differentiates_the_model_twice(mode):
    scheduler = DDIMScheduler(clip_sample=False)
    guidance = _guidance((scheduler, _once_model, _linear_energy), mode)
    with pytest.raises(RuntimeError, match="differentiated twice"):
        guidance.guided_model_output(torch.randn(3, 2, 2, 2), torch.tensor(500))


def test_dps_style_differentiates_the_energy_once_and_the_others_twice():
    scheduler = DDIMScheduler(clip_sample=False)
    x, t = torch.randn(3, 2, 2, 2), torch.tensor(500)
    dps = _guidance((scheduler, _linear_model, _once_energy), "dps")
    assert torch.isfinite(dps.guided_model_output(x, t)).all()
    for mode in ("constant", "tweedie-constant"):
        with pytest.raises(RuntimeError, match="differentiated twice"):
            _guidance((scheduler, _linear_model, _once_energy), mode).guided_model_output(x, t)


def test_math_kernel_only_around_the_calls_differentiated_twice():
    """Records, at each call, whether the fused attention kernels are allowed."""
    scheduler = DDIMScheduler(clip_sample=False)
    seen: list[tuple[str, bool]] = []

    def fused() -> bool:
        return torch.backends.cuda.flash_sdp_enabled()

    def model(x, t):
        seen.append(("model", fused()))
        return 0.3 * x

    def energy(x):
        seen.append(("energy", fused()))
        return (x**2).flatten(1).mean(1)

    x, t = torch.randn(3, 2, 2, 2), torch.tensor(500)
    expected = {
        "dps": {("model", True), ("energy", True)},
        "constant": {("model", True), ("energy", False)},
        "tweedie-constant": {("model", True), ("energy", False)},
        "tweedie-jacobian": {("model", True), ("energy", False)},
    }
    assert fused()  # the default outside guidance
    for mode, kernels in expected.items():
        seen.clear()
        _guidance((scheduler, model, energy), mode).guided_model_output(x, t)
        assert set(seen) == kernels, mode
    with double_backward_attention():
        assert not fused()
    assert fused()

    # guide_pipeline: the Jacobian variance differentiates the model twice, so the model runs with
    # the math kernel there; DPS-style it keeps the fused kernels.
    def unet(x, t, return_dict=True):
        seen.append(("model", fused()))
        return (0.3 * x,)

    for mode, model_fused in (("jacobian", False), ("dps", True)):
        pipe = SimpleNamespace(scheduler=scheduler, unet=unet)
        seen.clear()
        with guide_pipeline(pipe, energy, BETA, **_options(mode)) as wrapper:
            wrapper(x, t)
        assert ("model", model_fused) in seen and ("model", not model_fused) not in seen, mode
