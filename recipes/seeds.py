"""The random streams of an AEPO run, all from one ``numpy.random.SeedSequence(config.seed)``.

:meth:`Seeds.of` spawns one child per use, in the order of the fields of :class:`Seeds`; each
child's first 64 bits are that use's seed:

=====================  ===============================================================
field                  what it seeds
=====================  ===============================================================
critic                 the critic's initial weights (``torch.manual_seed``)
critic_batches         the critic's training batches (and its own random draws)
behaviour              the behaviour model's initial weights
behaviour_batches      its training batches, noise levels and noise
variance               the data subset of the variance table and its noise
energy                 the intermediate-energy network's initial weights
energy_calibration     the fixed global batches that set its output scale
energy_batches         its training batches
evaluation             every policy's samples (re-seeded before each policy)
qgpo                   ``--compare qgpo``: its network's initial weights
qgpo_support           its data states and their behaviour support samples
qgpo_batches           its training batches
cql                    ``--compare cql``: the CQL critic's initial weights
cql_batches            its training batches
=====================  ===============================================================

The fields' order is part of every run's numbers: a new use is a new field at the end. The
training batches are drawn per process under torchrun (:func:`batch_generator`: the seed itself on
rank 0, a stream mixed from (seed, rank) on the others, :func:`energy_guidance.distributed.rank_seed`);
everything else is drawn alike on every process. A resumed run restores each training phase's
batch generator from its checkpoint, so these seeds only start a phase.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from energy_guidance import distributed


@dataclass(frozen=True)
class Seeds:
    """One seed per use (module docstring), each a 64-bit integer."""

    critic: int
    critic_batches: int
    behaviour: int
    behaviour_batches: int
    variance: int
    energy: int
    energy_calibration: int
    energy_batches: int
    evaluation: int
    qgpo: int
    qgpo_support: int
    qgpo_batches: int
    cql: int
    cql_batches: int

    @classmethod
    def of(cls, seed: int) -> Seeds:
        """The children of ``SeedSequence(seed)``, spawned in the order of the fields."""
        names = [f.name for f in dataclasses.fields(cls)]
        children = np.random.SeedSequence(seed).spawn(len(names))
        values = (int(child.generate_state(1, np.uint64)[0]) for child in children)
        return cls(**dict(zip(names, values, strict=True)))


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``, the same on every process (its draws are moved to the
    run's device, so a seed draws the same numbers on any device)."""
    return torch.Generator().manual_seed(seed)


def batch_generator(seed: int) -> torch.Generator:
    """A training phase's batch generator: ``seed`` on one process, a stream of its own per process
    under torchrun (:func:`energy_guidance.distributed.rank_seed`)."""
    return generator(distributed.rank_seed(seed))
