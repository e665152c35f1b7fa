"""AEPO on another implementation's critic: a second check of the recipe's own critic.

    python -m benchmarks.peer_critic --critic-file runs/peers_critic/d3rlpy-iql/seed0.d3 \\
        --root runs/peer_critic -- --dataset energy-guidance/hopper/medium-v0 \\
        --run-dir runs/hopper_100k/energy-guidance/hopper/medium-v0/seed0 \\
        --critic-steps 100000 --behaviour-steps 100000

A finished AEPO run (``--run-dir`` and the options it was made with, after ``--``) gives the
behaviour model and its variance table; a d3rlpy model file (written by ``python -m
benchmarks.peers``, or by anyone's ``algo.save``) gives the critic, through
:func:`energy_guidance.adapters.load_d3rlpy`. The recipe's own phases then train the
intermediate-energy network on that critic's energy and evaluate every policy of the recipe
(AEPO, the single guided sample, best of N by Q, SMC, the critic's own policy) with the same
seeds and protocol, in a run folder of its own (``<root>/<data set>/seed<k>``, resumable and
cached like the recipe's). Only the critic differs from the run beside it, whose scores the
summary (``<root>/summary.md``, over every seed finished under ``<root>``) quotes.

The recipe's critics work on standardised observations and actions in [-1, 1]^d; d3rlpy's on the
data set's raw units (with its own scalers). :class:`InRecipeUnits` maps one to the other with
torch operations, so the energy stays differentiable in the actions.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from energy_guidance.adapters import critic_energy, load_d3rlpy
from energy_guidance.adapters.d3rlpy_critic import D3rlpyCritic
from energy_guidance.checkpoints import atomic_write, read_json
from energy_guidance.recipes.aepo import (
    _phase,
    evaluate_policies,
    finished_run,
    measure_q_scale,
    train_behaviour,
    train_energy,
    variance_table,
)
from energy_guidance.recipes.behaviour import sampling_scheduler, training_scheduler
from energy_guidance.recipes.config import AEPOConfig, parse_args, split_settings, training_defaults
from energy_guidance.recipes.data import ActionScaler
from energy_guidance.recipes.inputs import Normalizer, load_inputs
from energy_guidance.recipes.policies import Policies, label
from energy_guidance.recipes.runfolder import RunFolder
from energy_guidance.recipes.seeds import Seeds


class InRecipeUnits:
    """A d3rlpy critic on the recipe's units: standardised states (B, k), actions (B, d) in [-1, 1]^d.

    q_values(s, a) = Q_d3rlpy(σ·s + μ, low + (a + 1)·(high − low)/2), (K, B); the baseline likewise;
    ``act`` is the d3rlpy algorithm's own (greedy) policy, mapped back to [-1, 1]^d.
    """

    policy_name: ClassVar[str] = "d3rlpy_policy"
    policy_label: ClassVar[str] = "d3rlpy's own policy"

    def __init__(self, critic: D3rlpyCritic, normalizer: Normalizer, scaler: ActionScaler) -> None:
        self.critic, self._raw = critic, normalizer.inverse
        self.low = torch.as_tensor(scaler.low, dtype=torch.float32, device=normalizer.mean.device)
        self.high = torch.as_tensor(scaler.high, dtype=torch.float32, device=normalizer.mean.device)

    def q_values(self, states: Tensor, actions: Tensor) -> Tensor:
        env_actions = self.low + (actions + 1) * (self.high - self.low) / 2
        return self.critic.q_values(self._raw(states), env_actions).to(states.dtype)

    def baseline(self, states: Tensor) -> Tensor:
        return self.critic.baseline(self._raw(states)).to(states.dtype)

    @torch.no_grad()
    def act(self, states: Tensor) -> Tensor:
        raw = self._raw(states).cpu().numpy().astype(np.float32)
        actions = torch.as_tensor(self.critic.algo.predict(raw), device=states.device)
        return (2 * (actions - self.low) / (self.high - self.low) - 1).to(states.dtype)


def run_with_critic(critic_file: Path, config: AEPOConfig, root: Path) -> dict:
    """The recipe's phases 2-5 with the run's (``config.run_dir``) behaviour model and
    ``critic_file``'s critic; what ``<root>/<data set>/seed<k>/results.json`` holds."""
    source = finished_run(config)
    settings = split_settings(config)
    inputs = load_inputs(config)
    data, seeds = inputs.data, Seeds.of(config.seed)
    critic = InRecipeUnits(load_d3rlpy(critic_file), inputs.normalizer, inputs.scaler)
    folder = RunFolder(root / config.dataset / f"seed{config.seed}")
    settings["training"] = {**settings["training"], "critic_file": str(critic_file)}
    with source.lock(), folder.lock():
        folder.adopt(**settings, defaults=training_defaults(config))  # a field newer than the folder
        train_sched = training_scheduler(config.behaviour)
        phase_in = functools.partial(
            _phase, checkpoint_every=config.checkpoint_every, progress=config.progress
        )
        # the run's behaviour model and variance table, loaded (both phases are finished there)
        model, _ = train_behaviour(
            config, seeds, functools.partial(phase_in, folder=source), data, train_sched
        )
        table = variance_table(config, seeds, source, data, model, train_sched)
        q_scale = measure_q_scale(critic, data.observations, data.act_dim, config.reduce)
        energy = critic_energy(critic.q_values, config.reduce, q_scale, critic.baseline)
        network, _ = train_energy(
            config, seeds, functools.partial(phase_in, folder=folder), data, model, train_sched, energy, table
        )
        scheduler = sampling_scheduler(config.behaviour, train_sched)
        policies = Policies(
            config,
            critic,  # type: ignore[arg-type]  # a Critic with a policy; it is never trained here
            model,
            scheduler,
            network,
            energy,
            inputs.normalizer,
            inputs.scaler,
            data.act_dim,
            torch.Generator(),
            variance_table=table,
        )
        scores, _ = evaluate_policies(config, seeds, folder, inputs, policies, settings["evaluation"])
        own = read_json(source.path / "results.json")
        result = {"q_scale": q_scale, "own_q_scale": own["q_scale"], "scores": scores, "own": own["scores"]}
        folder.write_json("results.json", result)
    return result


def summary(results: list[dict]) -> str:
    """Per policy: mean ± sd over seeds with the peer's critic, and with the run's own."""
    key = "score_mean" if "score_mean" in next(iter(results[0]["scores"].values())) else "return_mean"

    def cell(values: list[float]) -> str:
        return f"{np.mean(values):.1f} ± {np.std(values):.1f}" if values else "—"

    lines = [
        f"| policy | with the peer's critic (seeds: {len(results)}) | with the recipe's own critic |",
        "|---|---|---|",
    ]
    names = dict.fromkeys(name for r in results for name in r["scores"])  # a newer policy: some seeds
    for name in names:
        peer = [r["scores"][name][key] for r in results if name in r["scores"]]
        own_name = "iql_awr" if name == InRecipeUnits.policy_name else name  # the critics' own policies
        own = [r["own"][own_name][key] for r in results if own_name in r["own"]]
        text = (
            "the critic's own policy (d3rlpy's IQL; the recipe's: AWR)" if own_name != name else label(name)
        )
        seeds = "" if len(peer) == len(results) else f" ({len(peer)} of {len(results)} seeds)"
        lines.append(f"| {text} | {cell(peer)}{seeds} | {cell(own)} |")
    scales = ", ".join(f"{r['q_scale']:.3f} against {r['own_q_scale']:.3f}" for r in results)
    lines += ["", f"q_scale (β's unit) per seed, the peer's against the recipe's: {scales}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--critic-file", type=Path, required=True, help="a d3rlpy model file (algo.save)")
    parser.add_argument("--root", type=Path, default=Path("runs/peer_critic"))
    parser.add_argument(
        "recipe_args", nargs=argparse.REMAINDER, help="-- then the finished run's recipe options"
    )
    args = parser.parse_args(argv)
    config = parse_args([a for a in args.recipe_args if a != "--"])
    run_with_critic(args.critic_file, config, args.root)
    # every seed finished under the root so far, this data set's
    results = [read_json(p) for p in sorted((args.root / config.dataset).glob("seed*/results.json"))]
    table = summary(results)
    atomic_write(args.root / "summary.md", (table + "\n").encode())
    print(table)


if __name__ == "__main__":
    main()
