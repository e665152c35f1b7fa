"""Critics trained with d3rlpy (IQL, CQL and other continuous-action Q-learners) as energies.

    critic = load_d3rlpy("iql.d3")          # a file written by d3rlpy's ``algo.save(path)``
    energy = critic_energy(critic.q_values, baseline=critic.baseline)   # E(a | s) = −(Q − b(s))

The critic takes states and actions in the units of the data set d3rlpy was trained on: the
algorithm's own observation and action scalers are applied here, with torch operations, so the
energy stays differentiable in the actions. ``q_values`` are d3rlpy's Q heads (its ``q_funcs``,
what ``predict_value`` averages), shape (K, B); reduce them with ``critic_energy(reduce=...)``
(``"mean"`` reproduces ``predict_value``). The baseline is IQL's V(s) where the algorithm has a
value function, otherwise min_k Q_k(s, π(s)) at the policy's greedy action (CQL, SAC, TD3+BC).

d3rlpy is the optional extra ``energy-guidance[d3rlpy]``. d3rlpy 2.8.1 pins ``gymnasium==1.0.0``,
older than the recipes' ``gymnasium>=1.1``, so install it in an environment without the ``rl``
extra. Loading a d3rlpy file unpickles it: load only files you trust.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def _d3rlpy():
    try:
        import d3rlpy
    except ImportError as error:
        raise ImportError(
            "loading a d3rlpy critic needs d3rlpy: pip install 'energy-guidance[d3rlpy]'"
        ) from error
    return d3rlpy


class D3rlpyCritic:
    """A trained continuous-action d3rlpy Q-learning algorithm as a :class:`Critic`.

    ``algo`` is the d3rlpy object (``d3rlpy.algos.IQL``, ``CQL``, …) with its networks built, e.g.
    from :func:`load_d3rlpy`. Its modules are put in evaluation mode; nothing here trains them.
    """

    def __init__(self, algo: Any) -> None:
        d3rlpy = _d3rlpy()
        if not isinstance(algo, d3rlpy.algos.QLearningAlgoBase):
            raise TypeError(
                f"expected a d3rlpy Q-learning algorithm (IQL, CQL, ...), got {type(algo).__name__}"
            )
        if algo.get_action_type() != d3rlpy.ActionSpace.CONTINUOUS:
            raise TypeError(f"{type(algo).__name__} has discrete actions; an energy needs continuous ones")
        if algo.impl is None:
            raise ValueError(f"the {type(algo).__name__} has no networks yet: fit it or build it first")
        self.algo = algo
        self.heads = algo.impl.q_function
        modules = algo.impl.modules
        self.value_function = getattr(modules, "value_func", None)  # IQL's V(s)
        for part in (self.heads, self.value_function, getattr(modules, "policy", None)):
            if part is not None:
                part.eval()
        self.dtype = next(self.heads.parameters()).dtype

    def _states(self, states: Tensor) -> Tensor:
        scaler = self.algo.observation_scaler
        states = states.to(self.dtype)
        return states if scaler is None else scaler.transform(states)

    def _actions(self, actions: Tensor) -> Tensor:
        scaler = self.algo.action_scaler
        actions = actions.to(self.dtype)
        return actions if scaler is None else scaler.transform(actions)

    def _heads(self, scaled_states: Tensor, scaled_actions: Tensor) -> Tensor:
        return torch.stack([q(scaled_states, scaled_actions).q_value[:, 0] for q in self.heads])

    def q_values(self, states: Tensor, actions: Tensor) -> Tensor:
        """Q_k(s, a) of every head, (K, B), for states (B, k) and actions (B, d) in data units."""
        return self._heads(self._states(states), self._actions(actions))

    def baseline(self, states: Tensor) -> Tensor:
        """V(s) (IQL), else min_k Q_k(s, π(s)) at the policy's greedy action; (B,), no gradient."""
        with torch.no_grad():
            scaled = self._states(states)
            if self.value_function is not None:
                return self.value_function(scaled)[:, 0]
            greedy = self.algo.impl.inner_predict_best_action(scaled)
            return self._heads(scaled, greedy).min(0).values


def load_d3rlpy(path: str | Path, device: str = "cpu:0") -> D3rlpyCritic:
    """The critic of a d3rlpy model file (``algo.save(path)``, read by ``d3rlpy.load_learnable``)."""
    d3rlpy = _d3rlpy()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no d3rlpy model file at {path} (write one with algo.save(path))")
    return D3rlpyCritic(d3rlpy.load_learnable(str(path), device=device))
