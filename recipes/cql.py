"""Conservative Q-Learning, CQL(H) (Kumar et al. 2020, arXiv 2006.04779), CORL-style.

A SAC actor-critic whose critic loss adds a conservative penalty, per head i:

    L_Q_i = E[(r + γ·(1 − done)·min_j Q_target_j(s', a') − Q_i(s, a))²] + α_CQL · P_i,   a' ~ π(· | s')
    P_i   = E_s[ T·log Σ_k exp((Q_i(s, a_k) − log μ(a_k | s)) / T) − Q_i(s, a_data) ]

The log-sum-exp is the importance-sampled soft maximum of Q over actions, with proposals μ:
uniform actions on [-1, 1]^d (log μ = −d·log 2) and the current policy at s and at s'
(a_k ~ π(· | s), π(· | s'), evaluated at s, log μ = log π). It pushes Q down on actions
the data does not support and up on the data's own actions. The actor maximises
E[min_i Q_i(s, ã) − α·log π(ã | s)] with α tuned to the target entropy −d.

CQL implements :class:`~energy_guidance.recipes.trainers.TrainableCritic`: ``q_values`` are the
target heads, ``baseline`` is min_i Q̄_i(s, π(s)) at the actor's own action and ``act`` the
actor's mean action.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from energy_guidance.training import gradient_step

from .networks import TanhGaussianPolicy, TwinQ, polyak_update
from .transitions import Transitions


@dataclass
class CQLConfig:
    """CQL's settings (CORL's defaults, α_CQL = 5)."""

    discount: float = 0.99  # γ
    polyak: float = 0.005  # target-network update rate
    cql_alpha: float = 5.0  # α_CQL, the penalty's weight
    temperature: float = 1.0  # T of the log-sum-exp
    num_samples: int = 10  # actions per proposal (uniform, π(s), π(s')) and state
    hidden: int = 256  # MLP width of Q and the actor
    depth: int = 2  # their hidden layers
    critic_lr: float = 3e-4  # Adam learning rate of Q
    actor_lr: float = 1e-4  # Adam learning rate of the actor and of log α


def cql_penalty(q_data: Tensor, q_sampled: Tensor, log_density: Tensor, temperature: float = 1.0) -> Tensor:
    """mean_s[T·logsumexp_k((Q(s, a_k) − log μ(a_k | s))/T) − Q(s, a_data)].

    q_data (B,): Q at the data's actions; q_sampled (B, n) and log_density (B, n): Q and the
    proposal log-density at n sampled actions per state.
    """
    soft_max = temperature * torch.logsumexp((q_sampled - log_density) / temperature, dim=1)
    return (soft_max - q_data).mean()


class CQL(nn.Module):
    """Twin Q with its Polyak target, a tanh-Gaussian actor and the entropy weight log α."""

    Config: ClassVar[type] = CQLConfig
    policy_name: ClassVar[str] = "cql_actor"
    policy_label: ClassVar[str] = "CQL policy (SAC actor)"

    def __init__(self, obs_dim: int, act_dim: int, config: CQLConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CQLConfig()
        self.act_dim = act_dim
        self.q = TwinQ(obs_dim, act_dim, config.hidden, config.depth)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.actor = TanhGaussianPolicy(obs_dim, act_dim, config.hidden, config.depth)
        self.log_alpha = nn.Parameter(torch.zeros(()))
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            "q": torch.optim.Adam(self.q.parameters(), lr=config.critic_lr),
            "actor": torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr),
            "alpha": torch.optim.Adam([self.log_alpha], lr=config.actor_lr),
        }

    def update(self, batch: Transitions, generator: torch.Generator | None = None) -> dict[str, float]:
        """One step on the actor, α, and the penalised critic, then the target update."""
        c = self.config
        s, a = batch.observations, batch.actions
        b, d, n = len(batch), self.act_dim, c.num_samples

        # Actor and entropy weight.
        a_pi, log_pi = self.actor.sample(s, generator)
        alpha = self.log_alpha.exp().detach()
        self.q.requires_grad_(False)  # the actor's loss differentiates Q in its actions only
        q_pi = self.q(s, a_pi).min(0).values
        self.q.requires_grad_(True)
        actor_loss = gradient_step(self.optimizers["actor"], (alpha * log_pi - q_pi).mean())
        alpha_loss = -(self.log_alpha * (log_pi.detach() - d)).mean()  # target entropy −d
        gradient_step(self.optimizers["alpha"], alpha_loss)

        # Critic: TD error plus the conservative penalty.
        with torch.no_grad():
            next_a, _ = self.actor.sample(batch.next_observations, generator)
            next_q = self.q_target(batch.next_observations, next_a).min(0).values
            target = batch.rewards + c.discount * (1 - batch.terminals) * next_q
            s_rep = s.repeat_interleave(n, dim=0)
            uniform = torch.rand((b * n, d), generator=generator).to(s) * 2 - 1
            a_cur, log_cur = self.actor.sample(s, generator, per_state=n)
            a_next, log_next = self.actor.sample(batch.next_observations, generator, per_state=n)
        q_data = self.q(s, a)
        td_loss = (q_data - target).pow(2).mean(1).sum()
        sampled = torch.cat([uniform, a_cur, a_next])
        q_sampled = self.q(torch.cat([s_rep] * 3), sampled)  # (2, 3·B·n)
        q_sampled = torch.cat(q_sampled.reshape(2, 3, b, n).unbind(1), dim=2)  # (2, B, 3n)
        log_density = torch.cat(
            [torch.full((b, n), -d * math.log(2.0)).to(s), log_cur.reshape(b, n), log_next.reshape(b, n)],
            dim=1,
        )
        penalty = cql_penalty(q_data[0], q_sampled[0], log_density, c.temperature) + cql_penalty(
            q_data[1], q_sampled[1], log_density, c.temperature
        )
        q_loss = gradient_step(self.optimizers["q"], td_loss + c.cql_alpha * penalty)

        polyak_update(self.q_target, self.q, c.polyak)
        return {
            "q_loss": q_loss,
            "td_loss": td_loss.item(),
            "cql_penalty": penalty.item(),
            "actor_loss": actor_loss,
            "alpha": float(alpha),
        }

    def q_values(self, states: Tensor, actions: Tensor) -> Tensor:
        """The target heads Q̄_1, Q̄_2(s, a), (2, B)."""
        return self.q_target(states, actions)

    def baseline(self, states: Tensor) -> Tensor:
        """min_i Q̄_i(s, π(s)): the value of the actor's own (mean) action, a state-only offset."""
        return self.q_target(states, self.actor.act(states)).min(0).values

    @torch.no_grad()
    def act(self, states: Tensor) -> Tensor:
        """CQL's own policy: the actor's deterministic (tanh-mean) action."""
        return self.actor.act(states)
