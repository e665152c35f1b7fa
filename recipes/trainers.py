"""The offline-RL critics the AEPO recipe trains itself, and their registry.

    RecipeCritic                     the protocol the recipe uses (fit step, Q, baseline, policy)
    TrainableCritic                  a RecipeCritic class of the registry (its settings, its label)
    CRITICS                          name -> critic class: {"iql": IQL, "cql": CQL}
    OnObservations                   a critic that reads raw observations, used on standardised states

A trainable critic is an ``nn.Module`` (its weights and target networks are checkpointed as one
module) that learns Q from :class:`~energy_guidance.recipes.transitions.Transitions` and has a
policy of its own. It is an :class:`energy_guidance.adapters.Critic` (Q values and a baseline), so
``critic_energy(critic.q_values, baseline=critic.baseline)`` is its energy.

Adding a critic: one module with a class implementing :class:`TrainableCritic`, its line in
:data:`CRITICS`, and a field named like that line in ``AEPOConfig`` (recipes/config.py) holding its
``Config``, for its command-line options. Critics trained elsewhere need no trainer: an adapter in
:mod:`energy_guidance.adapters` (d3rlpy's IQL and CQL) makes them energies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from energy_guidance.adapters import Critic

from .cql import CQL
from .iql import IQL
from .transitions import Transitions


@runtime_checkable
class RecipeCritic(Critic, Protocol):
    """An offline-RL critic with its own policy, as the AEPO recipe trains and evaluates it.

    States are the recipe's standardised observations (B, k); actions live in the box [-1, 1]^d.
    ``q_values`` returns (K, B) for K heads (its targets).
    """

    optimizers: dict[str, torch.optim.Optimizer]  # everything `update` steps; checkpointed with it

    @property
    def policy_name(self) -> str:
        """The key of its own policy in results ("iql_awr")."""
        ...

    def update(self, batch: Transitions, generator: torch.Generator | None = None) -> dict[str, float]:
        """One optimisation step of every part (critic, policy, targets) on ``batch``; its losses.
        Random numbers come from ``generator`` only, so that a resumed run is bit-identical."""
        ...

    def act(self, states: Tensor) -> Tensor:
        """Its own policy's actions (B, d) in [-1, 1]^d, without gradients."""
        ...


@runtime_checkable
class TrainableCritic(RecipeCritic, Protocol):
    """A :class:`RecipeCritic` class of the registry, constructed as ``cls(obs_dim, act_dim,
    config)`` with ``config`` an instance of its ``Config`` dataclass (``None`` for the defaults).
    """

    Config: ClassVar[type]  # its settings dataclass
    policy_name: ClassVar[str]  # key of its own policy in results ("iql_awr")
    policy_label: ClassVar[str]  # that policy in printed tables ("IQL policy (AWR)")


CRITICS: dict[str, type[TrainableCritic]] = {"iql": IQL, "cql": CQL}


class OnObservations(nn.Module):
    """``critic`` learning from and reading observations o = observe(s) of the recipe's states s.

    The recipe's states are standardised observations (B, k); ``observe`` maps them back
    (``Normalizer.inverse``: o = σ·s + μ), so the critic's networks see the data set's raw
    observations, as d3rlpy's IQL does, while everything else (the behaviour model, the energy
    and its gradient in the actions, the policies) keeps the recipe's units:

        update(batch) = critic.update(batch with s, s' -> observe(s), observe(s'))
        q_values(s, a) = critic.q_values(observe(s), a),   baseline(s), act(s) likewise.

    It is a :class:`RecipeCritic` (its policy's name and its optimizers are the critic's); as an
    ``nn.Module`` holding the critic it is checkpointed and frozen with it.
    """

    def __init__(self, critic: TrainableCritic, observe: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        if not isinstance(critic, nn.Module):
            raise TypeError(f"a critic to checkpoint must be an nn.Module, got {type(critic).__name__}")
        self.critic, self.observe = critic, observe
        self.optimizers = critic.optimizers

    @property
    def policy_name(self) -> str:
        return self.critic.policy_name

    def update(self, batch: Transitions, generator: torch.Generator | None = None) -> dict[str, float]:
        """One step of the critic on ``batch`` with its states mapped to observations."""
        seen = Transitions(
            self.observe(batch.observations),
            batch.actions,
            batch.rewards,
            self.observe(batch.next_observations),
            batch.terminals,
        )
        return self.critic.update(seen, generator)

    def q_values(self, states: Tensor, actions: Tensor) -> Tensor:
        """The critic's heads at (observe(s), a), (K, B), differentiable in the actions."""
        return self.critic.q_values(self.observe(states), actions)

    def baseline(self, states: Tensor) -> Tensor:
        return self.critic.baseline(self.observe(states))

    @torch.no_grad()
    def act(self, states: Tensor) -> Tensor:
        return self.critic.act(self.observe(states))
