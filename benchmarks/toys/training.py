"""The learned estimators at equal training wall time: a timed pilot calibrates the steps to the
budget, and each trainer says what it trains on (with the set-up seconds its budget includes)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from energy_guidance import GaussianQuadrature, IntermediateEnergyNet, train_intermediate_energy
from energy_guidance.baselines import draw_support, train_contrastive_energy
from energy_guidance.classifier import train_classifier_energy
from energy_guidance.schedulers import add_noise, noise_level

if TYPE_CHECKING:
    from .config import Config

MAX_STEPS = 100_000  # a bound on the calibrated training steps
# A trainer: (ctx, β, cfg) -> (train(net, steps, seed), set-up seconds counted in the budget)
Train = Callable[[nn.Module, int, int], None]
Trainer = Callable[[dict, float, "Config"], tuple[Train, float]]


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def guidance_error(network, validation: dict) -> float:
    """Relative guidance error Σσ²‖∇E_Θ - ∇E_t‖² / Σσ²‖∇E_t‖² on noised target points."""
    x = validation["x_t"].clone().requires_grad_(True)
    value = network(x, validation["alpha"], validation["sigma"], None)
    (grad,) = torch.autograd.grad(value.sum(), x)
    s2 = validation["sigma"].double()[:, None] ** 2
    diff = (s2 * (grad.double() - validation["grad"]) ** 2).sum()
    return float(diff / (s2 * validation["grad"] ** 2).sum())


def make_validation(scheduler, target, weights, exact, n: int, gen: torch.Generator) -> dict:
    """n noised target points with the exact guidance gradient there (for :func:`guidance_error`)."""
    idx = torch.multinomial(weights.double(), n, replacement=True, generator=gen)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=gen)
    alpha, sigma = (c.float() for c in noise_level(scheduler, t))
    x_t = add_noise(target[idx], torch.randn(n, 2, generator=gen), alpha, sigma)
    x = x_t.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(exact(x, alpha, sigma).sum(), x)
    return {"x_t": x_t, "alpha": alpha, "sigma": sigma, "grad": grad.double()}


def train_on_budget(
    make_net: Callable[[], nn.Module], train: Train, budget: float, pilot: int
) -> tuple[nn.Module, dict]:
    """Train ``make_net()`` with ``train(net, steps, seed)`` for as many steps as fit ``budget`` s.

    A pilot on throw-away networks times the set-up (steps=0) and ``pilot`` steps; the real run
    gets floor((budget - set-up)/seconds-per-step) steps (at least 1) and its full schedule.
    """
    (_, setup_s) = timed(lambda: train(make_net(), 0, 0))
    (_, pilot_s) = timed(lambda: train(make_net(), pilot, 0))
    # at least a fifth of the pilot is its steps: timing noise on a shared machine cannot make a
    # step look free (and the step count explode)
    per_step = max(pilot_s - setup_s, 0.2 * pilot_s) / pilot
    steps = min(max(int((budget - setup_s) / per_step), 1), MAX_STEPS)
    net = make_net()
    (_, train_s) = timed(lambda: train(net, steps, 1))
    return net.eval(), {"steps": steps, "train_s": train_s, "per_step_ms": 1e3 * per_step}


def train_learned(
    trainer: Trainer, ctx: dict, beta: float, cfg: Config
) -> tuple[IntermediateEnergyNet, dict]:
    """An :class:`IntermediateEnergyNet` trained by ``trainer`` at the equal wall-time budget; its
    training record (steps, seconds, the guidance error on ``ctx["validation"]``)."""

    def make_net() -> IntermediateEnergyNet:
        torch.manual_seed(cfg.seed)
        return IntermediateEnergyNet(2, hidden=cfg.hidden, beta=beta)

    train, extra_s = trainer(ctx, beta, cfg)
    net, record = train_on_budget(make_net, train, cfg.train_seconds - extra_s, cfg.pilot_steps)
    record["train_s"] += extra_s
    record["setup_s"] = extra_s
    record["guidance_err"] = guidance_error(net, ctx["validation"])
    return net, record


def regression(variance, order: int = 1, quadrature: bool = False) -> Trainer:
    """Regression on the closed form's E_t at x̄ = x0 (``variance``, ``order``), or with
    ``quadrature`` on the quadrature (7)'s E_t at x̂0(x_t) (3 points per dimension)."""

    def trainer(ctx: dict, beta: float, cfg: Config) -> tuple[Train, float]:
        # the variance table is part of the data_var targets' cost
        extra_s = ctx["table_s"] if variance == "data_var" else 0.0
        targets = GaussianQuadrature(ctx["energy"], beta, variance, ctx["table"]) if quadrature else None

        def train(net, steps, seed):
            train_intermediate_energy(
                net,
                ctx["scheduler"],
                ctx["model"],
                ctx["energy"],
                ctx["data"],
                variance=variance,
                variance_table=ctx["table"],
                order=order,
                targets=targets,
                steps=steps,
                batch_size=cfg.batch_size,
                generator=torch.Generator().manual_seed(cfg.seed + seed),
                progress=False,
            )

        return train, extra_s

    return trainer


def contrastive(ctx: dict, beta: float, cfg: Config) -> tuple[Train, float]:
    """QGPO's contrastive loss on a support pool of model samples (drawn inside the budget)."""
    support, support_s = timed(
        lambda: draw_support(
            ctx["scheduler"],
            ctx["model"],
            (2,),
            cfg.num_support,
            num_groups=max(cfg.support_pool // cfg.num_support, 1),
            num_inference_steps=cfg.num_inference_steps,
            generator=torch.Generator().manual_seed(cfg.seed + 7),
        )
    )

    def train(net, steps, seed):
        train_contrastive_energy(
            net,
            ctx["scheduler"],
            ctx["energy"],
            support,
            steps=steps,
            batch_size=max(cfg.batch_size // cfg.num_support, 1),
            generator=torch.Generator().manual_seed(cfg.seed + seed),
            progress=False,
        )

    return train, support_s


def classifier(ctx: dict, beta: float, cfg: Config) -> tuple[Train, float]:
    """A classifier of the noised target (data resampled by softmax(-β·E)) against the noised data."""

    def train(net, steps, seed):
        train_classifier_energy(
            net,
            ctx["scheduler"],
            ctx["energy"],
            ctx["data"],
            steps=steps,
            batch_size=cfg.batch_size,
            generator=torch.Generator().manual_seed(cfg.seed + seed),
            progress=False,
        )

    return train, 0.0
