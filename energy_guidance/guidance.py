"""AnalyticEnergyGuidance: steer a diffusion model toward p(x) ∝ q(x)·exp(-β·E(x)).

The guided marginal's score is the model's plus -∇E_t (see :mod:`energy_guidance.closed_form`),
which in noise-prediction form is

    ε̃(x_t) = ε̂(x_t) + scale · σ_t · ∇_{x_t} E_t(x_t).                         (2)

ε̃ is converted back to the scheduler's prediction type and handed to ``scheduler.step``
unchanged, so any supported scheduler integrates the guided model. With ``rescale=True`` the
guided score is rescaled per sample to the norm of the unguided one (AEPO's guidance rescale):
ε̃ ← ε̃ · ‖ε̂‖ / ‖ε̃‖.

Two modes:
- training-free (``network=None``): E_t is the closed form (1) with x̄ = x̂0, differentiated
  through the noise model, the energy and the variance estimate with autograd;
- amortized (``network=`` an :class:`~energy_guidance.amortized.IntermediateEnergyNet`):
  E_t is the network, regressed on closed-form targets; only the small network is differentiated.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .callables import Energy, call_model, energy_and_grad
from .closed_form import analytic_intermediate_energy
from .posterior import VarianceTable, check_variance, variance_quadratic
from .sampling import StepInfo, sample
from .schedules import from_eps_x0, noise_level, prediction_type, to_eps_x0

# Below this α the model input is pure noise: E_t no longer depends on x_t and the
# ε -> x0 conversion divides by ~0 (only the first step of a flow-matching schedule).
_MIN_ALPHA = 1e-6


class AnalyticEnergyGuidance:
    """Energy guidance for a diffusers scheduler and a noise/velocity/sample-prediction model.

    Args:
        scheduler: a supported diffusers scheduler (:data:`SUPPORTED_SCHEDULERS`).
        model: ``model(x_t, t)`` or ``model(x_t, t, cond)``; output in the scheduler's
            prediction type (tensor, or object with ``.sample``).
        energy: ``energy(x0)`` or ``energy(x0, cond)`` -> (B,), lower is better, differentiable.
        beta: inverse temperature β ≥ 0 of the target q(x)·exp(-β·E(x)).
        rescale: rescale the guided score to the unguided score's norm, per sample.
        variance: posterior variance estimator for the training-free closed form (see
            :mod:`energy_guidance.posterior`); ``"jacobian"`` needs no table.
        variance_table: needed by the table estimators ``"eps_norm"``, ``"data_var"``, ``"diagonal"``.
        network: an intermediate-energy estimator ``network(x_t, alpha, sigma, cond) -> (B,)``
            (an :class:`~energy_guidance.amortized.IntermediateEnergyNet`, or an exact one);
            switches to amortized mode, where ``energy`` is not needed.
        scale: multiplies the guidance term of (2); 1 is the exact target.
    """

    def __init__(
        self,
        scheduler,
        model: Callable,
        energy: Energy | None,
        beta: float,
        *,
        rescale: bool = False,
        variance: str | float = "jacobian",
        variance_table: VarianceTable | None = None,
        network: torch.nn.Module | None = None,
        scale: float = 1.0,
    ) -> None:
        if beta < 0:
            raise ValueError(f"beta must be >= 0 (lower energy is better), got {beta}")
        if energy is None and network is None:
            raise ValueError("give an energy (training-free mode) or a network (amortized mode)")
        self.scheduler = scheduler
        self.model = model
        self.energy = energy
        self.beta = float(beta)
        self.rescale = rescale
        self.variance = variance
        self.variance_table = variance_table
        self.network = network
        self.scale = float(scale)
        self.prediction_type = prediction_type(scheduler)  # also rejects unsupported schedulers
        if network is None:
            check_variance(variance, variance_table)
        if network is not None and getattr(network, "beta", beta) != beta:
            raise ValueError(
                f"the network was trained for beta={network.beta}, not beta={beta}; "
                "retrain it or use `scale` to strengthen or weaken its guidance"
            )

    def replace(self, **changes) -> AnalyticEnergyGuidance:
        """A new guidance with some constructor arguments changed, e.g. ``scheduler=`` or ``model=``."""
        fields = {
            "scheduler": self.scheduler,
            "model": self.model,
            "energy": self.energy,
            "beta": self.beta,
            "rescale": self.rescale,
            "variance": self.variance,
            "variance_table": self.variance_table,
            "network": self.network,
            "scale": self.scale,
        }
        unknown = set(changes) - set(fields)
        if unknown:
            raise TypeError(f"unknown arguments {sorted(unknown)}; expected some of {sorted(fields)}")
        return AnalyticEnergyGuidance(**{**fields, **changes})

    @property
    def amortized(self) -> bool:
        return self.network is not None

    def _levels(self, timestep, batch: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample (α, σ) of shape (B,), on ``like``'s device and dtype."""
        alpha, sigma = noise_level(self.scheduler, timestep)
        return (
            alpha.to(like.device, like.dtype).expand(batch),
            sigma.to(like.device, like.dtype).expand(batch),
        )

    def _closed_form(self, x_t, eps_hat, x0_hat, alpha, sigma, cond, create_graph) -> Tensor:
        """Training-free E_t (B,), equation (1) at x̄ = x̂0; ε̂ and x̂0 must be in x_t's graph."""
        energy_bar, grad_bar = energy_and_grad(self.energy, x0_hat, cond, create_graph=True)
        quad = variance_quadratic(
            grad_bar,
            self.variance,
            alpha,
            sigma,
            table=self.variance_table,
            eps_hat=eps_hat,
            x_t=x_t,
            create_graph=create_graph,
        )
        return analytic_intermediate_energy(self.beta, energy_bar, grad_bar, quad)

    def intermediate_energy(self, x_t: Tensor, timestep, cond=None) -> Tensor:
        """E_t(x_t) = -L_t (B,) as this guidance computes it (closed form, or the network)."""
        alpha, sigma = self._levels(timestep, x_t.shape[0], x_t)
        if self.amortized:
            with torch.no_grad():
                return self.network(x_t, alpha, sigma, cond)
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            out = call_model(self.model, x, timestep, cond)
            eps_hat, x0_hat = to_eps_x0(out, x, alpha, sigma, self.prediction_type)
            return self._closed_form(x, eps_hat, x0_hat, alpha, sigma, cond, create_graph=False).detach()

    def energy_gradient(self, x_t: Tensor, timestep, cond=None) -> Tensor:
        """∇_{x_t} E_t, with x_t's shape."""
        alpha, sigma = self._levels(timestep, x_t.shape[0], x_t)
        return self._gradient(x_t, timestep, alpha, sigma, cond)[0]

    def _gradient(self, x_t, timestep, alpha, sigma, cond) -> tuple[Tensor, Tensor, Tensor]:
        """(∇_{x_t} E_t, ε̂, x̂0) at x_t, all detached."""
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            if self.amortized:
                with torch.no_grad():
                    out = call_model(self.model, x_t, timestep, cond)
                    eps_hat, x0_hat = to_eps_x0(out, x_t, alpha, sigma, self.prediction_type)
                value = self.network(x, alpha, sigma, cond)
            else:
                out = call_model(self.model, x, timestep, cond)
                eps_hat, x0_hat = to_eps_x0(out, x, alpha, sigma, self.prediction_type)
                value = self._closed_form(x, eps_hat, x0_hat, alpha, sigma, cond, create_graph=True)
            (grad,) = torch.autograd.grad(value.sum(), x)
        return grad, eps_hat.detach(), x0_hat.detach()

    def guided_model_output(
        self, x_t: Tensor, timestep, cond=None, *, return_info: bool = False
    ) -> Tensor | tuple[Tensor, StepInfo]:
        """Equation (2) for one step, returned in the scheduler's prediction type.

        ``x_t`` is the model input (after ``scheduler.scale_model_input``). With ``return_info``
        also returns a :class:`StepInfo` (x̂0 and the guidance norm) for callbacks.
        """
        alpha, sigma = self._levels(timestep, x_t.shape[0], x_t)
        if float(alpha.min()) < _MIN_ALPHA:  # pure noise: the exact guidance vanishes
            out = call_model(self.model, x_t, timestep, cond)
            if not return_info:
                return out
            x0_hat = to_eps_x0(out, x_t, alpha, sigma, self.prediction_type)[1]
            return out, StepInfo(x0_hat=x0_hat, guidance_norm=torch.zeros(len(x_t), device=x_t.device))
        grad, eps_hat, x0_hat = self._gradient(x_t, timestep, alpha, sigma, cond)
        shape = (-1,) + (1,) * (x_t.dim() - 1)
        eps = eps_hat + self.scale * sigma.reshape(shape) * grad
        if self.rescale:
            norm = eps_hat.flatten(1).norm(dim=1) / eps.flatten(1).norm(dim=1).clamp_min(1e-12)
            eps = eps * norm.reshape(shape)
        delta = eps - eps_hat
        x0 = x0_hat - (sigma / alpha).reshape(shape) * delta
        guided = from_eps_x0(eps, x0, alpha, sigma, self.prediction_type)
        if not return_info:
            return guided
        return guided, StepInfo(x0_hat=x0, guidance_norm=delta.flatten(1).norm(dim=1))

    def sample(
        self,
        shape: tuple[int, ...],
        cond=None,
        num_inference_steps: int = 50,
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        callback: Callable[[dict], None] | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Draw ``shape`` samples of the guided model with this guidance's scheduler."""
        return sample(
            self.scheduler,
            self.model,
            shape,
            cond=cond,
            guidance=self,
            num_inference_steps=num_inference_steps,
            generator=generator,
            device=device,
            dtype=dtype,
            callback=callback,
            progress=progress,
        )
