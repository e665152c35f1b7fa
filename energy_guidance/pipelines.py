"""Guide an unmodified diffusers pipeline by wrapping its model.

A diffusers pipeline's denoising loop is, in essence,

    for t in scheduler.timesteps:
        out = pipe.unet(scale_model_input(x, t), t, ...).sample
        x = scheduler.step(out, t, x).prev_sample

inside ``@torch.no_grad()``. :func:`guide_pipeline` swaps ``pipe.unet`` for a
:class:`GuidedModel` whose forward returns the guided output ε̃ = ε̂ + scale·σ_t·∇E_t
(:meth:`AnalyticEnergyGuidance.guided_model_output`, computed with gradients enabled), so the
pipeline's own loop integrates the guided model; nothing of the pipeline is forked. On exit the
original model is put back, also when the block raises.

Noise levels are read from the scheduler the pipeline actually steps with (``pipe.scheduler``,
looked up at every call), not from the one the guidance was built with: ``DDIMPipeline``, for
example, converts its scheduler with ``DDIMScheduler.from_config`` when it is constructed, and a
user may swap ``pipe.scheduler`` at any time.

Conditioning: the energy sees only x̂0, so condition it by closure (``energy=lambda x:
E(x, target)``). Extra arguments the pipeline passes to its model (``encoder_hidden_states``,
``class_labels``, ...) are forwarded to every model evaluation of the guidance. With classifier-
free guidance the model sees a batch of 2B and each half is guided at its own x̂0, so the
combined output carries δ_u + w·(δ_c − δ_u), not one shared shift (untested with CFG pipelines).

``clip_sample``: DDPM and DDIM schedulers clip x̂0 to [-1, 1] by default, and DDIM then recomputes
ε from the clipped x̂0, so guidance that pushes x̂0 outside the range is dropped. First-order
guidance at high noise moves x̂0 by O(β·‖∇E‖/α²); on a random-weight UNet with DDIM this reversed
the effect of guidance. Clipping suits image data and moderate guidance (the digits recipe keeps
it); otherwise build the scheduler with ``clip_sample=False``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .guidance import AnalyticEnergyGuidance


def _attention_for(guidance: AnalyticEnergyGuidance):
    """The math attention kernel when the guidance differentiates twice through the model.

    The training-free ``"jacobian"`` variance takes a gradient of a vector-Jacobian product;
    fused scaled-dot-product attention kernels (flash, memory-efficient) have no double backward.
    """
    variance = getattr(guidance.estimator, "variance", None)
    if guidance.amortized or not getattr(variance, "uses_model_graph", False):
        return nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


@dataclass
class GuidedModelOutput(BaseOutput):
    """What :class:`GuidedModel` returns with ``return_dict=True``, like diffusers' model outputs."""

    sample: Tensor


class GuidedModel(nn.Module):
    """A diffusers model whose output is the energy-guided output of ``guidance``.

    ``scheduler_source`` is an object whose ``.scheduler`` is the scheduler being stepped
    (the pipeline); ``guidance.scheduler`` is used when it is None. ``config``, ``dtype``,
    ``device`` and any other attribute are the wrapped model's.
    """

    def __init__(self, model: nn.Module, guidance: AnalyticEnergyGuidance, scheduler_source=None) -> None:
        super().__init__()
        self.model = model
        self.guidance = guidance
        self.scheduler_source = scheduler_source

    @property
    def config(self):
        return self.model.config

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    def _bound_guidance(self, args: tuple, kwargs: dict) -> AnalyticEnergyGuidance:
        """The guidance with the live scheduler and a model that passes the pipeline's extra args."""
        source = self.scheduler_source
        scheduler = self.guidance.scheduler if source is None else source.scheduler
        model = self.model

        def bound(x: Tensor, t: Tensor):
            return model(x, t, *args, **kwargs, return_dict=False)[0]

        return self.guidance.replace(scheduler=scheduler, model=bound)

    def forward(self, sample: Tensor, timestep, *args, return_dict: bool = True, **kwargs):
        guidance = self._bound_guidance(args, kwargs)
        t = torch.as_tensor(timestep, device=sample.device)
        if t.dim() > 0 and t.numel() > 1 and not bool((t == t.reshape(-1)[0]).all()):
            raise ValueError("guided sampling needs one timestep for the whole batch")
        t = t.reshape(-1)[0]
        with torch.enable_grad(), _attention_for(guidance):
            out = guidance.guided_model_output(sample, t)
        out = out.detach().to(sample.dtype)
        return GuidedModelOutput(sample=out) if return_dict else (out,)


@contextmanager
def guide_pipeline(
    pipe, guidance: AnalyticEnergyGuidance, *, attribute: str = "unet"
) -> Iterator[GuidedModel]:
    """Within the block, ``pipe`` samples the guided model; afterwards it is as it was.

    ``guidance.model`` is ignored: the guidance evaluates the pipeline's own model
    (``getattr(pipe, attribute)``), with the arguments the pipeline gives it, and reads noise
    levels from ``pipe.scheduler``. The pipeline's config is not touched (the model is swapped
    without ``DiffusionPipeline.__setattr__``'s config update), so ``pipe.config`` and
    ``save_pretrained`` never see the wrapper. Yields the :class:`GuidedModel`.

    Example::

        guidance = AnalyticEnergyGuidance(pipe.scheduler, pipe.unet, energy, beta=1.0)
        with guide_pipeline(pipe, guidance):
            images = pipe(batch_size=16, output_type="pt").images
    """
    original = getattr(pipe, attribute)
    if isinstance(original, GuidedModel):
        raise ValueError(f"pipe.{attribute} is already guided; nest guidance by composing energies instead")
    wrapper = GuidedModel(original, guidance, scheduler_source=pipe)
    object.__setattr__(pipe, attribute, wrapper)
    try:
        yield wrapper
    finally:
        object.__setattr__(pipe, attribute, original)
