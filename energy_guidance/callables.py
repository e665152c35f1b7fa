"""Calling user models and energies with one convention, and checking what they return.

Models:   ``model(x_t, timestep)`` or ``model(x_t, timestep, cond)`` -> Tensor shaped like x_t, or
          an object with ``.sample`` (diffusers models). ``timestep`` is passed as a tensor (B,).
Energies: ``energy(x0)`` or ``energy(x0, cond)`` -> Tensor (B,), lower is better.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

Energy = Callable[..., Tensor]


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
    model: Callable, x_t: Tensor, timestep: Tensor | float, cond=None, *, double_backward: bool = False
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
    if out.shape != x_t.shape:
        raise ValueError(f"model returned shape {tuple(out.shape)} for input {tuple(x_t.shape)}")
    return out


def call_energy(energy: Energy, x0: Tensor, cond=None) -> Tensor:
    """Evaluate ``energy`` on a batch x0 (B, ...) and check it returns finite values of shape (B,)."""
    value = energy(x0) if cond is None else energy(x0, cond)
    if not isinstance(value, Tensor):
        raise TypeError(f"energy must return a torch.Tensor of shape (B,), got {type(value).__name__}")
    batch = x0.shape[0]
    if value.shape != (batch,):
        raise ValueError(
            f"energy must return shape (B,) = ({batch},), one value per sample; got {tuple(value.shape)}"
        )
    bad = ~torch.isfinite(value)
    if bad.any():
        raise FloatingPointError(
            f"energy returned {int(bad.sum())} non-finite values (NaN or inf) out of {batch}"
        )
    return value


def energy_and_grad(
    energy: Energy, x0: Tensor, cond=None, create_graph: bool = False
) -> tuple[Tensor, Tensor]:
    """E(x0) (B,) and ∇E(x0) (B, ...), per sample (samples must not interact inside ``energy``).

    With ``create_graph`` the gradient stays differentiable (needed when x0 depends on x_t), and
    the energy runs with the math attention kernel (:func:`double_backward_attention`).
    """
    with torch.enable_grad():
        x = x0 if x0.requires_grad else x0.detach().requires_grad_(True)
        value = differentiable_energy(energy, x, cond, double_backward=create_graph)
        (grad,) = torch.autograd.grad(value.sum(), x, create_graph=create_graph)
    return value, grad


def differentiable_energy(energy: Energy, x0: Tensor, cond=None, *, double_backward: bool = False) -> Tensor:
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
    energy: Energy, x0: Tensor, cond=None, create_graph: bool = False
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
    if not create_graph:
        value, grad = value.detach(), grad.detach()
    return value, grad, hessian
