"""Evaluating a policy over N episodes at once with gymnasium's vector environments.

Episode i runs in environment i of a ``SyncVectorEnv``, reset with seed ``seed + i``. The vector
environment steps every environment each call (in gymnasium ≥ 1.0 an environment whose episode
ended is reset on the following step, ``AutoresetMode.NEXT_STEP``); only each environment's
first episode is counted, and the policy sees only the observations of unfinished episodes, so
its batches are exactly those of running the N episodes side by side.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import numpy.typing as npt

from energy_guidance.progress import progress_bar


def normalized_score(returns: npt.ArrayLike, ref_min: float, ref_max: float) -> np.ndarray:
    """100·(R − R_random)/(R_expert − R_random)."""
    if ref_max == ref_min:
        raise ValueError("the reference scores are equal; the normalised score is undefined")
    return 100 * (np.asarray(returns, dtype=np.float64) - ref_min) / (ref_max - ref_min)


def evaluate(
    policy: Callable[[np.ndarray], np.ndarray],
    make_env: Callable[[], gym.Env],
    episodes: int,
    seed: int,
    *,
    desc: str = "evaluation",
    progress: bool = True,
) -> np.ndarray:
    """Undiscounted returns (episodes,) of ``policy`` (observations (B, ...) -> actions (B, ...))."""
    envs = gym.vector.SyncVectorEnv([make_env] * episodes, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    try:
        obs, _ = envs.reset(seed=[seed + i for i in range(episodes)])
        returns = np.zeros(episodes)
        active = np.ones(episodes, dtype=bool)
        space = envs.action_space
        if space.shape is None:
            raise TypeError(f"the actions must be arrays of a fixed shape, got the action space {space}")
        actions = np.zeros(space.shape, dtype=space.dtype)
        with progress_bar(desc=desc, progress=progress, unit="step", mininterval=1.0) as bar:
            while active.any():
                actions[active] = policy(obs[active])  # finished episodes' entries are ignored
                obs, rewards, terminated, truncated, _ = envs.step(actions)
                returns[active] += rewards[active]
                active &= ~(terminated | truncated)
                bar.update()
    finally:
        envs.close()
    return returns
