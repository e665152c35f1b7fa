"""Minari loading, checks and the normalised score."""

import gymnasium as gym
import minari
import numpy as np
import pytest
from minari.data_collector import EpisodeBuffer

from energy_guidance.recipes.data import (
    ActionScaler,
    check_compatible,
    load_dataset,
    load_transitions,
    pendulum_expert,
    reference_scores,
)
from energy_guidance.recipes.evaluation import normalized_score

from .conftest import TINY


def test_built_dataset_loads_with_reference_scores(tiny_dataset):
    dataset = load_dataset(TINY, build=False)
    assert dataset.total_episodes == 4 and dataset.total_steps == 800
    random_score, expert_score = reference_scores(dataset)
    assert random_score < expert_score
    env = dataset.recover_environment()
    data = load_transitions(dataset, env)
    assert len(data) == 800 and data.obs_dim == 3 and data.act_dim == 1
    assert data.actions.abs().max() <= 1  # [-2, 2] torques scaled to [-1, 1]
    assert data.terminals.sum() == 0  # Pendulum only truncates
    first = next(iter(dataset.iterate_episodes()))
    assert np.allclose(data.next_observations[:199].numpy(), first.observations[1:200], atol=1e-6)


def test_missing_dataset_says_how_to_get_it(minari_root):
    with pytest.raises(FileNotFoundError, match=r"minari download mujoco/hopper/medium-v0") as error:
        load_dataset("mujoco/hopper/medium-v0")
    assert "MINARI_DATASETS_PATH" in str(error.value) and "energy_guidance.recipes.data build" in str(
        error.value
    )


def test_shape_mismatch_with_the_environment(tiny_dataset):
    with pytest.raises(ValueError, match=r"observation_space mismatch.*\(3,\).*\(2,\)"):
        check_compatible(tiny_dataset, gym.make("MountainCarContinuous-v0"))


@pytest.mark.filterwarnings("ignore:.*is set to None")
def test_nan_rewards_are_rejected(minari_root):
    env = gym.make("Pendulum-v1")
    obs = np.zeros((4, 3), dtype=np.float32)
    rewards = [0.0, float("nan"), 0.0]
    buffer = EpisodeBuffer(
        id=0,
        observations=obs,
        actions=np.zeros((3, 1), np.float32),
        rewards=rewards,
        terminations=[False] * 3,
        truncations=[False, False, True],
    )
    dataset = minari.create_dataset_from_buffers("test/pendulum/nan-v0", buffer=[buffer], env=env)
    with pytest.raises(ValueError, match=r"episode 0 .* 1 NaN or infinite rewards"):
        load_transitions(dataset, env)


def test_normalized_score_and_action_scaling():
    assert np.allclose(normalized_score([-1000.0, -100.0, -550.0], -1000.0, -100.0), [0.0, 100.0, 50.0])
    scaler = ActionScaler(np.array([-2.0, 0.0]), np.array([2.0, 1.0]))
    raw = np.array([[-2.0, 0.0], [1.0, 0.25]])
    assert np.allclose(scaler.to_unit(raw), [[-1.0, -1.0], [0.5, -0.5]])
    assert np.allclose(scaler.from_unit(scaler.to_unit(raw)), raw)


def test_expert_controller_beats_random_by_far():
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=0)
    total = 0.0
    for _ in range(200):
        obs, reward, *_ = env.step(np.array([pendulum_expert(obs)], dtype=np.float32))
        total += reward
    # Random actions score about −1200; swinging up and balancing within 200 steps, above −400.
    assert total > -400
    assert np.cos(np.arctan2(obs[1], obs[0])) > 0.99  # it ends upright


@pytest.mark.filterwarnings("ignore:.*is set to None")
def test_terminations_become_terminals_and_truncations_do_not(minari_root):
    env = gym.make("Pendulum-v1")
    obs = np.arange(12, dtype=np.float32).reshape(4, 3)
    episodes = [
        EpisodeBuffer(
            id=i,
            observations=obs,
            actions=np.full((3, 1), 2.0, np.float32),
            rewards=[1.0, 2.0, 3.0],
            terminations=[False, False, terminated],
            truncations=[False, False, not terminated],
        )
        for i, terminated in enumerate([True, False])
    ]
    dataset = minari.create_dataset_from_buffers("test/pendulum/ends-v0", buffer=episodes, env=env)
    data = load_transitions(dataset, env)
    assert data.terminals.tolist() == [0, 0, 1, 0, 0, 0]
    assert data.rewards.tolist() == [1, 2, 3, 1, 2, 3]
    assert data.actions.tolist() == [[1.0]] * 6  # torque 2 is the top of [-2, 2]
    assert np.array_equal(data.next_observations[:3].numpy(), obs[1:])
