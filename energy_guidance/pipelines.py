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

Conditioning the energy: by closure (``energy=lambda x: E(x, target)``), or with ``condition=``:
the name of a model argument (``"encoder_hidden_states"``: the energy is called as ``energy(x0,
cond)`` with the conditional half of it under CFG), or a per-prompt or per-sample tensor or list
(P entries for P prompts are repeated for ``num_images_per_prompt``, diffusers' layout: each
prompt's images are consecutive). Extra arguments the pipeline passes to its model
(``encoder_hidden_states``, ``class_labels``, ...) are forwarded to every model evaluation.

Classifier-free guidance (CFG): a StableDiffusionPipeline-style loop calls the model on
``cat([x, x])`` (2B: unconditional half, then conditional half, ``encoder_hidden_states``
likewise) and steps with ε_cfg = ε_u + w·(ε_c − ε_u). The wrapper then guides that combined
output as the model of the B real samples: its energy is evaluated on B samples (never 2B), and it
returns the halves ε_u + δ and ε_c + δ with δ = ε̃ − ε_cfg, so that the pipeline's combination,
whose weights (1 − w) and w sum to 1, is exactly the guided ε̃, and ε_c − ε_u is unchanged.
``cfg_scale="auto"`` (default) reads ``pipe.do_classifier_free_guidance`` and
``pipe.guidance_scale`` at every call (diffusers' Stable Diffusion family sets them in
``__call__``); pass a number for a pipeline that does CFG without these attributes, or None for
batches of independent samples. A batch of two identical halves with no CFG known is refused.
``guidance_rescale`` > 0 (applied by the pipeline after the combination) rescales δ with it.

Attention: where the guidance differentiates the model twice (autograd with a variance read
from the model's graph, the Jacobian), the model runs with the math attention kernel
(:func:`~energy_guidance.callables.double_backward_attention`); the energy gets it from
:mod:`energy_guidance.callables` whenever its gradient is differentiated.

``clip_sample``: DDPM and DDIM schedulers clip x̂0 to [-1, 1] by default. DDIM then steps with
the UNCLIPPED ε̂ unless the pipeline is called with ``use_clipped_model_output=True``; a guided ε̃
that pushes x̂0 past the clip then moves the sample the opposite way (the guidance reverses: on
the digits UNet, asking for darker images made them brighter). Call a guided ``DDIMPipeline``
with ``use_clipped_model_output=True`` (``energy_guidance.sample`` does this itself), or build
the scheduler with ``clip_sample=False`` when the data are not confined to [-1, 1].
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from diffusers.utils import BaseOutput
from torch import Tensor, nn

from .callables import Cond, Energy, Timestep, double_backward_attention
from .guidance import AnalyticEnergyGuidance
from .protocols import StepInfo


def _conditional_half(value: Cond) -> Cond:
    """The conditional (second) half of a CFG batch argument: tensors, and dicts of them."""
    if isinstance(value, Tensor):
        return value.chunk(2)[1]
    if isinstance(value, dict):
        return {k: _conditional_half(v) for k, v in value.items()}
    return value


def _per_sample(condition: Tensor | Sequence[Any], batch: int, device: torch.device) -> Tensor | list[Any]:
    """A per-sample condition of length ``batch`` from a per-sample or per-prompt one."""
    n = len(condition)
    if n == 0 or batch % n:
        raise ValueError(
            f"condition has {n} entries for a batch of {batch} samples; give one per sample or one "
            "per prompt (repeated for num_images_per_prompt)"
        )
    if isinstance(condition, Tensor):
        return condition.to(device).repeat_interleave(batch // n, dim=0)
    return [c for c in condition for _ in range(batch // n)]


@dataclass
class GuidedModelOutput(BaseOutput):
    """What :class:`GuidedModel` returns with ``return_dict=True``, like diffusers' model outputs."""

    sample: Tensor


class GuidedModel(nn.Module):
    """A diffusers model whose output is the energy-guided output of ``guidance``.

    ``scheduler_source`` is an object whose ``.scheduler`` is the scheduler being stepped
    (the pipeline); ``guidance.scheduler`` is used when it is None. ``cfg_scale`` and
    ``condition`` are :func:`guide_pipeline`'s. ``config``, ``dtype``, ``device`` and any other
    attribute are the wrapped model's.

    For callbacks (``callback_on_step_end``): ``last_info`` is the :class:`StepInfo` of the last
    guided evaluation (x̂0 after guidance and ‖ε̃ − ε̂‖ of the B real samples), and setting
    ``enabled = False`` (or changing ``guidance``) takes effect at the next model call.
    """

    def __init__(
        self,
        model: nn.Module,
        guidance: AnalyticEnergyGuidance,
        scheduler_source: Any = None,
        *,
        cfg_scale: float | str | None = "auto",
        condition: str | Tensor | Sequence[Any] | None = None,
    ) -> None:
        super().__init__()
        if guidance.model is not model:
            raise ValueError("guidance must be built for the model it wraps (guidance.model is not model)")
        if not (cfg_scale is None or cfg_scale == "auto" or isinstance(cfg_scale, int | float)):
            raise ValueError(f"cfg_scale must be 'auto', a number or None, got {cfg_scale!r}")
        self.model = model
        self.guidance = guidance
        self.scheduler_source = scheduler_source
        self.cfg_scale = cfg_scale
        self.condition = condition
        self.enabled = True
        self.last_info: StepInfo | None = None
        self._warned_rescale = False

    @property
    def config(self):
        return self.model.config

    # the wrapped diffusers model's properties (nn.Module types its attributes as Tensor | Module)
    @property
    def dtype(self) -> torch.dtype:
        return cast(torch.dtype, self.model.dtype)

    @property
    def device(self) -> torch.device:
        return cast(torch.device, self.model.device)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    def _cfg_weight(self) -> float | None:
        """w of the CFG batch the model is being called with, or None for independent samples."""
        if self.cfg_scale != "auto":
            return None if self.cfg_scale is None else float(self.cfg_scale)
        source = self.scheduler_source
        try:  # diffusers' properties read attributes that exist only inside __call__
            on = bool(source.do_classifier_free_guidance)
            scale = float(source.guidance_scale) if on else None
        except AttributeError:
            return None
        return scale

    def _energy_condition(self, kwargs: dict[str, Any], batch: int, cfg: bool, device: torch.device) -> Cond:
        condition = self.condition
        if condition is None:
            return None
        if isinstance(condition, str):
            if condition not in kwargs:
                raise KeyError(
                    f"condition={condition!r}: the pipeline passed no such argument to its model "
                    f"(it passed {sorted(kwargs)})"
                )
            return _conditional_half(kwargs[condition]) if cfg else kwargs[condition]
        return _per_sample(condition, batch, device)

    def forward(self, *arguments: Any, return_dict: bool = True, **kwargs: Any) -> Any:
        if not self.enabled:
            return self.model(*arguments, return_dict=return_dict, **kwargs)
        args = list(arguments)
        # The sample and timestep as the pipeline passed them: positionally (UNets) or by name
        # (``hidden_states=``, ``timestep=``: diffusers' transformers).
        sample_key = None if args else ("sample" if "sample" in kwargs else "hidden_states")
        sample = args.pop(0) if sample_key is None else kwargs.pop(sample_key)
        timestep_positional = bool(args) and sample_key is None
        timestep = args.pop(0) if timestep_positional else kwargs.pop("timestep")
        t = torch.as_tensor(timestep, device=sample.device)
        if t.dim() > 0 and t.numel() > 1 and not bool((t == t.reshape(-1)[0]).all()):
            raise ValueError("guided sampling needs one timestep for the whole batch")
        t = t.reshape(-1)[0]

        weight = self._cfg_weight()
        batch = sample.shape[0]
        halves = batch % 2 == 0 and torch.equal(sample[: batch // 2], sample[batch // 2 :])
        if weight is None and self.cfg_scale == "auto" and batch >= 2 and halves:
            raise ValueError(
                "the model is called on two identical halves, as classifier-free guidance does, but "
                "the pipeline does not say so (no do_classifier_free_guidance): pass "
                "guide_pipeline(..., cfg_scale=<the pipeline's guidance scale>), or cfg_scale=None "
                "if these are independent samples"
            )
        if weight is not None:
            if not halves:
                raise ValueError(
                    f"classifier-free guidance (cfg_scale {weight:g}) expects the model's batch to be "
                    "cat([x, x]) (unconditional half, then conditional half); got a batch of "
                    f"{batch} whose halves differ"
                )
            if float(getattr(self.scheduler_source, "guidance_rescale", 0.0) or 0.0) > 0 and not (
                self._warned_rescale
            ):
                self._warned_rescale = True
                warnings.warn(
                    "guidance_rescale > 0: the pipeline rescales the combined output after the "
                    "energy guidance's shift, which it rescales too; the guided output is exact "
                    "only with guidance_rescale=0",
                    stacklevel=2,
                )
            batch //= 2
        x = sample[:batch]
        cond = self._energy_condition(kwargs, batch, weight is not None, sample.device)
        double = self.guidance.estimator.model_derivatives == 2
        model = self.model
        record: dict[str, Tensor] = {}

        def bound(x_in: Tensor, _t: Timestep, _cond: Cond = None) -> Tensor:
            """The model of the B real samples (ε_cfg under CFG); ``_t`` equals ``timestep``."""
            inputs = torch.cat([x_in, x_in]) if weight is not None else x_in
            call_args = [timestep, *args] if timestep_positional else list(args)
            call_kwargs = dict(kwargs) if timestep_positional else {**kwargs, "timestep": timestep}
            if sample_key is None:
                call_args.insert(0, inputs)
            else:
                call_kwargs[sample_key] = inputs
            with double_backward_attention(double):
                out = model(*call_args, **call_kwargs, return_dict=False)[0]
            if weight is None:
                return out
            uncond, conditional = out.chunk(2)
            record["uncond"], record["cond"] = uncond.detach(), conditional.detach()
            return uncond + weight * (conditional - uncond)

        source = self.scheduler_source
        scheduler = self.guidance.scheduler if source is None else source.scheduler
        guidance = self.guidance.replace(scheduler=scheduler, model=bound)
        with torch.enable_grad():
            out, info = guidance.guided_model_output(x, t, cond, return_info=True)
        self.last_info = StepInfo(*(v.detach() for v in info))
        out = out.detach()
        if weight is not None:  # halves whose combination u + w·(c − u) is the guided output
            uncond, conditional = record["uncond"].float(), record["cond"].float()
            shift = out.float() - (uncond + weight * (conditional - uncond))
            out = torch.cat([uncond + shift, conditional + shift])
        out = out.to(sample.dtype)
        return GuidedModelOutput(sample=out) if return_dict else (out,)


@contextmanager
def guide_pipeline(
    pipe: Any,  # a DiffusionPipeline (diffusers' top-level names are placeholders to type checkers)
    energy: Energy | None = None,
    beta: float | None = None,
    *,
    attribute: str = "unet",
    cfg_scale: float | str | None = "auto",
    condition: str | Tensor | Sequence[Any] | None = None,
    **options: Any,
) -> Iterator[GuidedModel]:
    """Within the block, ``pipe`` samples its model guided toward q·exp(-β·E); afterwards it is as
    it was.

    The guidance is ``AnalyticEnergyGuidance(pipe.scheduler, model, energy, beta, **options)``
    with ``model = getattr(pipe, attribute)`` (``options``: ``estimator``, ``rescale``, ``scale``,
    ``allow_clipping``, the closed form's ``variance`` ...), evaluated with the arguments the
    pipeline gives its model, and reading noise levels from ``pipe.scheduler`` at every call. The
    pipeline's config is not touched (the model is swapped without
    ``DiffusionPipeline.__setattr__``'s config update), so ``pipe.config`` and ``save_pretrained``
    never see the wrapper. Yields the :class:`GuidedModel`.

    Args:
        energy, beta: E(x0[, cond]) -> (B,), lower is better, and β ≥ 0 (or ``estimator=``).
        attribute: the pipeline's model attribute (``"transformer"`` for DiT pipelines).
        cfg_scale: classifier-free guidance. ``"auto"`` reads ``pipe.do_classifier_free_guidance``
            and ``pipe.guidance_scale`` at every model call (the Stable Diffusion family); a number
            w: every model call is a CFG batch ``cat([x, x])`` combined as ε_u + w·(ε_c − ε_u);
            None: every call is a batch of independent samples. Under CFG the energy sees the B
            real samples and the guidance applies to the combined output (module docstring).
        condition: what the energy gets as ``energy(x0, cond)``: None (``energy(x0)``), the name of
            a model argument (``"encoder_hidden_states"``: its conditional half under CFG), or a
            tensor or list with one entry per sample or per prompt.

    Example::

        with guide_pipeline(pipe, energy, beta=1.0):
            images = pipe(batch_size=16, output_type="pt").images
    """
    original = getattr(pipe, attribute)
    if isinstance(original, GuidedModel):
        raise ValueError(f"pipe.{attribute} is already guided; nest guidance by composing energies instead")
    guidance = AnalyticEnergyGuidance(pipe.scheduler, original, energy, beta, **options)
    wrapper = GuidedModel(original, guidance, scheduler_source=pipe, cfg_scale=cfg_scale, condition=condition)
    object.__setattr__(pipe, attribute, wrapper)
    try:
        yield wrapper
    finally:
        object.__setattr__(pipe, attribute, original)
