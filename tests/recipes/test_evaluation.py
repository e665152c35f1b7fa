"""evaluate(): N episodes side by side in a vector environment equal N separate episodes."""

import gymnasium as gym
import numpy as np

from energy_guidance.recipes.evaluation import evaluate


def _policy(obs: np.ndarray) -> np.ndarray:
    """CartPole: push toward the side the pole leans to, a little late (episodes of varied length)."""
    return (obs[:, 2] + 0.3 * obs[:, 3] > 0.05).astype(np.int64)


def test_returns_equal_separately_run_episodes_and_the_policy_sees_only_unfinished_ones():
    batches = []

    def policy(obs):
        batches.append(len(obs))
        return _policy(obs)

    returns = evaluate(policy, lambda: gym.make("CartPole-v1"), 6, seed=100, progress=False)
    expected = []
    for i in range(6):  # episode i alone, reset with seed 100 + i
        env = gym.make("CartPole-v1")
        obs, _ = env.reset(seed=100 + i)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(int(_policy(obs[None])[0]))
            total += reward
            done = terminated or truncated
        expected.append(total)
    assert np.array_equal(returns, expected)
    assert len(set(expected)) > 1  # episodes of different lengths: later ones outlive the first
    # One call per step of the longest episode; each with the episodes still running.
    assert len(batches) == max(expected)
    assert batches == [sum(length > step for length in expected) for step in range(len(batches))]
