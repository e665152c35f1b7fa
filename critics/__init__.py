"""Offline-RL critics, and their adapter to an energy for :mod:`energy_guidance`: E(a | s) = −Q(s, a).

    Critic                           the protocol the AEPO recipe uses (fit step, Q, baseline, policy)
    CRITICS                          name -> critic class: {"iql": IQL, "cql": CQL}
    IQL, IQLConfig                   implicit Q-learning with its AWR policy
    CQL, CQLConfig                   conservative Q-learning with its SAC actor
    critic_energy(q, reduce="min")   any critic q(states, actions) -> (B,) or (K, B) as an energy
    expectile_loss, awr_loss, cql_penalty   the losses, named as in the papers
    Transitions                      (s, a, r, s', done) tensors, what the critics train on

Adding a critic: one module with a class implementing :class:`Critic`, and its line in
:data:`CRITICS`. d3rlpy is not wrapped: it pins gymnasium==1.0.0 (docs/rl.md).
"""

from .cql import CQL, CQLConfig, cql_penalty
from .energy import REDUCTIONS, critic_energy, reduce_critic
from .iql import IQL, IQLConfig, awr_loss, expectile_loss
from .protocol import Critic
from .transitions import Transitions

CRITICS: dict[str, type[Critic]] = {"iql": IQL, "cql": CQL}

__all__ = [
    "CQL",
    "CRITICS",
    "IQL",
    "REDUCTIONS",
    "CQLConfig",
    "Critic",
    "IQLConfig",
    "Transitions",
    "awr_loss",
    "cql_penalty",
    "critic_energy",
    "expectile_loss",
    "reduce_critic",
]
