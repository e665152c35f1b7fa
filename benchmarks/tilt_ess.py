"""How many (state, action) pairs carry the classifier energy's tilt in a finished AEPO run.

    python -m benchmarks.tilt_ess runs/aepo runs/bench_mujoco/energy-guidance/hopper/medium-v0/seed0

For each run folder: the run's critic and energy E(a | s) = −(Q − V)/q_scale (as the recipe
builds them), the tilt weights w ∝ exp(−β·E) over all transitions of its data set
(``energy_guidance.classifier.tilt_log_weights``, normalised over the whole set, as
``--energy-loss classifier`` uses them), and their effective sample size 1/Σw². Then the same
with a per-state normaliser: u(s) ≈ log E[exp(−β·E) | s], a 2×64 MLP fitted on the data pairs
by the loss exp(−β·E − u) + u (minimiser: that log-mean-exp), subtracted before normalising.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from torch import nn

from energy_guidance.adapters import critic_energy
from energy_guidance.checkpoints import checkpoint_steps, load_modules
from energy_guidance.classifier import tilt_log_weights
from energy_guidance.recipes.aepo import measure_q_scale
from energy_guidance.recipes.config import critic_settings, parse_args
from energy_guidance.recipes.inputs import load_inputs
from energy_guidance.recipes.trainers import CRITICS
from energy_guidance.training import fit


def ess(log_w: torch.Tensor) -> float:
    """1/Σw² of normalised log-weights."""
    return float(1 / torch.exp(2 * log_w.double()).sum())


def per_state_log_partition(log_w: torch.Tensor, states: torch.Tensor, steps: int, seed: int) -> torch.Tensor:
    """u(s) (N,) fitted to log E[exp(log_w) | s] from one pair per state (loss exp(log_w − u) + u)."""
    mean, std = states.mean(0), states.std(0).clamp_min(1e-3)
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(states.shape[1], 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1)
    )
    target = (log_w + math.log(len(log_w))).float()  # mean-one weights: u starts near 0
    g = torch.Generator().manual_seed(seed)

    def loss() -> torch.Tensor:
        idx = torch.randint(0, len(target), (256,), generator=g)
        u = net((states[idx] - mean) / std)[:, 0]
        return (torch.exp((target[idx] - u).clamp(max=30)) + u).mean()

    fit(net, loss, steps=steps, generator=g, progress=False)
    with torch.no_grad():
        return torch.cat([net((s - mean) / std)[:, 0] for s in states.split(4096)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs", nargs="+", help="finished run folders of python -m energy_guidance.recipes.aepo"
    )
    parser.add_argument("--steps", type=int, default=3000, help="steps of the per-state normaliser")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for run_dir in map(Path, args.runs):
        saved = json.loads((run_dir / "results.json").read_text())["config"]
        config = parse_args(["--dataset", saved["dataset"], "--seed", str(saved["seed"])])
        data = load_inputs(config, "cpu").data
        obs_dim, act_dim = data.observations.shape[1], data.actions.shape[1]
        critic = CRITICS[config.critic](obs_dim, act_dim, critic_settings(config))
        step = checkpoint_steps(run_dir / "checkpoints", "critic")[0]
        load_modules(run_dir / "checkpoints" / f"critic-{step}.safetensors", {"critic": critic})
        critic.eval()
        q_scale = measure_q_scale(critic, data.observations, act_dim, config.reduce)
        energy = critic_energy(critic.q_values, config.reduce, q_scale, critic.baseline)
        log_w = tilt_log_weights(energy, data.actions, config.beta, data.observations)
        u = per_state_log_partition(log_w, data.observations, args.steps, config.seed)
        per_state = torch.log_softmax(log_w - u.double(), 0)
        n = len(log_w)
        plain, normalised = ess(log_w), ess(per_state)
        print(
            f"{run_dir}: N = {n}, β = {config.beta:g}; tilt ESS {plain:.1f} ({100 * plain / n:.3f} %), "
            f"with a per-state normaliser {normalised:.1f} ({100 * normalised / n:.3f} %)"
        )


if __name__ == "__main__":
    main()
