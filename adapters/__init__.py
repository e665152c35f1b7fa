"""Critics as energies for :mod:`energy_guidance`: E(a | s) = −(Q(s, a) − b(s)), lower is better.

Installed as ``energy_guidance.adapters`` (from the repository's ``adapters/`` folder).

    Critic                           the protocol: q_values(states, actions), baseline(states)
    critic_energy(q, reduce="min")   any critic q(states, actions) -> (B,) or (K, B) as an energy
    reduce_critic                    a critic's output checked and reduced over its K heads
    D3rlpyCritic, load_d3rlpy        IQL or CQL trained with d3rlpy, from its model file
                                     (the optional extra ``energy-guidance[d3rlpy]``)

Critics this project trains itself (IQL, CQL) live with the recipes
(:mod:`energy_guidance.recipes.trainers`); they implement :class:`Critic` too.
"""

from .d3rlpy_critic import D3rlpyCritic, load_d3rlpy
from .energy import REDUCTIONS, Reduction, critic_energy, reduce_critic
from .protocol import Critic

__all__ = [
    "REDUCTIONS",
    "Critic",
    "D3rlpyCritic",
    "Reduction",
    "critic_energy",
    "load_d3rlpy",
    "reduce_critic",
]
