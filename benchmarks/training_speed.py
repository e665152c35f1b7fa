"""Training updates per second: the recipe's critics and behaviour model beside d3rlpy's, one run.

    python -m benchmarks.training_speed                      # Hopper's sizes: obs 11, act 3, batch 256
    python -m benchmarks.training_speed --rounds 5 --updates 200 --threads 1

Each arm takes ``--updates`` training steps per round (a batch drawn from the same random data set
of 100k transitions, then one update of every network the algorithm trains), the arms in turn,
``--rounds`` rounds, after one warm-up round; the table gives the median over rounds of updates
per second and, for the recipe's arms, the median of the per-round ratio to d3rlpy's same
algorithm (arms measured side by side see the same load). Arms:

- ``iql`` / ``d3rlpy-iql``: V, twin Q and the AWR actor, networks 2 × 256 (both libraries' defaults);
- ``cql`` / ``d3rlpy-cql``: twin Q with CQL's regulariser (10 sampled actions per proposal and
  state in both), the tanh-Gaussian actor and the entropy weight;
- ``d3rlpy-td3bc``: TD3+BC, for reference;
- ``behaviour``: the recipe's diffusion behaviour model (ε-MLP 3 × 256, DDPM loss), no d3rlpy peer;
- ``iql-compiled`` (with ``--compile``): ``iql`` with its networks through ``torch.compile``.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from energy_guidance.recipes.behaviour import BehaviourConfig, NoiseMLP, diffusion_loss, training_scheduler
from energy_guidance.recipes.cql import CQL, CQLConfig
from energy_guidance.recipes.iql import IQL
from energy_guidance.recipes.transitions import Transitions
from energy_guidance.training import gradient_step

PEERS = {"iql": "d3rlpy-iql", "cql": "d3rlpy-cql", "iql-compiled": "d3rlpy-iql"}


def random_data(size: int, obs_dim: int, act_dim: int, seed: int = 0, device: str = "cpu") -> Transitions:
    """``size`` random transitions (episodes of 1,000 steps), actions in [-1, 1], on ``device``."""
    g = torch.Generator().manual_seed(seed)
    terminals = torch.zeros(size)
    terminals[999::1000] = 1.0
    return Transitions(
        torch.randn(size, obs_dim, generator=g).to(device),
        (torch.rand(size, act_dim, generator=g) * 2 - 1).to(device),
        torch.randn(size, generator=g).to(device),
        torch.randn(size, obs_dim, generator=g).to(device),
        terminals.to(device),
    )


def ours(name: str, data: Transitions, batch: int, device: str) -> Callable[[], None]:
    """One training step of the recipe's ``name`` (sample a batch, update), as a closure."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if name == "behaviour":
        config = BehaviourConfig()
        model = NoiseMLP(data.act_dim, data.obs_dim, config.hidden, config.depth, config.time_dim).to(device)
        scheduler, optimizer = training_scheduler(config), torch.optim.Adam(model.parameters(), lr=config.lr)

        def behaviour_step() -> None:
            drawn = data.sample(batch, g)
            gradient_step(optimizer, diffusion_loss(model, scheduler, drawn.actions, drawn.observations, g))

        return behaviour_step
    if name == "cql":
        critic: CQL | IQL = CQL(data.obs_dim, data.act_dim, CQLConfig()).to(device)
    else:
        critic = IQL(data.obs_dim, data.act_dim).to(device)
        if name == "iql-compiled":
            critic.q = torch.compile(critic.q)
            critic.q_target = torch.compile(critic.q_target)
            critic.v = torch.compile(critic.v)
            critic.actor.net = torch.compile(critic.actor.net)
    return lambda: critic.update(data.sample(batch, g), g)  # type: ignore[return-value]


def d3rlpy_arm(name: str, data: Transitions, batch: int, device: str) -> Callable[[], None]:
    """One training step of d3rlpy's algorithm (its own batch sampling, then ``update``)."""
    import d3rlpy
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    d3rlpy.seed(0)
    dataset = d3rlpy.dataset.MDPDataset(
        data.observations.cpu().numpy(),
        data.actions.cpu().numpy(),
        data.rewards.cpu().numpy()[:, None],
        data.terminals.cpu().numpy(),
        action_space=d3rlpy.ActionSpace.CONTINUOUS,
    )
    configs = {
        "d3rlpy-iql": lambda: d3rlpy.algos.IQLConfig(batch_size=batch),
        "d3rlpy-cql": lambda: d3rlpy.algos.CQLConfig(batch_size=batch),
        "d3rlpy-td3bc": lambda: d3rlpy.algos.TD3PlusBCConfig(batch_size=batch),
    }
    algo = configs[name]().create(device=f"{device}:0")
    algo.build_with_dataset(dataset)
    buffer = d3rlpy.dataset.create_infinite_replay_buffer(
        episodes=dataset.episodes, transition_picker=d3rlpy.dataset.BasicTransitionPicker()
    )
    return lambda: algo.update(buffer.sample_transition_batch(batch))  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--obs-dim", type=int, default=11)
    parser.add_argument("--act-dim", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--updates", type=int, default=200, help="updates per arm per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--compile", action="store_true", help="also iql with torch.compile'd networks")
    parser.add_argument(
        "--arms",
        nargs="+",
        default=["iql", "d3rlpy-iql", "cql", "d3rlpy-cql", "d3rlpy-td3bc", "behaviour"],
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = random_data(100_000, args.obs_dim, args.act_dim, device=args.device)
    arms = [*args.arms, *(["iql-compiled"] if args.compile else [])]
    steps = {
        arm: (d3rlpy_arm if arm.startswith("d3rlpy") else ours)(arm, data, args.batch, args.device)
        for arm in arms
    }
    rates: dict[str, list[float]] = {a: [] for a in arms}
    for round_ in range(args.rounds + 1):  # round 0 warms up (and compiles)
        for arm in arms:
            start = time.perf_counter()
            for _ in range(args.updates):
                steps[arm]()
            if args.device == "cuda":
                torch.cuda.synchronize()
            if round_:
                rates[arm].append(args.updates / (time.perf_counter() - start))
    print(
        f"{platform.machine()}, {args.device}, {torch.get_num_threads()} thread(s), "
        f"torch {torch.__version__}, "
        f"obs {args.obs_dim}, act {args.act_dim}, batch {args.batch}, {args.rounds} rounds × "
        f"{args.updates} updates\n"
    )
    print("| arm | updates/s (median; min–max) | ratio to d3rlpy's (median of rounds) |")
    print("|---|---|---|")
    for arm in arms:
        peer = PEERS.get(arm)
        ratio = (
            f"{statistics.median(np.array(rates[arm]) / np.array(rates[peer])):.2f}" if peer in rates else ""
        )
        r = rates[arm]
        print(f"| {arm} | {statistics.median(r):.1f} ({min(r):.1f}–{max(r):.1f}) | {ratio} |")


if __name__ == "__main__":
    main()
