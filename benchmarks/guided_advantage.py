"""How far each guided policy of a finished AEPO run moves the critic's advantage toward the tilt.

    python -m benchmarks.guided_advantage --out outputs/guided_advantage/seed0.json -- \\
        --dataset energy-guidance/hopper/medium-v0 --seed 0 --preset locomotion-cpu \\
        --run-dir runs/hopper_100k_raw/energy-guidance/hopper/medium-v0/seed0 \\
        --critic-steps 100000 --behaviour-steps 100000 --critic-observations raw \\
        --num-candidates 64 --no-smc

The run (``--run-dir`` and the options it was made with, after ``--``) gives the critic, the
behaviour model μ(a | s), the variance table and the intermediate-energy network; nothing is
trained (a folder made with other training settings is refused; the evaluation settings, e.g.
``--num-candidates``, are the ones given here). On ``--states`` S data states (a fixed random
subset), in the energy's units, the advantage A(s, a) = −E(a | s) = (reduce_i Q_i(s, a) − b(s))
/ q_scale, and β the run's:

- unguided:   the mean of A over K = ``--candidates`` samples of μ per state;
- target:     the tilt's mean E_{μ·exp(β·A)}[A], estimated per state by self-normalised
              importance weights w_k ∝ exp(β·A_k) over those K samples (its Kish ESS 1/Σw_k²
              reported beside: the estimate needs it well above 1);
- best of n:  the mean over states of A at the sample of highest Q among the first n of the K
              (n = 16, the run's N and K, each at most K), and its gap closed;
- each guided policy (M = ``--per-state`` samples per state, the recipe's sampler): its mean A,
  the fraction of the gap closed, (guided − unguided) / (target − unguided), and the fraction
  of action coordinates at the box's bound (|a| ≥ 0.999; unguided beside it);
- the network: per noise level t, the correlation within a state between E_Θ(s, a_t, t), a_t
  the candidates noised to t, and β·E(a | s) of the clean candidate (1 at t = 0 for a network
  that has learned the action dependence; near 0 for one that has learned only the states').

The guided policies are AEPO's network guidance (the run's rescale and scale), the same without
the rescale, and the library's default training-free guidance (``training_free_single``).

Cost: the wall time of one call of each evaluated policy of the recipe (``--num-candidates`` N
of the run's options) on a batch of 10 states, the evaluation's vector of episodes (median of
``--repeats`` calls, the run's ``--threads``), so that a policy can be set beside best of N by Q at equal
time. Writes a JSON (``--out``) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor

from energy_guidance import sample
from energy_guidance.adapters import critic_energy
from energy_guidance.checkpoints import atomic_write
from energy_guidance.recipes.aepo import (
    _phase,
    finished_run,
    measure_q_scale,
    train_behaviour,
    train_critic,
    train_energy,
    variance_table,
)
from energy_guidance.recipes.behaviour import sampling_scheduler, training_scheduler
from energy_guidance.recipes.config import AEPOConfig, parse_args
from energy_guidance.recipes.inputs import load_inputs
from energy_guidance.recipes.policies import Policies, label
from energy_guidance.recipes.seeds import Seeds
from energy_guidance.schedulers import noise_level

NOISE_LEVELS = (0, 50, 200, 500, 800)  # training timesteps of the network's correlation


COST_BATCH = 10  # states per timed call: the recipe's evaluation steps 10 episodes at once


def measure(
    config: AEPOConfig, states: int, candidates: int, per_state: int, seed: int, repeats: int
) -> dict:
    """The measurements of the module docstring for the finished run of ``config``."""
    folder = finished_run(config)
    torch.set_num_threads(config.threads)
    inputs = load_inputs(config, torch.device("cpu"))
    data, seeds = inputs.data, Seeds.of(config.seed)
    phase = functools.partial(_phase, folder=folder, checkpoint_every=config.checkpoint_every, progress=False)
    with folder.lock():
        train_sched = training_scheduler(config.behaviour)
        critic, _ = train_critic(config, seeds, phase, data, inputs.normalizer)
        model, _ = train_behaviour(config, seeds, phase, data, train_sched)
        table = variance_table(config, seeds, folder, data, model, train_sched)
        q_scale = measure_q_scale(critic, data.observations, data.act_dim, config.reduce)
        energy = critic_energy(critic.q_values, config.reduce, q_scale, critic.baseline)
        network, _ = train_energy(config, seeds, phase, data, model, train_sched, energy, table)
    scheduler = sampling_scheduler(config.behaviour, train_sched)
    g = torch.Generator().manual_seed(seed)
    policies = Policies(
        config, critic, model, scheduler, network, energy, inputs.normalizer, inputs.scaler,
        data.act_dim, g, variance_table=table,
    )  # fmt: skip
    rows = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:states]
    s = data.observations[rows]
    beta = config.beta

    def draw(guidance, n: int) -> tuple[Tensor, Tensor]:
        """n actions per state (S, n, d) of ``guidance`` (None: μ), and their A (S, n)."""
        cond = s.repeat_interleave(n, dim=0)
        with torch.no_grad():
            actions = sample(
                scheduler,
                model if guidance is None else guidance,
                (len(cond), data.act_dim),
                cond=cond,
                num_inference_steps=config.inference_steps,
                generator=g,
            ).clamp(-1, 1)
        advantage = -energy(actions, cond).detach()
        return actions.reshape(len(s), n, -1), advantage.reshape(len(s), n)

    actions, advantage = draw(None, candidates)
    weights = torch.softmax(beta * advantage, dim=1)
    unguided = float(advantage.mean())
    target = float((weights * advantage).sum(dim=1).mean())
    result: dict = {
        "q_scale": q_scale,
        "beta": beta,
        "unguided": unguided,
        "target": target,
        "target_ess": float((1 / weights.pow(2).sum(dim=1)).mean()),
        "unguided_at_bound": float((actions.abs() >= 0.999).float().mean()),
        "best_of": {},
        "guided": {},
        "network_correlation": {},
    }
    for n in sorted({min(16, candidates), min(config.num_candidates, candidates), candidates}):
        best = advantage[:, :n].argmax(dim=1)  # A is Q − b(s) over q_scale: at a state, Q's order
        value = float(advantage[torch.arange(len(s)), best].mean())
        result["best_of"][n] = {"mean": value, "gap_closed": _gap_closed(value, unguided, target)}
    guided = {
        "aepo_network": policies.guidance,
        "aepo_network_no_rescale": policies.guidance.replace(rescale=False),
        "training_free": policies.training_free,
    }
    for name, guidance in guided.items():
        drawn, a = draw(guidance, per_state)
        result["guided"][name] = {
            "mean": float(a.mean()),
            "gap_closed": _gap_closed(float(a.mean()), unguided, target),
            "at_bound": float((drawn.abs() >= 0.999).float().mean()),
        }
    cond = s.repeat_interleave(candidates, dim=0)
    flat = actions.reshape(-1, data.act_dim)
    centred_target = beta * -advantage
    centred_target = centred_target - centred_target.mean(dim=1, keepdim=True)
    noise = torch.Generator().manual_seed(seed + 1)
    for t in NOISE_LEVELS:
        timestep = torch.tensor([t])
        alpha, sigma = (c.float() for c in noise_level(train_sched, timestep))
        x_t = alpha * flat + sigma * torch.randn(flat.shape, generator=noise)
        with torch.no_grad():
            values = network(x_t, alpha, sigma, cond).reshape(len(s), candidates)
        centred = values - values.mean(dim=1, keepdim=True)
        correlation = (centred * centred_target).sum(1) / (centred.norm(dim=1) * centred_target.norm(dim=1))
        result["network_correlation"][t] = float(correlation.nanmean())  # a constant row: no correlation
    raw = inputs.normalizer.inverse(s[:COST_BATCH]).numpy()
    result["seconds_per_call"] = {}
    for name, policy in policies.evaluated().items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            policy(raw)
            times.append(time.perf_counter() - start)
        result["seconds_per_call"][name] = statistics.median(times)
    return result


def _gap_closed(value: float, unguided: float, target: float) -> float:
    """(value − unguided) / (target − unguided); NaN where the tilt moves nothing (β = 0)."""
    return (value - unguided) / (target - unguided) if target != unguided else math.nan


def to_markdown(result: dict) -> str:
    lines = [
        f"β = {result['beta']:g}, q_scale = {result['q_scale']:.3f}; mean advantage (Q − V)/q_scale",
        "",
        "| samples | mean A | gap closed | at the bound |",
        "|---|---|---|---|",
        f"| unguided (μ) | {result['unguided']:.3f} | 0 | {result['unguided_at_bound']:.3f} |",
        f"| the tilt's target (ESS {result['target_ess']:.1f} of K) | {result['target']:.3f} | 1 | |",
    ]
    for n, entry in result["best_of"].items():
        lines.append(f"| best of {n} by Q | {entry['mean']:.3f} | {entry['gap_closed']:.2f} | |")
    for name, entry in result["guided"].items():
        lines.append(
            f"| {name} | {entry['mean']:.3f} | {entry['gap_closed']:.2f} | {entry['at_bound']:.3f} |"
        )
    correlations = ", ".join(f"t = {t}: {c:.2f}" for t, c in result["network_correlation"].items())
    lines += ["", f"network's within-state correlation with β·E(a | s): {correlations}", ""]
    lines += [f"| policy (a call on {COST_BATCH} states) | seconds | × behaviour |", "|---|---|---|"]
    seconds = result["seconds_per_call"]
    for name, value in seconds.items():
        lines.append(f"| {label(name)} | {value:.3f} | {value / seconds['behaviour']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--states", type=int, default=256, help="data states S")
    parser.add_argument("--candidates", type=int, default=64, help="unguided samples K per state")
    parser.add_argument("--per-state", type=int, default=8, help="samples M per state of each guided policy")
    parser.add_argument("--seed", type=int, default=0, help="the states' subset and the samples")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per policy (the median)")
    parser.add_argument("--out", type=Path, default=Path("outputs/guided_advantage/result.json"))
    parser.add_argument(
        "recipe_args", nargs=argparse.REMAINDER, help="-- then the finished run's recipe options"
    )
    args = parser.parse_args(argv)
    config = parse_args([a for a in args.recipe_args if a != "--"])
    result = measure(config, args.states, args.candidates, args.per_state, args.seed, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps(result, indent=2).encode())
    print(to_markdown(result))


if __name__ == "__main__":
    main()
