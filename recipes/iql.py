"""Implicit Q-Learning (Kostrikov, Nair & Levine 2021, arXiv 2110.06169), CORL-style.

    L_V   = E_{(s,a)~D} [ L_2^τ(Q_target(s, a) − V(s)) ],      L_2^τ(u) = |τ − 1(u < 0)|·u²
    L_Q   = E_{(s,a,r,s')~D} [ (r + γ·(1 − done)·V(s') − Q_i(s, a))² ]   for both heads i
    L_π   = E_{(s,a)~D} [ exp(β_AWR·(Q_target(s, a) − V(s))) · (−log π(a | s)) ]   (AWR)

With τ > 1/2, V is an upper expectile of Q over the data's actions, so Q backs up values of
in-distribution actions only. The target critic is a Polyak average of Q. (The AEPO slides write
L_2^τ(V − Q); we follow the IQL paper's sign, u = Q − V, which makes V the *upper* expectile.)

IQL implements :class:`~energy_guidance.recipes.trainers.TrainableCritic`: ``q_values`` are the
target heads, ``baseline`` is V and ``act`` the AWR policy;
``critic_energy(iql.q_values, baseline=iql.baseline)`` is its energy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

from energy_guidance.training import gradient_step

from .networks import DeterministicPolicy, GaussianPolicy, TwinQ, ValueFunction, polyak_update
from .transitions import Transitions

Actor = Literal["gaussian", "deterministic"]
ACTORS = get_args(Actor)


@dataclass
class IQLConfig:
    """IQL's settings (CORL's defaults)."""

    discount: float = 0.99  # γ
    expectile: float = 0.7  # τ of L_2^τ
    polyak: float = 0.005  # target-network update rate
    awr_temperature: float = 3.0  # β of the AWR weights exp(β·A)
    max_weight: float = 100.0  # AWR weights are clipped here
    actor: Actor = "gaussian"  # "gaussian" (log-likelihood) or "deterministic" (squared error)
    hidden: int = 256  # MLP width of Q, V and the actor
    depth: int = 2  # their hidden layers
    lr: float = 3e-4  # Adam learning rate


def expectile_loss(diff: Tensor, expectile: float) -> Tensor:
    """mean(|τ − 1(u < 0)|·u²) over u = ``diff`` = Q − V (IQL's asymmetric L2)."""
    weight = (expectile - (diff < 0).to(diff.dtype)).abs()
    return (weight * diff.pow(2)).mean()


def awr_loss(bc_losses: Tensor, advantages: Tensor, temperature: float, max_weight: float) -> Tensor:
    """mean(min(exp(β·A), max_weight) · ℓ_BC): advantage-weighted regression; A is not differentiated."""
    weights = torch.exp(temperature * advantages.detach()).clamp(max=max_weight)
    return (weights * bc_losses).mean()


class IQL(nn.Module):
    """Twin Q, its Polyak target, V and an AWR actor; ``update(batch)`` takes one step of each."""

    Config: ClassVar[type] = IQLConfig
    policy_name: ClassVar[str] = "iql_awr"
    policy_label: ClassVar[str] = "IQL policy (AWR)"

    def __init__(self, obs_dim: int, act_dim: int, config: IQLConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or IQLConfig()
        if config.actor not in ACTORS:
            raise ValueError(f"actor must be one of {ACTORS}, got {config.actor!r}")
        if not 0 < config.expectile < 1:
            raise ValueError(f"the expectile τ must be in (0, 1), got {config.expectile}")
        self.q = TwinQ(obs_dim, act_dim, config.hidden, config.depth)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.v = ValueFunction(obs_dim, config.hidden, config.depth)
        policy = GaussianPolicy if config.actor == "gaussian" else DeterministicPolicy
        self.actor = policy(obs_dim, act_dim, config.hidden, config.depth)
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            "q": torch.optim.Adam(self.q.parameters(), lr=config.lr),
            "v": torch.optim.Adam(self.v.parameters(), lr=config.lr),
            "actor": torch.optim.Adam(self.actor.parameters(), lr=config.lr),
        }

    def _bc_losses(self, states: Tensor, actions: Tensor) -> Tensor:
        if isinstance(self.actor, GaussianPolicy):
            return -self.actor.log_prob(states, actions)
        return (self.actor.act(states) - actions).pow(2).sum(-1)

    def update(self, batch: Transitions, generator: torch.Generator | None = None) -> dict[str, float]:
        """One gradient step on L_V, L_Q and L_π, then the target update; returns the losses.

        IQL draws no random numbers here; ``generator`` is accepted for a common signature with CQL.
        """
        c = self.config
        with torch.no_grad():
            q_target = self.q_target(batch.observations, batch.actions).min(0).values
            next_v = self.v(batch.next_observations)
            target = batch.rewards + c.discount * (1 - batch.terminals) * next_v
        advantage = q_target - self.v(batch.observations)
        v_loss = gradient_step(self.optimizers["v"], expectile_loss(advantage, c.expectile))
        q_pred = self.q(batch.observations, batch.actions)
        q_loss = gradient_step(self.optimizers["q"], (q_pred - target).pow(2).mean(1).sum())
        bc = self._bc_losses(batch.observations, batch.actions)
        actor_loss = gradient_step(
            self.optimizers["actor"], awr_loss(bc, advantage, c.awr_temperature, c.max_weight)
        )
        polyak_update(self.q_target, self.q, c.polyak)
        return {"v_loss": v_loss, "q_loss": q_loss, "actor_loss": actor_loss}

    def q_values(self, states: Tensor, actions: Tensor) -> Tensor:
        """The target heads Q̄_1, Q̄_2(s, a), (2, B): the critic that V was fitted against."""
        return self.q_target(states, actions)

    def baseline(self, states: Tensor) -> Tensor:
        """V(s), the upper expectile of Q over the data's actions at s."""
        return self.v(states)

    @torch.no_grad()
    def act(self, states: Tensor) -> Tensor:
        """IQL's own (AWR) policy: the actor's mean action in [-1, 1]^d."""
        return self.actor.act(states)
