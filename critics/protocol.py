"""The :class:`Critic` protocol: what the AEPO recipe needs of an offline-RL critic.

A critic is an ``nn.Module`` (its weights and target networks are checkpointed as one module)
that learns Q from transitions and has a policy of its own. The recipe uses it through this
protocol only, so a new critic is one module implementing it plus its line in
:data:`critics.CRITICS` (and a field named like that line in ``recipes.aepo.AEPOConfig`` holding
its ``Config``, for its command-line options).
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor

from .transitions import Transitions


@runtime_checkable
class Critic(Protocol):
    """An offline-RL critic with its own policy, as the AEPO recipe uses it.

    Constructed as ``Critic(obs_dim, act_dim, config)`` with ``config`` an instance of its
    ``Config`` dataclass (``None`` for the defaults). States are normalised observations (B, k);
    actions live in the box [-1, 1]^d.
    """

    Config: ClassVar[type]  # its settings dataclass
    policy_name: ClassVar[str]  # key of its own policy in results ("iql_awr")
    policy_label: ClassVar[str]  # that policy in printed tables ("IQL policy (AWR)")
    optimizers: dict[str, torch.optim.Optimizer]  # everything `update` steps; checkpointed with it

    def update(self, batch: Transitions, generator: torch.Generator | None = None) -> dict[str, float]:
        """One optimisation step of every part (critic, policy, targets) on ``batch``; its losses.
        Random numbers come from ``generator`` only, so that a resumed run is bit-identical."""
        ...

    def q_values(self, states: Tensor, actions: Tensor) -> Tensor:
        """Q(s, a) for the energy and the candidate selection, (K, B) for K heads (its targets)."""
        ...

    def baseline(self, states: Tensor) -> Tensor:
        """A state-only baseline b(s) (B,) subtracted from Q in the energy (IQL: V(s))."""
        ...

    def act(self, states: Tensor) -> Tensor:
        """Its own policy's actions (B, d) in [-1, 1]^d, without gradients."""
        ...
