"""The run's random streams: children of one SeedSequence, distinct, reproducible, per rank for
the training batches."""

import dataclasses

import numpy as np
import torch

from energy_guidance import distributed
from energy_guidance.recipes.seeds import Seeds, batch_generator, generator


def test_each_use_has_its_own_child_of_the_run_seed():
    seeds = Seeds.of(0)
    values = dataclasses.astuple(seeds)
    assert len(set(values)) == len(values)  # no two uses share a stream
    assert Seeds.of(0) == seeds and Seeds.of(1) != seeds
    first = np.random.SeedSequence(0).spawn(1)[0].generate_state(1, np.uint64)[0]
    assert seeds.critic == int(first)  # the fields' order is the spawn order
    assert all(0 <= v < 2**64 for v in values)


def test_batch_generators_are_per_rank_and_the_others_are_not(monkeypatch):
    seed = Seeds.of(0).critic_batches
    one = batch_generator(seed).initial_seed()
    assert one == generator(seed).initial_seed() == distributed.rank_seed(seed) % 2**64
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert batch_generator(seed).initial_seed() != one
    assert generator(seed).initial_seed() == one
    a, b = torch.rand(3, generator=generator(seed)), torch.rand(3, generator=generator(seed))
    assert torch.equal(a, b)
