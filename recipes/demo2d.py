"""Guided sampling on a 2-D toy: ``python -m energy_guidance.recipes.demo2d``.

Data: a ring of 8 Gaussians, modelled by its exact noise prediction. Energy: a tilt
E(x) = wᵀx toward the lower left. The exact target q·exp(-β·E) is again a Gaussian mixture
(:meth:`GaussianMixture.tilted`). Prints the sliced Wasserstein-2 distance of each sampler to
the target and writes a PNG of unguided, guided and target samples. The ring's posterior
q(x0 | x_t) is multimodal at high noise, where AEPO's Gaussian approximation is inexact:
the demo shows how far each estimator gets, not a best case. Exact guidance (the mixture's
exact intermediate energy) shows what the sampler itself reaches.

Training-free rows: the paper's closed form (1) with the Jacobian variance ("AEPO paper form",
``variance="jacobian"``), and beside it the library's default estimator
(``AnalyticEnergyGuidance(scheduler, model, energy, beta)``: importance sampling of the Gaussian
posterior, :class:`~energy_guidance.importance.ImportanceTilt`; its time includes the one-off
calibration from the model's own samples).
"""

from __future__ import annotations

import argparse
import io
import math
import time
from pathlib import Path

import torch
from diffusers import DPMSolverMultistepScheduler

from energy_guidance import AnalyticEnergyGuidance, IntermediateEnergyNet, sample, train_intermediate_energy
from energy_guidance.baselines import dps_guidance
from energy_guidance.checkpoints import atomic_write
from energy_guidance.testing import GaussianMixture, GaussianMixtureIntermediateEnergy, sliced_wasserstein

from . import cli
from .plots import pyplot


def ring_of_gaussians(k: int = 8, radius: float = 3.0, std: float = 0.35) -> GaussianMixture:
    angles = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture(torch.ones(k), means, torch.full((k, 2), std**2))


def linear_energy(w: torch.Tensor):
    def energy(x: torch.Tensor) -> torch.Tensor:
        return x @ w.to(x)

    return energy


def main(argv: list[str] | None = None) -> dict[str, float]:
    """The command line (one-line errors, ``--log-level`` / ``-q``: :mod:`.cli`)."""
    return cli.command("energy_guidance.recipes.demo2d", argv, _main)


def _main(argv: list[str]) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        prog="python -m energy_guidance.recipes.demo2d",
        description=__doc__,
        epilog=cli.LOGGING_HELP,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=25, help="DPM-Solver++ steps")
    parser.add_argument("--train-steps", type=int, default=1500, help="amortized network steps")
    parser.add_argument("--out", type=Path, default=Path("outputs/demo.png"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cli.check_range("beta", args.beta, 0)
    cli.check_range("samples", args.samples, 2, integer=True)
    cli.check_range("steps", args.steps, 1, 1000, integer=True)  # the scheduler's training steps
    cli.check_range("train_steps", args.train_steps, 1, integer=True)
    cli.check_range("seed", args.seed, 0, 2**32 - 1, integer=True)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    data = ring_of_gaussians()
    w = torch.tensor([1.0, 1.0]) / math.sqrt(2)
    energy = linear_energy(w)
    scheduler = DPMSolverMultistepScheduler()
    model = data.noise_model(scheduler)
    pool = data.sample(50_000, generator=gen)
    exact = data.tilted(w, args.beta)
    target = exact.sample(args.samples, generator=gen)

    def draw(guidance: AnalyticEnergyGuidance | None) -> torch.Tensor:
        g = torch.Generator().manual_seed(args.seed + 1)
        if guidance is None:
            return sample(scheduler, model, (args.samples, 2), num_inference_steps=args.steps, generator=g)
        return guidance.sample((args.samples, 2), num_inference_steps=args.steps, generator=g)

    results: dict[str, torch.Tensor] = {}
    timings: dict[str, float] = {}
    start = time.perf_counter()
    results["unguided"] = draw(None)
    timings["unguided"] = time.perf_counter() - start
    training_free = {
        "DPS-style (no variance term)": dps_guidance(scheduler, model, energy, args.beta),
        "AEPO paper form": AnalyticEnergyGuidance(scheduler, model, energy, args.beta, variance="jacobian"),
        "default (importance)": AnalyticEnergyGuidance(scheduler, model, energy, args.beta),
    }
    for name, guidance in training_free.items():
        start = time.perf_counter()
        results[name] = draw(guidance)
        timings[name] = time.perf_counter() - start
    exact_guidance = GaussianMixtureIntermediateEnergy(data, energy, args.beta)
    start = time.perf_counter()
    results["exact guidance"] = draw(
        AnalyticEnergyGuidance(scheduler, model, beta=args.beta, estimator=exact_guidance)
    )
    timings["exact guidance"] = time.perf_counter() - start
    net = IntermediateEnergyNet(2, beta=args.beta, hidden=128)
    start = time.perf_counter()
    train_intermediate_energy(
        net, scheduler, model, energy, pool, variance="jacobian", steps=args.train_steps, generator=gen
    )
    results["AEPO amortized"] = draw(AnalyticEnergyGuidance(scheduler, model, beta=args.beta, estimator=net))
    timings["AEPO amortized"] = time.perf_counter() - start

    distances = {name: sliced_wasserstein(x, target) for name, x in results.items()}
    floor = sliced_wasserstein(exact.sample(args.samples, generator=gen), target)
    print(f"beta = {args.beta}, {args.samples} samples, DPM-Solver++ {args.steps} steps")
    print(f"{'sampler':36s} {'SW2 to exact target':>20s} {'seconds':>8s}")
    for name, dist in distances.items():
        print(f"{name:36s} {dist:20.4f} {timings[name]:8.2f}")
    print(f"{'(two exact target draws)':36s} {floor:20.4f}")
    _plot(results, target, args.out)
    print(f"wrote {args.out}")
    return distances


def _plot(results: dict[str, torch.Tensor], target: torch.Tensor, path: Path) -> None:
    plt = pyplot()

    panels = {**results, "exact target": target}
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), sharex=True, sharey=True)
    for ax, (name, x) in zip(axes, panels.items(), strict=True):
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.3)
        ax.set_title(name, fontsize=9)
        ax.set_aspect("equal")
    axes[0].set_xlim(-5, 5)
    axes[0].set_ylim(-5, 5)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format="png")
    atomic_write(path, buffer.getvalue())
    plt.close(fig)


if __name__ == "__main__":
    main()
