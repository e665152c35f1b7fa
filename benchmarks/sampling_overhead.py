"""Wall time of guided vs unguided sampling: ``python benchmarks/sampling_overhead.py``.

Batch 1024 of 6-D actions conditioned on 17-D states (HalfCheetah-sized), the AEPO recipe's
3×256 Mish MLP noise model (energy_guidance.recipes.behaviour.NoiseMLP), an MLP critic energy, DPM-Solver++
and DDIM at 15 and 50 steps. Guidance modes: training-free AEPO with a table variance
(``eps_norm``) and with the local Jacobian variance (autograd through the model), the Tweedie
gradient with the table variance (no backward pass through the model), and amortized AEPO with
intermediate-energy networks of several sizes. The training-free modes are the paper's closed
form (each names its variance), every mode with AEPO's guidance rescale (``rescale="paper"``).
Reports the median of ``--repeats`` runs and the ratio to unguided sampling measured in the same
run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from functools import partial

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch import nn

from energy_guidance import AnalyticEnergyGuidance, IntermediateEnergyNet, sample
from energy_guidance.recipes.behaviour import NoiseMLP, diffusion_loss
from energy_guidance.training import gradient_step
from energy_guidance.variance import VarianceTable

ACTION, STATE = 6, 17


def fitted_noise_model(steps: int = 300) -> NoiseMLP:
    """The recipe's behaviour model (3×256 Mish MLP), briefly fitted on synthetic state-dependent
    actions so that x̂0, and the guidance, stay finite."""
    model = NoiseMLP(ACTION, STATE, hidden=256, depth=3)
    scheduler = DDPMScheduler()
    w = torch.randn(STATE, ACTION) / STATE**0.5
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        states = torch.randn(256, STATE)
        actions = torch.tanh(states @ w + 0.3 * torch.randn(256, ACTION))
        gradient_step(optimizer, diffusion_loss(model, scheduler, actions, states))
    return model.requires_grad_(False)


def critic_energy(hidden: int = 256):
    q = nn.Sequential(
        nn.Linear(ACTION + STATE, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 1),
    )
    return lambda a, s: -q(torch.cat([a, s], dim=1)).squeeze(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--energy-sizes",
        nargs="+",
        default=["3x64", "3x256"],
        help="amortized nets, DEPTHxWIDTH (the recipe's default is 3x64)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, energy = fitted_noise_model(), critic_energy()
    states = torch.randn(args.batch, STATE)
    lam = torch.linspace(-12, 12, 64)
    table = VarianceTable(
        lam, torch.sigmoid(-lam), torch.sigmoid(-lam), torch.sigmoid(-lam)[:, None].repeat(1, ACTION)
    )
    nets = {}
    for size in args.energy_sizes:
        depth, hidden = (int(v) for v in size.split("x"))
        nets[size] = IntermediateEnergyNet(ACTION, STATE, hidden=hidden, depth=depth).requires_grad_(False)
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}")
    print(
        f"batch {args.batch}; noise model energy_guidance.recipes.behaviour.NoiseMLP 3x256; "
        "critic energy 2x256 ReLU MLP"
    )
    print(f"{'scheduler':12s} {'steps':>5s} {'mode':24s} {'median s':>9s} {'× unguided':>10s}")
    guided_modes = {
        "training-free eps_norm": {"energy": energy, "variance": "eps_norm", "variance_table": table},
        "training-free jacobian": {"energy": energy, "variance": "jacobian"},
        "tweedie eps_norm": {
            "energy": energy,
            "variance": "eps_norm",
            "variance_table": table,
            "gradient": "tweedie",
        },
        **{f"amortized {size}": {"estimator": net} for size, net in nets.items()},
    }
    schedulers = {
        "DPM-Solver++": DPMSolverMultistepScheduler,
        "DDIM": partial(DDIMScheduler, clip_sample=False),
    }
    for name, make in schedulers.items():
        for steps in (15, 50):
            scheduler = make()
            shape = (args.batch, ACTION)
            runs = {
                "unguided": partial(sample, scheduler, model, shape, cond=states, num_inference_steps=steps)
            }
            for label, kwargs in guided_modes.items():
                guidance = AnalyticEnergyGuidance(scheduler, model, beta=1.0, rescale="paper", **kwargs)
                runs[label] = partial(guidance.sample, shape, cond=states, num_inference_steps=steps)
            base = None
            for label, run in runs.items():
                seconds = median_time(run, args.repeats)
                base = base or seconds
                print(f"{name:12s} {steps:5d} {label:24s} {seconds:9.4f} {seconds / base:10.2f}")


def median_time(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


if __name__ == "__main__":
    main()
