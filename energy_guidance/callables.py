"""Calling user models and energies with one convention, and checking what they return.

Models:   ``model(x_t, timestep)`` or ``model(x_t, timestep, cond)`` -> Tensor shaped like x_t, or
          an object with ``.sample`` (diffusers models). ``timestep`` is passed as a tensor (B,).
Energies: ``energy(x0)`` or ``energy(x0, cond)`` -> Tensor (B,), lower is better.
Conditions: ``cond`` is passed to both as given (:data:`Cond`).

The type aliases :data:`NoiseModel`, :data:`Energy`, :data:`Cond` and :data:`Timestep` name these in
signatures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeAlias

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

NoiseModel: TypeAlias = Callable[..., Any]
"""``model(x_t, timestep)`` or ``model(x_t, timestep, cond)``: a Tensor shaped like x_t in the
scheduler's prediction type, an object with ``.sample`` (diffusers models) or a tuple whose first
item is it (:func:`call_model` reads all three)."""

Energy: TypeAlias = Callable[..., Tensor]
"""``energy(x0)`` or ``energy(x0, cond)`` -> (B,), lower is better (:func:`call_energy`)."""

Timestep: TypeAlias = Tensor | float
"""A timestep of the scheduler's schedule: a number, or a tensor of one (or of one per sample)."""

Cond: TypeAlias = object
"""A condition, passed unchanged to the model and the energy (None: called without one). A tensor
whose leading size is the batch is per-sample (the samplers index and repeat its rows, also inside
lists, tuples and dicts); anything else is shared by all samples. Estimators that evaluate the
energy on stacked draws, and :func:`~energy_guidance.smc_sample`, need a tensor or None."""

# Where non-finite values can arise in a guided step, in the order they are computed.
MODEL_OUTPUT = "model output"
ENERGY_VALUE = "energy value E(x̂0)"
ENERGY_GRADIENT = "energy gradient ∇E(x̂0)"
ENERGY_HESSIAN = "energy Hessian ∇²E(x̂0)"
GUIDED_OUTPUT = "guided model output"
SCHEDULER_STEP = "scheduler step (the sampler's new state)"

_HINTS = {
    MODEL_OUTPUT: "the model itself returned them (its weights, its input's scale or dtype)",
    ENERGY_VALUE: "the energy itself returned them at the model's x̂0",
    ENERGY_GRADIENT: "E(x̂0) was finite but its gradient is not (e.g. sqrt, norm or log at 0)",
    GUIDED_OUTPUT: (
        "ε̂, E_t and ∇E_t were finite, so the guidance term σ·∇E_t (times scale) or its conversion "
        "to the prediction type overflowed: lower beta or scale, or use rescale=True"
    ),
    SCHEDULER_STEP: "the model output was finite, so the scheduler's update overflowed",
}


# the dtypes whose finiteness check_finite reads from their sum first (others: elementwise)
_SUMMED = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128)


class NonFiniteError(FloatingPointError):
    """Non-finite values (NaN or inf) traced to their source.

    ``source`` names what produced them (:data:`MODEL_OUTPUT`, :data:`ENERGY_VALUE`,
    :data:`ENERGY_GRADIENT`, the intermediate energy or its gradient, :data:`GUIDED_OUTPUT`,
    :data:`SCHEDULER_STEP`), ``bad`` (B,) marks the affected samples, and ``step`` and
    ``timestep`` say where (filled in by the sampling loop and the guidance as it propagates).
    """

    def __init__(self, source: str, bad: Tensor, detail: str = "", *, step=None, timestep=None) -> None:
        super().__init__(source)
        self.source = source
        self.bad = bad
        self.detail = detail
        self.step = step
        self.timestep = timestep

    @property
    def count(self) -> int:
        """How many samples are affected."""
        return int(self.bad.sum())

    def __str__(self) -> str:
        where = []
        if self.step is not None:
            where.append(f"step {self.step}")
        if self.timestep is not None:
            where.append(f"timestep {float(self.timestep):g}")
        at = f" at {', '.join(where)}" if where else ""
        count = f"{self.count} non-finite values (NaN or inf) out of {len(self.bad)} samples"
        message = f"{self.source}: {count}{at}"
        return f"{message}; {self.detail}" if self.detail else message


def check_finite(
    value: Tensor,
    source: str,
    *,
    input_dtype: torch.dtype | None = None,
    detail: str = "",
    timestep=None,
) -> None:
    """Raise :class:`NonFiniteError` naming ``source`` and the affected samples (rows of ``value``)
    unless ``value`` is finite. An inf where the input (``input_dtype``) or the value is half
    precision is reported as a float16 (or bfloat16) overflow."""
    value = value.detach()
    # the fast path: a sum is finite only if every term is (NaN and ±inf propagate), and one
    # reduction costs a tenth of the elementwise test; a sum that overflowed takes the full test
    if value.dtype in _SUMMED and bool(torch.isfinite(value.sum())):
        return
    finite = torch.isfinite(value)
    if bool(finite.all()):
        return
    bad = ~finite.reshape(len(value), -1).all(1) if value.dim() else ~finite.reshape(1)
    half = next((d for d in (input_dtype, value.dtype) if d in (torch.float16, torch.bfloat16)), None)
    notes = [detail or _HINTS.get(source, "")]
    if half is not None and bool(torch.isinf(value).any()):
        name = str(half).removeprefix("torch.")
        largest = torch.finfo(half).max
        overflow = f"{name} overflow: values beyond ±{largest:g} became inf; compute in float32"
        notes.insert(0, f"{overflow} (e.g. on x.float())")
    raise NonFiniteError(source, bad, "; ".join(n for n in notes if n), timestep=timestep)


@contextmanager
def located(timestep: Timestep) -> Iterator[None]:
    """Adds ``timestep`` to a :class:`NonFiniteError` raised inside (from the model or energy)."""
    try:
        yield
    except NonFiniteError as error:
        if error.timestep is None:
            error.timestep = timestep
        raise


def estimator_sources(estimator: object, through_model: bool) -> tuple[str, str, str, str]:
    """(source, hint) of an intermediate-energy estimator's value E_t and of its gradient
    ∇_{x_t}E_t, for :func:`check_finite`."""
    name = type(estimator).__name__
    value = f"intermediate energy E_t of the estimator {name}"
    value_hint = "the estimator returned them from finite inputs (model output, energy and its gradient)"
    path = f"the model and {name}" if through_model else name
    gradient = f"gradient ∇E_t with respect to x_t (backward pass through {path})"
    gradient_hint = f"E_t was finite: differentiating {path} produced them (e.g. the model's Jacobian)"
    return value, value_hint, gradient, gradient_hint


def double_backward_attention(enabled: bool = True) -> AbstractContextManager:
    """The context for the forward pass of a function whose gradient will itself be differentiated.

    The fused scaled-dot-product attention kernels (flash, memory-efficient, cuDNN; on CPU the flash
    kernel) have a backward but no double backward, so a model or energy with attention (a VAE
    decoder, CLIP, a ViT) fails with "derivative for ..._backward is not implemented" once its
    gradient is differentiated. The math kernel is plain differentiable operations (any order).
    The choice is made at the forward pass, so this wraps exactly the calls whose graph will be
    differentiated twice, and nothing else (the fused kernels stay for first derivatives).
    """
    return sdpa_kernel(SDPBackend.MATH) if enabled else nullcontext()


def call_model(
    model: NoiseModel,
    x_t: Tensor,
    timestep: Timestep,
    cond: Cond = None,
    *,
    double_backward: bool = False,
) -> Tensor:
    """Evaluate ``model`` at x_t (B, ...) and a shared or per-sample timestep.

    ``double_backward``: the output's gradient will be differentiated (the training-free Jacobian
    variance with autograd), so attention runs on the math kernel (:func:`double_backward_attention`).
    """
    t = torch.as_tensor(timestep, device=x_t.device)
    if t.dim() == 0:
        t = t.expand(x_t.shape[0])
    with double_backward_attention(double_backward):
        out = model(x_t, t) if cond is None else model(x_t, t, cond)
    out = getattr(out, "sample", out)
    if isinstance(out, tuple):
        out = out[0]
    if not isinstance(out, Tensor):
        raise TypeError(
            f"the model must return a tensor shaped like its input x_t {tuple(x_t.shape)} (or an output "
            f"with .sample), got {type(out).__name__}"
        )
    if out.shape != x_t.shape:
        raise ValueError(f"model returned shape {tuple(out.shape)} for input {tuple(x_t.shape)}")
    check_finite(out, MODEL_OUTPUT, input_dtype=x_t.dtype)
    return out


def call_energy(energy: Energy, x0: Tensor, cond: Cond = None) -> Tensor:
    """Evaluate ``energy`` on a batch x0 (B, ...) and check it returns finite values of shape (B,)."""
    value = energy(x0) if cond is None else energy(x0, cond)
    if not isinstance(value, Tensor):
        raise TypeError(f"energy must return a torch.Tensor of shape (B,), got {type(value).__name__}")
    batch = x0.shape[0]
    if value.shape != (batch,):
        raise ValueError(
            f"energy must return shape (B,) = ({batch},), one value per sample; got {tuple(value.shape)}"
        )
    check_finite(value, ENERGY_VALUE, input_dtype=x0.dtype)
    return value


def energies_or_inf(energy: Energy, x0: Tensor, cond: Cond = None) -> Tensor:
    """E(x0) (B,) in float64 without autograd, checked for type and shape as by
    :func:`call_energy`, except that a value that is not finite becomes +inf: a sample outside
    the energy's domain, which weights exp(-β·E) give weight 0."""
    with torch.no_grad():
        try:
            value = call_energy(energy, x0, cond)
        except NonFiniteError:  # checked for type and shape; only some values are not finite
            value = energy(x0) if cond is None else energy(x0, cond)
    value = value.detach().to(torch.float64)
    return torch.where(torch.isfinite(value), value, torch.full_like(value, math.inf))


def energy_and_grad(
    energy: Energy, x0: Tensor, cond: Cond = None, create_graph: bool = False
) -> tuple[Tensor, Tensor]:
    """E(x0) (B,) and ∇E(x0) (B, ...), per sample (samples must not interact inside ``energy``).

    With ``create_graph`` the gradient stays differentiable (needed when x0 depends on x_t), and
    the energy runs with the math attention kernel (:func:`double_backward_attention`).
    """
    with torch.enable_grad():
        x = x0 if x0.requires_grad else x0.detach().requires_grad_(True)
        value = differentiable_energy(energy, x, cond, double_backward=create_graph)
        (grad,) = torch.autograd.grad(value.sum(), x, create_graph=create_graph)
    check_finite(grad, ENERGY_GRADIENT, input_dtype=x0.dtype)
    return value, grad


def differentiable_energy(
    energy: Energy, x0: Tensor, cond: Cond = None, *, double_backward: bool = False
) -> Tensor:
    """E(x0) (B,) in x0's graph (``x0`` requires grad), checked by :func:`call_energy` and required
    to depend differentiably on x0. ``double_backward``: its gradient will be differentiated, so
    attention runs on the math kernel."""
    with double_backward_attention(double_backward):
        value = call_energy(energy, x0, cond)
    if not value.requires_grad:
        raise TypeError(
            "the energy's output does not depend differentiably on x0 (did it detach, call "
            ".item() or go through numpy?); guidance needs ∇E, so write it in torch operations"
        )
    return value


def energy_grad_hessian(
    energy: Energy, x0: Tensor, cond: Cond = None, create_graph: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """E(x0) (B,), ∇E(x0) (B, ...) and the per-sample Hessian ∇²E(x0) (B, d, d), d the flattened
    sample size, from d Hessian-vector products (samples must not interact inside ``energy``)."""
    with torch.enable_grad():
        x = x0 if x0.requires_grad else x0.detach().requires_grad_(True)
        value, grad = energy_and_grad(energy, x, cond, create_graph=True)  # math attention kernel
        flat = grad.reshape(len(grad), -1)
        d = flat.shape[1]
        if not flat.requires_grad:  # ∇E does not depend on x0: a linear energy has no curvature
            hessian = torch.zeros(len(grad), d, d, dtype=flat.dtype, device=flat.device)
        else:
            rows = []
            for i in range(d):
                (row,) = torch.autograd.grad(
                    flat[:, i].sum(), x, create_graph=create_graph, retain_graph=True, allow_unused=True
                )
                rows.append(torch.zeros_like(x) if row is None else row)
            hessian = torch.stack([r.reshape(len(grad), -1) for r in rows], dim=1)
    check_finite(hessian, ENERGY_HESSIAN, input_dtype=x0.dtype)
    if not create_graph:
        value, grad = value.detach(), grad.detach()
    return value, grad, hessian


def check_beta(beta: object) -> float:
    """β as a float, or a one-line error naming it."""
    if isinstance(beta, torch.Tensor) and beta.numel() == 1:
        beta = beta.item()
    if isinstance(beta, bool) or not isinstance(beta, int | float):
        raise TypeError(
            f"beta must be a number (an inverse temperature >= 0), got {type(beta).__name__} {beta!r}"
        )
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be finite and >= 0 (lower energy is better), got {beta}")
    return float(beta)
