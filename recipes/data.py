"""Offline data from Minari: loading with clear errors, checks, transitions, reference scores.

Any dataset present under ``MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``) loads by id,
e.g. ``mujoco/hopper/medium-v0`` copied from a machine that downloaded it. This machine cannot
download, so the project also builds its own data sets without jax, from
``minari.data_collector.EpisodeBuffer`` objects and ``minari.create_dataset_from_buffers``:

``energy-guidance/pendulum/mixed-v0`` (:data:`DEFAULT_DATASET`)
    Pendulum-v1, 100 episodes of 200 steps. Each episode draws ε ~ U[0.2, 1]; at every step the
    action is uniform on [-2, 2] with probability ε, otherwise a scripted swing-up controller's
    torque plus N(0, 0.3²) noise. Random and expert reference returns are measured (uniform
    random policy; the noiseless controller) and stored as ref_min_score / ref_max_score.

Normalised score (D4RL): 100·(R − R_random)/(R_expert − R_random).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import minari
import numpy as np
import torch
from minari.data_collector import EpisodeBuffer

from . import cli
from .datasets import DATASET_IDS, build_dataset, datasets_root, stage_dataset
from .transitions import Transitions

DEFAULT_DATASET = "energy-guidance/pendulum/mixed-v0"


# ---------------------------------------------------------------------------------------------
# The embedded Pendulum data set


def pendulum_expert(obs: np.ndarray) -> float:
    """A swing-up controller for Pendulum-v1 (θ = 0 upright; θ̈ = 15·sin θ + 3u, |u| ≤ 2).

    Far from the top it pumps the energy H = ½θ̇² + 15·cos θ towards its upright value 15
    (dH/dt = 3u·θ̇, so u ∝ (15 − H)·sign θ̇); near the top (cos θ > 0.85) a PD law
    u = −10·θ − 2·θ̇ balances. Its measured return, and a random policy's, are the data set's
    reference scores (docs/rl.md, "Embedded default").
    """
    c, s, w = (float(v) for v in obs)
    theta = np.arctan2(s, c)
    if c > 0.85:
        u = -(10.0 * theta + 2.0 * w)
    else:
        u = (15.0 - (0.5 * w**2 + 15.0 * c)) * (1.0 if w >= 0 else -1.0)
    return float(np.clip(u, -2.0, 2.0))


def collect(
    env: gym.Env,
    policy: Callable[[np.ndarray, np.random.Generator, int], np.ndarray],
    episodes: int,
    seed: int,
) -> tuple[list[EpisodeBuffer], np.ndarray]:
    """Run ``policy(obs, rng, episode)`` for ``episodes`` episodes; the buffers and the returns."""
    rng = np.random.default_rng(seed)
    buffers, returns = [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        observations, actions, rewards, terms, truncs = [obs], [], [], [], []
        done = False
        while not done:
            action = np.asarray(policy(obs, rng, i), dtype=env.action_space.dtype)
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(float(reward))
            terms.append(bool(terminated))
            truncs.append(bool(truncated))
            done = terminated or truncated
        buffers.append(
            EpisodeBuffer(
                id=i,
                seed=seed + i,
                observations=np.stack(observations),
                actions=np.stack(actions),
                rewards=rewards,
                terminations=terms,
                truncations=truncs,
            )
        )
        returns.append(sum(rewards))
    return buffers, np.asarray(returns)


def build_pendulum_mixed(
    dataset_id: str = DEFAULT_DATASET,
    *,
    episodes: int = 100,
    reference_episodes: int = 100,
    eps_range: tuple[float, float] = (0.2, 1.0),
    noise: float = 0.3,
    seed: int = 0,
) -> minari.MinariDataset:
    """Build the mixed-quality Pendulum data set described in the module docstring."""
    env = gym.make("Pendulum-v1")
    lo, hi = eps_range
    eps = np.random.default_rng(seed).uniform(lo, hi, size=episodes)

    def behaviour(obs, rng, episode):
        if rng.random() < eps[episode]:
            return rng.uniform(-2.0, 2.0, size=1)
        return np.clip([pendulum_expert(obs) + noise * rng.normal()], -2.0, 2.0)

    buffers, _ = collect(env, behaviour, episodes, seed)
    # Reference policies run on their own seeds, disjoint from the data's and the evaluation's.
    _, random_returns = collect(
        env, lambda o, rng, i: rng.uniform(-2.0, 2.0, size=1), reference_episodes, 10**6
    )
    _, expert_returns = collect(
        env, lambda o, rng, i: np.array([pendulum_expert(o)]), reference_episodes, 2 * 10**6
    )
    return stage_dataset(  # built aside and moved into place: never half-written
        dataset_id,
        lambda: minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=buffers,
            env=env,
            algorithm_name=f"scripted swing-up + N(0,{noise}^2); uniform actions w.p. eps~U{eps_range}",
            ref_min_score=float(random_returns.mean()),
            ref_max_score=float(expert_returns.mean()),
            description=__doc__.split("``energy-guidance/pendulum/mixed-v0``")[1]
            .split("Normalised")[0]
            .strip(),
        ),
    )


# Every data set this project builds itself: the Pendulum set above and the D4RL-style MuJoCo
# locomotion sets of recipes/datasets.py (which owns their environments and levels).
BUILDERS: dict[str, Callable[..., minari.MinariDataset]] = {
    DEFAULT_DATASET: build_pendulum_mixed,
    **dict.fromkeys(DATASET_IDS, build_dataset),
}


# ---------------------------------------------------------------------------------------------
# Loading and checking


def load_dataset(dataset_id: str, *, build: bool = True) -> minari.MinariDataset:
    """``minari.load_dataset(dataset_id)`` for a locally present data set (never downloads).

    The project's own ids (:data:`BUILDERS`) are built on first use when ``build`` is true; any
    other missing id raises FileNotFoundError saying how to get it.
    """
    try:
        return minari.load_dataset(dataset_id)
    except FileNotFoundError:
        if build and dataset_id in BUILDERS:
            return BUILDERS[dataset_id](dataset_id)
        raise _missing(dataset_id) from None
    except ValueError as error:  # minari: an id of the wrong form
        raise FileNotFoundError(f"{error}. {_missing(dataset_id)}") from None


def build_command(dataset_id: str) -> str:
    """The command that builds one of :data:`BUILDERS`' data sets."""
    module = "data" if dataset_id == DEFAULT_DATASET else "datasets"
    return f"python -m energy_guidance.recipes.{module} build {dataset_id}"


def _missing(dataset_id: str) -> FileNotFoundError:
    if dataset_id in BUILDERS:
        return FileNotFoundError(
            f"Minari dataset {dataset_id!r} is not present under {datasets_root()}; build it with "
            f"`{build_command(dataset_id)}`"
        )
    return FileNotFoundError(
        f"Minari dataset {dataset_id!r} is not present under {datasets_root()} "
        "(the MINARI_DATASETS_PATH environment variable). This machine cannot download. "
        f"On a machine with internet access run `minari download {dataset_id}` and copy "
        f"<its datasets folder>/{dataset_id} to {datasets_root()}/{dataset_id}, or point "
        "MINARI_DATASETS_PATH at a folder that holds it. Data sets this project builds itself: "
        f"{DEFAULT_DATASET} (`python -m energy_guidance.recipes.data build`) and the MuJoCo sets "
        "(`python -m energy_guidance.recipes.datasets build <id>`; `... datasets list` lists them)."
    )


def check_dataset(dataset_id: str) -> None:
    """Raise :func:`load_dataset`'s FileNotFoundError now when ``dataset_id`` is neither present
    nor one this project builds (so that a run fails before it writes anything)."""
    if dataset_id not in BUILDERS:
        load_dataset(dataset_id, build=False)


@dataclass
class ActionScaler:
    """Maps the environment's action box [low, high] to [-1, 1]^d and back."""

    low: np.ndarray
    high: np.ndarray

    @classmethod
    def from_space(cls, space: gym.Space) -> ActionScaler:
        if not isinstance(space, gym.spaces.Box):
            raise TypeError(f"only continuous (Box) action spaces are supported, got {space}")
        if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
            raise ValueError(f"the action space {space} must have finite bounds")
        return cls(space.low.astype(np.float64), space.high.astype(np.float64))

    def to_unit(self, actions: np.ndarray) -> np.ndarray:
        return 2 * (actions - self.low) / (self.high - self.low) - 1

    def from_unit(self, actions: np.ndarray) -> np.ndarray:
        return self.low + (np.clip(actions, -1, 1) + 1) * (self.high - self.low) / 2


def check_compatible(dataset: minari.MinariDataset, env: gym.Env) -> None:
    """The data set's observation and action shapes must match the evaluation environment's."""
    for name in ("observation_space", "action_space"):
        space = getattr(env, name)
        if not isinstance(space, gym.spaces.Box):
            raise TypeError(f"only Box {name}s are supported; the environment has {space}")
        data_space = getattr(dataset, name)
        if getattr(data_space, "shape", None) != space.shape:
            raise ValueError(
                f"{name} mismatch: the dataset {dataset.spec.dataset_id!r} has shape "
                f"{getattr(data_space, 'shape', data_space)} but the environment "
                f"{env.spec.id if env.spec else env} has {space.shape}"
            )


def load_transitions(dataset: minari.MinariDataset, env: gym.Env) -> Transitions:
    """All transitions of ``dataset`` as float32 tensors, actions scaled to [-1, 1]^d.

    Raises a ValueError naming the episode if any array has the wrong shape or holds NaN or inf.
    """
    check_compatible(dataset, env)
    scaler = ActionScaler.from_space(env.action_space)
    obs_shape, act_shape = env.observation_space.shape, scaler.low.shape
    if obs_shape is None:
        raise TypeError(f"observations of a fixed shape were expected, got {env.observation_space}")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "act", "rew", "next", "term")}
    for episode in dataset.iterate_episodes():
        obs, act = np.asarray(episode.observations), np.asarray(episode.actions)
        rew, term = np.asarray(episode.rewards, dtype=np.float64), np.asarray(episode.terminations)
        steps = len(rew)
        if obs.shape != (steps + 1, *obs_shape) or act.shape != (steps, *act_shape):
            raise ValueError(
                f"episode {episode.id}: observations {obs.shape} / actions {act.shape} do not match "
                f"{steps} steps of an environment with observations {obs_shape} and actions {act_shape}"
            )
        for name, values in (("rewards", rew), ("observations", obs), ("actions", act)):
            bad = ~np.isfinite(values)
            if bad.any():
                raise ValueError(
                    f"episode {episode.id} of {dataset.spec.dataset_id!r} has {int(bad.sum())} NaN or "
                    f"infinite {name}; clean the data set (e.g. dataset.filter_episodes) before training"
                )
        parts["obs"].append(obs[:-1].reshape(steps, -1))
        parts["next"].append(obs[1:].reshape(steps, -1))
        parts["act"].append(scaler.to_unit(act).reshape(steps, -1))
        parts["rew"].append(rew)
        parts["term"].append(term.astype(np.float64))
    if not parts["rew"]:
        raise ValueError(f"the dataset {dataset.spec.dataset_id!r} has no episodes")

    def cat(key):
        return torch.from_numpy(np.concatenate(parts[key])).float()

    return Transitions(cat("obs"), cat("act"), cat("rew"), cat("next"), cat("term"))


def reference_scores(dataset: minari.MinariDataset) -> tuple[float, float] | None:
    """(ref_min_score, ref_max_score) from the data set's metadata, or None when absent."""
    meta = dataset.storage.metadata
    lo, hi = meta.get("ref_min_score"), meta.get("ref_max_score")
    if lo is None or hi is None:
        return None
    return float(lo), float(hi)


def main(argv: list[str] | None = None) -> None:
    """The command line (one-line errors, ``--log-level`` / ``-q``: :mod:`.cli`)."""
    cli.command("energy_guidance.recipes.data", argv, _main)


def _main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m energy_guidance.recipes.data",
        description="Build or inspect the project's Minari data sets.",
        epilog=cli.LOGGING_HELP,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build a data set this project knows how to make")
    build.add_argument("dataset_id", nargs="?", default=DEFAULT_DATASET, choices=list(BUILDERS))
    build.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="Pendulum: episodes (default 100); MuJoCo sets: see "
        "python -m energy_guidance.recipes.datasets build --help",
    )
    info = sub.add_parser("info", help="print a locally present data set's size and reference scores")
    info.add_argument("dataset_id", nargs="?", default=DEFAULT_DATASET)
    args = parser.parse_args(argv)
    if args.command == "build":
        if args.episodes is not None and args.episodes < 1:
            parser.error(f"--episodes must be an integer >= 1, got {args.episodes}")
        kwargs = {} if args.episodes is None else {"episodes": args.episodes}
        dataset = BUILDERS[args.dataset_id](args.dataset_id, **kwargs)
    else:
        dataset = load_dataset(args.dataset_id, build=False)
    print(
        f"{dataset.spec.dataset_id}: {dataset.total_episodes} episodes, {dataset.total_steps} steps, "
        f"reference scores (random, expert) = {reference_scores(dataset)}, stored under {datasets_root()}"
    )


if __name__ == "__main__":
    main()
