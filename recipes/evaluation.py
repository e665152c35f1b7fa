"""Evaluating a policy over N episodes, stepping the episodes in lock-step so the policy is batched."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm


def evaluate(
    policy: Callable[[np.ndarray], np.ndarray],
    make_env: Callable[[], gym.Env],
    episodes: int,
    seed: int,
    *,
    desc: str = "evaluation",
    progress: bool = True,
) -> np.ndarray:
    """Undiscounted returns (episodes,) of ``policy`` (observations (B, ...) -> actions (B, ...)).

    Episode i runs in its own environment reset with seed ``seed + i``; all unfinished episodes
    are passed to ``policy`` together, one environment step at a time.
    """
    envs = [make_env() for _ in range(episodes)]
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    returns = np.zeros(episodes)
    active = list(range(episodes))
    with tqdm(desc=desc, disable=not progress, unit="step", mininterval=1.0) as bar:
        while active:
            actions = policy(np.stack([obs[i] for i in active]))
            still = []
            for i, action in zip(active, actions, strict=True):
                obs[i], reward, terminated, truncated, _ = envs[i].step(action)
                returns[i] += float(reward)
                if not (terminated or truncated):
                    still.append(i)
            active = still
            bar.update()
    for env in envs:
        env.close()
    return returns
