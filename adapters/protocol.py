"""The :class:`Critic` protocol: what turns a critic into an energy.

A critic gives Q(s, a) for a batch of (state, action) pairs, possibly as an ensemble of K heads,
and a state-only baseline b(s) that :func:`~energy_guidance.adapters.critic_energy` subtracts
(it changes no gradient in the actions). Critics trained by this project's recipes
(:mod:`energy_guidance.recipes.trainers`) and critics trained elsewhere (d3rlpy's IQL and CQL,
:mod:`energy_guidance.adapters.d3rlpy_critic`) both implement it, so either becomes an energy as

    critic_energy(critic.q_values, baseline=critic.baseline)     # E(a | s) = −(Q(s, a) − b(s))
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Critic(Protocol):
    """A critic as an energy sees it: Q values and a state baseline, differentiable in the actions."""

    def q_values(self, states: Tensor, actions: Tensor) -> Tensor:
        """Q(s, a) for states (B, k) and actions (B, d): (B,), or (K, B) for K heads."""
        ...

    def baseline(self, states: Tensor) -> Tensor:
        """A state-only baseline b(s) (B,) subtracted from Q in the energy (IQL: V(s))."""
        ...
