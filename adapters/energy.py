"""Critics as energies: E(a | s) = −Q(s, a) / scale, lower is better.

The core (:mod:`energy_guidance`) calls an energy as ``energy(x0, cond)``; in offline RL the
sample x0 is a batch of actions (B, d) and the condition is the batch of states (B, k). A critic
here is any callable ``q(states, actions)`` returning

    (B,)      one Q value per pair, or (B, 1);
    (K, B)    an ensemble of K heads (twin critics: K = 2), reduced by min (default) or mean.

Taking the min over heads is the pessimistic estimate that IQL and CQL also bootstrap with.
For a :class:`~energy_guidance.adapters.Critic` the energy is
``critic_energy(critic.q_values, baseline=critic.baseline)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

from torch import Tensor

Reduction = Literal["min", "mean"]
REDUCTIONS = get_args(Reduction)


def reduce_critic(values: Tensor, batch: int, reduce: str = "min") -> Tensor:
    """Check a critic's output for a batch of ``batch`` pairs and reduce ensembles to (B,)."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    if not isinstance(values, Tensor):
        raise TypeError(f"the critic must return a torch.Tensor, got {type(values).__name__}")
    if values.shape == (batch,):
        return values
    if values.shape == (batch, 1):
        return values[:, 0]
    if values.dim() == 2 and values.shape[1] == batch:
        return values.min(0).values if reduce == "min" else values.mean(0)
    raise ValueError(
        f"the critic returned shape {tuple(values.shape)} for a batch of {batch} (state, action) pairs; "
        f"expected ({batch},), ({batch}, 1) or (K, {batch}) for an ensemble of K heads"
    )


def critic_energy(
    q: Callable[[Tensor, Tensor], Tensor],
    reduce: str = "min",
    scale: float = 1.0,
    baseline: Callable[[Tensor], Tensor] | None = None,
) -> Callable[[Tensor, Tensor], Tensor]:
    """The energy ``energy(actions, states) -> (B,)`` = −(reduce_K Q_K(s, a) − b(s)) / ``scale``.

    ``scale`` > 0 divides Q so that β is measured in units of a chosen Q spread. ``baseline``
    b(states) -> (B,) (e.g. IQL's V(s)) is an optional state-only offset: it changes neither the
    tilted policy μ(a | s)·exp(−β·E(a | s)) (normalised per state) nor any gradient in a, but it
    removes the large between-state variation of Q from the values, which makes the amortised
    intermediate energy much easier to regress. The energy is differentiable in the actions
    whenever the critic is.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")

    def energy(actions: Tensor, states: Tensor) -> Tensor:
        if states.shape[0] != actions.shape[0]:
            raise ValueError(
                f"got {actions.shape[0]} actions but {states.shape[0]} states; pass one state per action"
            )
        values = reduce_critic(q(states, actions), actions.shape[0], reduce)
        if baseline is not None:
            offset = baseline(states)
            if offset.shape != values.shape:
                raise ValueError(
                    f"the baseline returned shape {tuple(offset.shape)}, expected {tuple(values.shape)}"
                )
            values = values - offset.detach()
        return -values / scale

    return energy
