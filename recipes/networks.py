"""The small MLPs shared by the critics and their policies (IQL, CQL)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def mlp(inputs: int, outputs: int, hidden: int = 256, depth: int = 2) -> nn.Sequential:
    """``depth`` hidden layers of width ``hidden`` with ReLU, then a linear output."""
    layers: list[nn.Module] = []
    width = inputs
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, outputs))
    return nn.Sequential(*layers)


class TwinQ(nn.Module):
    """Two independent critics Q_1, Q_2(s, a); ``forward`` returns both stacked, shape (2, B)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, depth: int = 2) -> None:
        super().__init__()
        self.q1 = mlp(obs_dim + act_dim, 1, hidden, depth)
        self.q2 = mlp(obs_dim + act_dim, 1, hidden, depth)

    def forward(self, states: Tensor, actions: Tensor) -> Tensor:
        x = torch.cat([states, actions], dim=1)
        return torch.stack([self.q1(x)[:, 0], self.q2(x)[:, 0]])


class ValueFunction(nn.Module):
    """V(s) -> (B,)."""

    def __init__(self, obs_dim: int, hidden: int = 256, depth: int = 2) -> None:
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden, depth)

    def forward(self, states: Tensor) -> Tensor:
        return self.net(states)[:, 0]


class GaussianPolicy(nn.Module):
    """π(a | s) = N(tanh(μ(s)), diag(exp(2·log_std))) with a state-independent log_std (as in CORL's IQL).

    Actions live in [-1, 1]^d (the recipes normalise the environment's bounds to that box);
    ``act`` returns the mean.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, depth: int = 2) -> None:
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden, depth)
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def distribution(self, states: Tensor) -> torch.distributions.Normal:
        mean = torch.tanh(self.net(states))
        return torch.distributions.Normal(mean, self.log_std.clamp(-20.0, 2.0).exp())

    def log_prob(self, states: Tensor, actions: Tensor) -> Tensor:
        return self.distribution(states).log_prob(actions).sum(-1)

    def act(self, states: Tensor) -> Tensor:
        return torch.tanh(self.net(states))


class DeterministicPolicy(nn.Module):
    """a = tanh(μ(s)); trained by weighted regression."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, depth: int = 2) -> None:
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden, depth)

    def act(self, states: Tensor) -> Tensor:
        return torch.tanh(self.net(states))


class TanhGaussianPolicy(nn.Module):
    """The SAC/CQL actor: a = tanh(u), u ~ N(μ(s), σ(s)²), with the log-density of a."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, depth: int = 2) -> None:
        super().__init__()
        self.net = mlp(obs_dim, 2 * act_dim, hidden, depth)

    def sample(
        self, states: Tensor, generator: torch.Generator | None = None, per_state: int = 1
    ) -> tuple[Tensor, Tensor]:
        """Reparameterised actions (B·n, d) and their log-densities log π(a | s) (B·n,): n =
        ``per_state`` draws for each state, in the order of ``states.repeat_interleave(n, 0)``
        (the network runs once per state)."""
        mean, log_std = self.net(states).chunk(2, dim=-1)
        std = log_std.clamp(-5.0, 2.0).exp()
        if per_state > 1:
            mean, std = mean.repeat_interleave(per_state, dim=0), std.repeat_interleave(per_state, dim=0)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        u = mean + std * noise
        # log N(u; μ, σ) − log|det ∂tanh/∂u|, with log(1 − tanh²u) = 2·(log 2 − u − softplus(−2u)).
        log_normal = (-0.5 * noise**2 - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_det = (2 * (math.log(2.0) - u - nn.functional.softplus(-2 * u))).sum(-1)
        return torch.tanh(u), log_normal - log_det

    def act(self, states: Tensor) -> Tensor:
        return torch.tanh(self.net(states).chunk(2, dim=-1)[0])


def polyak_update(target: nn.Module, source: nn.Module, rate: float) -> None:
    """θ_target ← (1 − rate)·θ_target + rate·θ_source."""
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters(), strict=True):
            t.lerp_(s, rate)
