"""Independent offline-RL peers on the project's own data: d3rlpy's IQL and TD3+BC beside our IQL.

    python -m benchmarks.peers --dataset energy-guidance/hopper/medium-v0 --steps 30000 \\
        --eval-every 10000 --seeds 0 1 2 --root runs/peers

Each (algorithm, seed) trains on the same Minari data set for ``--steps`` gradient steps (batch
256) and is evaluated every ``--eval-every`` steps by the recipe's protocol
(:func:`energy_guidance.recipes.evaluation.evaluate`: ``--episodes`` episodes reset with seeds
``eval_seed + i``, the deterministic policy, D4RL's normalised score). The algorithms:

- ``iql``: the recipe's IQL (:class:`energy_guidance.recipes.iql.IQL`, CORL's settings) as the
  recipe's locomotion presets train it (rewards × 1000 / (max − min episode return), the networks
  reading raw observations through :class:`~energy_guidance.recipes.trainers.OnObservations`;
  before 2026-12-07 they read standardised ones); its policy is the AWR actor's mean, as ``iql_awr`` in
  the recipe's tables.
- ``d3rlpy-iql``: d3rlpy's IQL with the settings of d3rlpy's reproduction script (learning rates
  3e-4, expectile 0.7, AWR temperature 3, weights clipped at 100, ``ReturnBasedRewardScaler``
  with multiplier 1000: the same reward normalisation), without the actor's cosine schedule;
  its networks read raw observations.
- ``d3rlpy-iql-standardised``: the same with d3rlpy's ``StandardObservationScaler``, so that its
  networks read standardised observations, as the recipe's default critic does (the check that
  standardising, not the implementation, made our critic the worse ranker on hopper/medium).
- ``d3rlpy-td3bc``: d3rlpy's TD3+BC (α = 2.5, observations standardised, its reproduction's
  settings), a cheap, strong offline-RL baseline.

d3rlpy reads the data through :func:`to_d3rlpy` (the transitions of :func:`load_transitions`,
actions in the environment's units). Results: ``<root>/<algorithm>/seed<k>.json`` (the curve,
written after every evaluation; a finished file is reused, an unfinished run starts over),
``<root>/summary.md`` and ``<root>/learning_curves.png`` (``--summarise``: only these two, from
the curves in ``<root>``, finished or not).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from minari import EpisodeData

from energy_guidance.checkpoints import atomic_write, read_json, write_json
from energy_guidance.recipes.config import AEPOConfig
from energy_guidance.recipes.data import load_dataset, reference_scores
from energy_guidance.recipes.evaluation import evaluate, normalized_score
from energy_guidance.recipes.inputs import load_inputs
from energy_guidance.recipes.iql import IQL
from energy_guidance.recipes.plots import figure_bytes, pyplot
from energy_guidance.recipes.trainers import OnObservations

ALGORITHMS = ("iql", "d3rlpy-iql", "d3rlpy-td3bc", "d3rlpy-iql-standardised")  # colours C0..C3
DEFAULT_ALGORITHMS = ("iql", "d3rlpy-iql", "d3rlpy-td3bc")  # the standardised IQL is a check
BATCH = 256
Policy = Callable[[np.ndarray], np.ndarray]


def to_d3rlpy(episodes: Iterable[EpisodeData]):
    """Minari episodes (``dataset.iterate_episodes()``) as a d3rlpy ``MDPDataset``, one d3rlpy
    episode per Minari episode.

    d3rlpy keeps a transition's next observation inside the episode, and an episode that does
    not terminate loses its last step (``transition_count = size − 1``). So every episode that
    ends by truncation (or is cut by the data set's budget) gets its final observation appended
    as one more step (action 0, reward 0, timeout 1), which d3rlpy never samples as a transition:
    the transitions are exactly those of the recipe's ``load_transitions``.
    """
    import d3rlpy

    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "act", "rew", "term", "timeout")}
    for episode in episodes:
        obs, act = np.asarray(episode.observations, np.float32), np.asarray(episode.actions, np.float32)
        rew, term = np.asarray(episode.rewards, np.float32), np.asarray(episode.terminations, bool)
        steps = len(rew)
        obs, act = obs.reshape(steps + 1, -1), act.reshape(steps, -1)
        terminal, timeout = np.zeros(steps, np.float32), np.zeros(steps, np.float32)
        if term[-1]:
            terminal[-1] = 1.0
            obs = obs[:-1]
        else:  # the final observation as an extra step, so the last transition is kept
            act = np.concatenate([act, np.zeros_like(act[:1])])
            rew = np.concatenate([rew, np.zeros(1, np.float32)])
            terminal = np.concatenate([terminal, np.zeros(1, np.float32)])
            timeout = np.concatenate([timeout, np.ones(1, np.float32)])
        for key, value in zip(parts, (obs, act, rew, terminal, timeout), strict=True):
            parts[key].append(value)
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    return d3rlpy.dataset.MDPDataset(
        arrays["obs"],
        arrays["act"],
        arrays["rew"][:, None],
        arrays["term"],
        arrays["timeout"],
        action_space=d3rlpy.ActionSpace.CONTINUOUS,
    )


@dataclasses.dataclass
class Run:
    """One (algorithm, seed): how to evaluate it, and its curve so far."""

    algorithm: str
    seed: int
    steps: list[int] = dataclasses.field(default_factory=list)
    scores: list[float] = dataclasses.field(default_factory=list)  # mean normalised score per evaluation
    returns: list[list[float]] = dataclasses.field(default_factory=list)
    train_seconds: float = 0.0
    finished: bool = False


def _ours(args, run: Run, checkpoint: Callable[[int, Policy], None]) -> None:
    inputs = load_inputs(AEPOConfig(dataset=args.dataset, reward_normalization="returns"))
    data = inputs.data
    torch.manual_seed(run.seed)
    critic = OnObservations(IQL(data.obs_dim, data.act_dim), inputs.normalizer.inverse)
    generator = torch.Generator().manual_seed(run.seed)

    def policy(obs: np.ndarray) -> np.ndarray:
        return inputs.scaler.from_unit(critic.act(inputs.normalizer(obs)).numpy())

    for step in range(1, args.steps + 1):
        critic.update(data.sample(BATCH, generator))
        if step % args.eval_every == 0:
            checkpoint(step, policy)


def _d3rlpy(args, run: Run, checkpoint: Callable[[int, Policy], None]) -> None:
    import d3rlpy
    import structlog

    # d3rlpy reports every epoch at INFO through structlog; the benchmark prints its own lines
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    d3rlpy.seed(run.seed)
    common = {"actor_learning_rate": 3e-4, "critic_learning_rate": 3e-4, "batch_size": BATCH}
    config: d3rlpy.base.LearnableConfig
    if run.algorithm in ("d3rlpy-iql", "d3rlpy-iql-standardised"):  # d3rlpy's reproduction settings
        scaler = d3rlpy.preprocessing.ReturnBasedRewardScaler(multiplier=1000.0)
        standardise = run.algorithm == "d3rlpy-iql-standardised"
        config = d3rlpy.algos.IQLConfig(
            **common,
            weight_temp=3.0,
            max_weight=100.0,
            expectile=0.7,
            reward_scaler=scaler,
            observation_scaler=d3rlpy.preprocessing.StandardObservationScaler() if standardise else None,
        )
    else:  # and for TD3+BC
        config = d3rlpy.algos.TD3PlusBCConfig(
            **common,
            target_smoothing_sigma=0.2,
            target_smoothing_clip=0.5,
            alpha=2.5,
            update_actor_interval=2,
            observation_scaler=d3rlpy.preprocessing.StandardObservationScaler(),
        )
    algo = config.create(device="cpu:0")
    fitter = algo.fitter(
        to_d3rlpy(load_dataset(args.dataset).iterate_episodes()),
        n_steps=args.steps,
        n_steps_per_epoch=args.eval_every,
        logger_adapter=d3rlpy.logging.NoopAdapterFactory(),
        show_progress=args.progress,
        save_interval=args.steps + 1,
    )
    for epoch, _ in fitter:
        checkpoint(epoch * args.eval_every, lambda obs: algo.predict(np.asarray(obs, np.float32)))
    # the trained algorithm, for energy_guidance.adapters.load_d3rlpy (benchmarks/peer_critic.py)
    algo.save(str(run_path(args, run.algorithm, run.seed).with_suffix(".d3")))


def run_path(args, algorithm: str, seed: int) -> Path:
    """Where a run's curve is written (``.json``); d3rlpy's trained algorithm beside it (``.d3``)."""
    return Path(args.root) / algorithm / f"seed{seed}.json"


def scores_of(dataset) -> tuple[float, float]:
    """The data set's reference scores (random, expert), which normalised scores need."""
    refs = reference_scores(dataset)
    if refs is None:
        raise SystemExit(f"error: {dataset.spec.dataset_id!r} has no reference scores to normalise by")
    return refs


def train_and_evaluate(args, algorithm: str, seed: int, path: Path) -> Run:
    """Train ``algorithm`` with ``seed``, evaluating every ``args.eval_every`` steps; its curve."""
    dataset = load_dataset(args.dataset)
    make_env = dataset.recover_environment
    refs = scores_of(dataset)
    run = Run(algorithm, seed)
    started = time.perf_counter()

    def checkpoint(step: int, policy: Policy) -> None:
        nonlocal started
        run.train_seconds += time.perf_counter() - started
        returns = evaluate(policy, make_env, args.episodes, args.eval_seed, progress=False)
        run.steps.append(step)
        run.scores.append(float(normalized_score(returns, *refs).mean()))
        run.returns.append([float(r) for r in returns])
        run.finished = step >= args.steps
        write_json(path, dataclasses.asdict(run))
        print(f"{algorithm} seed {seed} step {step}: {run.scores[-1]:.1f}", flush=True)
        started = time.perf_counter()  # evaluation time is not training time

    (_ours if algorithm == "iql" else _d3rlpy)(args, run, checkpoint)
    return run


def summary(runs: list[Run], data_score: float) -> str:
    """A markdown table: mean ± std over seeds of the normalised score at each evaluated step."""
    steps = sorted({s for r in runs for s in r.steps})
    lines = [
        "| algorithm (seeds) | " + " | ".join(f"{s:,} steps" for s in steps) + " | training s/seed |",
        "|---" * (len(steps) + 2) + "|",
    ]
    for algorithm in ALGORITHMS:
        mine = [r for r in runs if r.algorithm == algorithm]
        if not mine:
            continue
        cells = []
        for step in steps:
            values = [r.scores[r.steps.index(step)] for r in mine if step in r.steps]
            cells.append(f"{np.mean(values):.1f} ± {np.std(values):.1f} ({len(values)})" if values else "")
        seconds = np.mean([r.train_seconds for r in mine])
        lines.append(f"| {algorithm} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    lines.append(f"\ndata set (mean episode): {data_score:.1f}")
    return "\n".join(lines)


def figure(runs: list[Run], data_score: float) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, algorithm in enumerate(ALGORITHMS):
        for run in (r for r in runs if r.algorithm == algorithm):
            ax.plot(run.steps, run.scores, color=f"C{i}", marker="o", alpha=0.7, label=algorithm)
    ax.axhline(data_score, color="gray", linestyle="--", label="data set")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=7)
    ax.set(xlabel="gradient step", ylabel="normalised score")
    return figure_bytes(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="energy-guidance/hopper/medium-v0")
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(DEFAULT_ALGORITHMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--eval-every", type=int, default=10_000)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--eval-seed", type=int, default=AEPOConfig.eval_seed)
    parser.add_argument("--root", default="runs/peers")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument(
        "--summarise", action="store_true", help="only tabulate the curves in --root, finished or not"
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.eval_every < 1 or args.steps % args.eval_every:
        parser.error("--steps must be a positive multiple of --eval-every")
    torch.set_num_threads(args.threads)
    root = Path(args.root)
    runs = []
    for algorithm in args.algorithms:
        for seed in args.seeds:
            path = run_path(args, algorithm, seed)
            done = path.exists() and read_json(path)
            if done and (args.summarise or (done["finished"] and done["steps"][-1] == args.steps)):
                runs.append(Run(**done))
            elif not args.summarise:
                runs.append(train_and_evaluate(args, algorithm, seed, path))
    dataset = load_dataset(args.dataset)
    returns = np.array([float(np.sum(e.rewards)) for e in dataset.iterate_episodes()])
    data_score = float(normalized_score(returns, *scores_of(dataset)).mean())
    table = summary(runs, data_score)
    atomic_write(root / "summary.md", (table + "\n").encode())
    atomic_write(root / "learning_curves.png", figure(runs, data_score))
    print(table)


if __name__ == "__main__":
    main()
