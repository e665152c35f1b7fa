"""A run's inputs: the data set (normalised observations, actions in [-1, 1], optionally scaled
rewards) on the run's device, and the environment it is evaluated in, checked against each other.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from . import cli
from .config import AEPOConfig
from .data import ActionScaler, load_dataset, load_transitions, reference_scores
from .evaluation import normalized_score
from .transitions import Transitions


@dataclass
class Normalizer:
    """Observation standardisation measured on the data set (on the run's device)."""

    mean: Tensor
    std: Tensor

    def __call__(self, obs) -> Tensor:
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.mean.device)
        return (obs - self.mean) / self.std

    def inverse(self, states: Tensor) -> Tensor:
        """The observations σ·s + μ of standardised states ``states`` (B, k), differentiably."""
        return states * self.std + self.mean


def reward_scale(returns: np.ndarray) -> float:
    """IQL's reward normalisation for locomotion: 1000 / (max − min episode return of the data).

    It makes the scale of Q, hence the meaning of IQL's AWR temperature, the same on every data
    set; the guidance is unaffected (β is in units of Q's spread, see the module docstring)."""
    spread = float(np.max(returns) - np.min(returns))
    if not spread > 0:
        raise ValueError("reward normalisation 'returns' needs episodes of different returns")
    return 1000.0 / spread


@dataclass
class Inputs:
    """The validated inputs of a run: the data (normalised) and the evaluation environment."""

    data: Transitions
    make_env: typing.Callable[[], gym.Env]
    env_id: str
    refs: tuple[float, float] | None
    scaler: ActionScaler
    normalizer: Normalizer
    reward_scale: float  # the rewards of ``data`` are the data set's times this
    dataset_score: float | None  # the data set's mean episode return, normalised (None: no refs)


class InputError(cli.UserError):
    """The data set and the environment do not fit each other or the recipe."""


def load_inputs(config: AEPOConfig, device: torch.device | str = "cpu") -> Inputs:
    """Load the data set and the environment, check that they match (clear errors otherwise: an
    :class:`InputError` for a data set and environment that do not fit), put the data on ``device``."""
    try:
        return _load_inputs(config, device)
    except (ValueError, TypeError, gym.error.Error) as error:
        if isinstance(error, cli.UserError):
            raise
        env = config.env or "its own environment"
        raise InputError(f"data set {config.dataset!r} with {env}: {error}") from error


def _load_inputs(config: AEPOConfig, device: torch.device | str) -> Inputs:
    dataset = load_dataset(config.dataset)
    returns = np.array([float(np.sum(e.rewards)) for e in dataset.iterate_episodes()])

    def make_env() -> gym.Env:
        return gym.make(config.env) if config.env else dataset.recover_environment()

    env = make_env()
    data = load_transitions(dataset, env)  # checks shapes against env and finiteness
    data = Transitions(*(getattr(data, f.name).to(device) for f in dataclasses.fields(data)))
    normalizer = Normalizer(data.observations.mean(0), data.observations.std(0).clamp_min(1e-3))
    scale = reward_scale(returns) if config.reward_normalization == "returns" else 1.0
    data = Transitions(
        normalizer(data.observations),
        data.actions,
        data.rewards * scale,
        normalizer(data.next_observations),
        data.terminals,
    )
    env_id = env.spec.id if env.spec else str(env)
    env.close()
    scaler = ActionScaler.from_space(env.action_space)
    refs = reference_scores(dataset)
    dataset_score = None if refs is None else float(normalized_score(returns, *refs).mean())
    return Inputs(data, make_env, env_id, refs, scaler, normalizer, scale, dataset_score)
