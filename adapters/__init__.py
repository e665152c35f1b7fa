"""Offline-RL critics as energies for :mod:`energy_guidance`: E(a | s) = −Q(s, a).

    critic_energy(q, reduce="min")   any critic q(states, actions) -> (B,) or (K, B) as an energy
    IQL, IQLConfig                   implicit Q-learning with its AWR policy
    CQL, CQLConfig                   conservative Q-learning with its SAC actor
    expectile_loss, awr_loss, cql_penalty   the losses, named as in the papers

d3rlpy is not wrapped: it pins gymnasium==1.0.0 (docs/rl.md).
"""

from .batch import Transitions
from .cql import CQL, CQLConfig, cql_penalty
from .critic import REDUCTIONS, critic_energy, reduce_critic
from .iql import IQL, IQLConfig, awr_loss, expectile_loss

__all__ = [
    "CQL",
    "IQL",
    "REDUCTIONS",
    "CQLConfig",
    "IQLConfig",
    "Transitions",
    "awr_loss",
    "cql_penalty",
    "critic_energy",
    "expectile_loss",
    "reduce_critic",
]
