"""The sampling loop: any supported diffusers scheduler, any (guided or plain) model function."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable
from typing import Literal, overload

import torch
from torch import Tensor

from .callables import SCHEDULER_STEP, Cond, NoiseModel, NonFiniteError, Timestep, call_model, check_finite
from .progress import progress_bar
from .protocols import Guided, StepInfo, StepRecord
from .schedulers import SchedulerAdapter, SchedulerLike, check_num_inference_steps

ON_NONFINITE = ("raise", "freeze", "drop")


def check_shape(shape: object) -> tuple[int, ...]:
    """``shape`` (B, ...) as a tuple of positive integers, with samples of at least one dimension,
    or a one-line error naming it."""
    if not isinstance(shape, tuple | list | torch.Size) or len(shape) < 2:
        raise ValueError(
            f"shape must be (B, ...), a batch size and a sample shape of at least one dimension, got "
            f"{shape!r}"
        )
    if not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and int(n) >= 1 for n in shape):
        raise ValueError(f"shape must hold positive integers, got {shape!r}")
    return tuple(int(n) for n in shape)


@overload
def sample(
    scheduler: SchedulerLike,
    model: NoiseModel | Guided,
    shape: tuple[int, ...],
    *,
    cond: Cond = None,
    num_inference_steps: int = 50,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    callback: Callable[[StepRecord], None] | None = None,
    progress: bool = False,
    on_nonfinite: str = "raise",
    return_mask: Literal[False] = False,
) -> Tensor: ...


@overload
def sample(
    scheduler: SchedulerLike,
    model: NoiseModel | Guided,
    shape: tuple[int, ...],
    *,
    cond: Cond = None,
    num_inference_steps: int = 50,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    callback: Callable[[StepRecord], None] | None = None,
    progress: bool = False,
    on_nonfinite: str = "raise",
    return_mask: Literal[True],
) -> tuple[Tensor, Tensor]: ...


@overload
def sample(
    scheduler: SchedulerLike,
    model: NoiseModel | Guided,
    shape: tuple[int, ...],
    *,
    cond: Cond = None,
    num_inference_steps: int = 50,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    callback: Callable[[StepRecord], None] | None = None,
    progress: bool = False,
    on_nonfinite: str = "raise",
    return_mask: bool,
) -> Tensor | tuple[Tensor, Tensor]: ...


def sample(
    scheduler: SchedulerLike,
    model: NoiseModel | Guided,
    shape: tuple[int, ...],
    *,
    cond: Cond = None,
    num_inference_steps: int = 50,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    callback: Callable[[StepRecord], None] | None = None,
    progress: bool = False,
    on_nonfinite: str = "raise",
    return_mask: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Run ``scheduler`` from its initial noise for ``num_inference_steps`` steps of ``model``.

    ``model(x_t, t[, cond])`` follows :mod:`energy_guidance.callables`: a noise model, or a guided
    one (:class:`~energy_guidance.protocols.Guided`, e.g. an
    :class:`~energy_guidance.AnalyticEnergyGuidance`, which must be built on ``scheduler``).
    ``x_t`` is the model input (``scheduler.scale_model_input`` applied). The loop makes
    one model evaluation per entry of ``scheduler.timesteps``, so schedulers that evaluate twice
    per step (Heun, KDPM2, DPM-Solver SDE; their timesteps repeat or interleave) and PNDM's
    warm-up are guided at every evaluation. ``callback``
    receives a :class:`~energy_guidance.protocols.StepRecord` (a dict: ``step``, ``timestep``,
    ``sample``, the scheduler's state after the step, and, when guided, ``x0_hat`` and
    ``guidance_norm``). Sampling is synchronous: one
    timestep for the whole batch, as diffusers' ``step`` requires. The scheduler's own x̂0
    clipping applies after guidance: ``clip_sample`` (DDPM, DDIM) or ``thresholding`` (DPM-Solver,
    UniPC, DEIS; with ``sample_max_value=1`` it clips to [-1, 1]), also for (B, d) vectors;
    guided DDIM steps with ``use_clipped_model_output=True``, so that clipping never reverses
    the guidance. ``device``: of the samples (default: ``cond``'s when it is a tensor, else the
    CPU); the initial noise is drawn on the generator's device and moved, so a seed gives the
    same samples on any device up to the device's arithmetic.
    With a ``generator``, DPM-Solver SDE's Brownian noise is seeded from it (unless the scheduler
    has its own ``noise_sampler_seed``), so that runs reproduce like every other scheduler's.

    Non-finite values (NaN or inf) in the model output, the energy, its gradient, the
    intermediate energy or its gradient, the guided output or the scheduler's new state raise a
    :class:`~energy_guidance.callables.NonFiniteError` naming the source, the step, the timestep
    and how many samples are affected (``on_nonfinite="raise"``, the default). With
    ``on_nonfinite="freeze"`` the affected samples instead keep their last finite state (the
    scheduler's state before that step, not denoised further; the model and guidance are no
    longer evaluated for them) and the others go on; with ``"drop"`` they are returned as NaN
    rows. Either way a ``RuntimeWarning`` names each event, the callback's dict gains
    ``nonfinite`` (B,), and ``return_mask=True`` returns ``(samples, nonfinite)`` with the (B,)
    mask of the frozen or dropped samples.
    """
    shape = check_shape(shape)
    num_inference_steps = check_num_inference_steps(scheduler, num_inference_steps)
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}")
    guided = isinstance(model, Guided)
    if isinstance(model, Guided) and model.scheduler is not scheduler:
        raise ValueError(
            "model is guided on another scheduler than `scheduler`: build the guidance on the scheduler "
            "you sample with (or guidance.replace(scheduler=scheduler))"
        )
    if device is None and isinstance(cond, torch.Tensor):
        device = cond.device
    adapter = SchedulerAdapter(scheduler)
    x = adapter.start(num_inference_steps, shape, generator, device, dtype)  # resets multistep state
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)  # not frozen or dropped
    evaluate = _Evaluation(model, guided, cond, on_nonfinite, active)
    restore_seed = adapter.seed_brownian_noise(generator)
    try:
        for i, t in enumerate(progress_bar(adapter.scheduler.timesteps, progress=progress, desc="sampling")):
            x_in = adapter.model_input(x, t)
            out, info = evaluate(x_in, t, i)
            before = x
            x = adapter.step(out, t, x, generator=generator, guided=guided)
            x = evaluate.check_state(x, before, t, i)
            if callback is not None:
                record = StepRecord(step=i, timestep=t, sample=x)
                if info is not None:
                    record["x0_hat"], record["guidance_norm"] = info.x0_hat, info.guidance_norm
                if on_nonfinite != "raise":
                    record["nonfinite"] = ~active
                callback(record)
    finally:
        restore_seed()
    if on_nonfinite == "drop" and not bool(active.all()):
        x = x.clone()
        x[~active] = torch.nan
    return (x, ~active) if return_mask else x


def condition_rows(cond: Cond, index: Tensor, batch: int) -> Cond:
    """``cond`` for the samples ``index`` only: per-sample tensors (leading size B), also inside
    lists, tuples and dicts, are indexed; anything else is shared by all samples."""
    if isinstance(cond, Tensor):
        return cond[index] if cond.dim() > 0 and cond.shape[0] == batch else cond
    if isinstance(cond, dict):
        return {key: condition_rows(value, index, batch) for key, value in cond.items()}
    if isinstance(cond, (list, tuple)):
        return type(cond)(condition_rows(value, index, batch) for value in cond)
    return cond


class _Evaluation:
    """One model evaluation per step, plain or guided, on the samples still active; traces
    non-finite values to their source and freezes or drops the affected samples on request."""

    def __init__(
        self, model: NoiseModel | Guided, guided: bool, cond: Cond, on_nonfinite: str, active: Tensor
    ) -> None:
        self.model, self.guided, self.cond = model, guided, cond
        self.mode, self.active = on_nonfinite, active

    def __call__(self, x_in: Tensor, t: Timestep, step: int) -> tuple[Tensor, StepInfo | None]:
        if self.mode == "raise":  # every sample stays active: no per-step host sync on the mask
            return self._evaluate(x_in, t, self.cond, step)
        batch = x_in.shape[0]
        while True:
            if not bool(self.active.any()):  # every sample frozen: the step only keeps shapes
                return torch.zeros_like(x_in), None
            if bool(self.active.all()):
                try:
                    return self._evaluate(x_in, t, self.cond, step)
                except NonFiniteError as error:
                    self._exclude(error.bad.to(self.active.device), error)
                    continue
            index = self.active.nonzero().squeeze(1)
            try:
                out, info = self._evaluate(x_in[index], t, condition_rows(self.cond, index, batch), step)
            except NonFiniteError as error:
                self._exclude(index[error.bad.to(self.active.device)], error)
                continue
            return self._widen(out, info, index, x_in)

    def _evaluate(self, x: Tensor, t: Timestep, cond: Cond, step: int) -> tuple[Tensor, StepInfo | None]:
        """The (guided) model output at x; a non-finite value raises with the step located."""
        try:
            if self.guided and isinstance(self.model, Guided):
                return self.model.guided_model_output(x, t, cond, return_info=True)
            return call_model(self.model, x, t, cond), None
        except NonFiniteError as error:
            error.step = step
            if error.timestep is None:
                error.timestep = t
            raise

    def _exclude(self, rows: Tensor, error: NonFiniteError) -> None:
        self.active[rows] = False
        what = "frozen at their last finite state" if self.mode == "freeze" else "dropped"
        warnings.warn(f"{error.count} samples {what}: {error}", RuntimeWarning, stacklevel=4)

    def _widen(
        self, out: Tensor, info: StepInfo | None, index: Tensor, x_in: Tensor
    ) -> tuple[Tensor, StepInfo | None]:
        """Outputs of the active samples placed in a full batch; inactive rows get a zero output
        (their state is put back after the step) and NaN in the step info."""
        full = torch.zeros(x_in.shape, dtype=out.dtype, device=out.device)
        full[index] = out
        if info is None:
            return full, None
        x0_hat = torch.full(x_in.shape, torch.nan, dtype=info.x0_hat.dtype, device=out.device)
        x0_hat[index] = info.x0_hat
        norm = torch.full((x_in.shape[0],), torch.nan, dtype=info.guidance_norm.dtype, device=out.device)
        norm[index] = info.guidance_norm
        return full, StepInfo(x0_hat=x0_hat, guidance_norm=norm)

    def check_state(self, x: Tensor, before: Tensor, t: Timestep, step: int) -> Tensor:
        """The scheduler's new state, checked for the active samples; inactive ones keep theirs."""
        if self.mode == "raise":
            try:
                check_finite(x, SCHEDULER_STEP)
            except NonFiniteError as error:
                error.step, error.timestep = step, t
                raise
            return x
        finite = torch.isfinite(x).reshape(len(x), -1).all(1)
        newly = self.active & ~finite
        if bool(newly.any()):
            self._exclude(newly, NonFiniteError(SCHEDULER_STEP, newly.cpu(), step=step, timestep=t))
        if bool(self.active.all()):
            return x
        keep = self.active.reshape((-1,) + (1,) * (x.dim() - 1))
        return torch.where(keep, x, before)
