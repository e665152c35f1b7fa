"""The offline-RL critics the AEPO recipe trains itself, and their registry.

    TrainableCritic                  the protocol the recipe uses (fit step, Q, baseline, policy)
    CRITICS                          name -> critic class: {"iql": IQL, "cql": CQL}

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

from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor

from energy_guidance.adapters import Critic

from .cql import CQL
from .iql import IQL
from .transitions import Transitions


@runtime_checkable
class TrainableCritic(Critic, Protocol):
    """An offline-RL critic with its own policy, as the AEPO recipe uses it.

    Constructed as ``cls(obs_dim, act_dim, config)`` with ``config`` an instance of its
    ``Config`` dataclass (``None`` for the defaults). States are normalised observations (B, k);
    actions live in the box [-1, 1]^d. ``q_values`` returns (K, B) for K heads (its targets).
    """

    Config: ClassVar[type]  # its settings dataclass
    policy_name: ClassVar[str]  # key of its own policy in results ("iql_awr")
    policy_label: ClassVar[str]  # that policy in printed tables ("IQL policy (AWR)")
    optimizers: dict[str, torch.optim.Optimizer]  # everything `update` steps; checkpointed with it

    def update(self, batch: Transitions, generator: torch.Generator | None = None) -> dict[str, float]:
        """One optimisation step of every part (critic, policy, targets) on ``batch``; its losses.
        Random numbers come from ``generator`` only, so that a resumed run is bit-identical."""
        ...

    def act(self, states: Tensor) -> Tensor:
        """Its own policy's actions (B, d) in [-1, 1]^d, without gradients."""
        ...


CRITICS: dict[str, type[TrainableCritic]] = {"iql": IQL, "cql": CQL}
