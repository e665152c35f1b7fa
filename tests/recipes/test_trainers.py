"""Every registered critic implements the TrainableCritic protocol the AEPO recipe relies on (and
so the adapters' Critic, which makes it an energy)."""

import dataclasses

import pytest
import torch

from energy_guidance.adapters import Critic, critic_energy
from energy_guidance.callables import energy_and_grad
from energy_guidance.recipes.trainers import CRITICS, OnObservations, RecipeCritic, TrainableCritic
from energy_guidance.recipes.transitions import Transitions

from .random_transitions import random_transitions


def _small(cls):
    return cls(3, 2, dataclasses.replace(cls.Config(), hidden=16))


@pytest.mark.parametrize("name", list(CRITICS))
def test_registered_critic_implements_the_protocol(name):
    critic = _small(CRITICS[name])
    assert isinstance(critic, TrainableCritic) and isinstance(critic, Critic)
    assert isinstance(critic, torch.nn.Module)
    data = random_transitions()
    states, actions = data.observations, data.actions
    assert critic.q_values(states, actions).shape == (2, 64)
    assert critic.baseline(states).shape == (64,)
    policy = critic.act(states)
    assert policy.shape == (64, 2) and policy.abs().max() <= 1 and not policy.requires_grad
    # Every parameter that trains is stepped by one of its optimizers (and so checkpointed).
    stepped = {id(p) for o in critic.optimizers.values() for group in o.param_groups for p in group["params"]}
    trainable = {id(p) for p in critic.parameters() if p.requires_grad}
    assert trainable == stepped
    # The energy of the protocol's pieces is finite and differentiable in the actions.
    energy = critic_energy(critic.q_values, baseline=critic.baseline)
    value, grad = energy_and_grad(energy, actions, states)
    assert value.shape == (64,) and torch.isfinite(grad).all()


def test_policy_names_are_distinct():
    names = [cls.policy_name for cls in CRITICS.values()]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("name", list(CRITICS))
def test_update_draws_randomness_from_the_generator_only(name):
    """Two critics built alike and updated with equally seeded generators stay bit-identical,
    whatever the global RNG does in between: what a resumed run relies on."""
    data = random_transitions()
    copies = []
    for noise in (0, 1):
        torch.manual_seed(0)
        critic = _small(CRITICS[name])
        torch.manual_seed(100 + noise)  # a different global stream
        g = torch.Generator().manual_seed(7)
        for _ in range(3):
            critic.update(data.sample(16, g), g)
        copies.append(critic)
    for a, b in zip(copies[0].state_dict().values(), copies[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_baselines_are_v_for_iql_and_q_at_the_actor_for_cql():
    states = torch.randn(8, 3)
    iql, cql = _small(CRITICS["iql"]), _small(CRITICS["cql"])
    assert torch.equal(iql.baseline(states), iql.v(states))
    expected = cql.q_target(states, cql.actor.act(states)).min(0).values
    assert torch.equal(cql.baseline(states), expected)


@pytest.mark.parametrize("name", list(CRITICS))
def test_a_critic_on_observations_reads_and_learns_the_mapped_states(name):
    """OnObservations(critic, observe) is the critic at observe(s): its Q, baseline and policy at
    the recipe's states s are the critic's at the observations, its update is the critic's update
    on the batch with s and s' mapped, and the energy stays differentiable in the actions."""
    mean, std = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.1, 3.0, 2.0])
    observe = lambda s: s * std + mean  # noqa: E731
    torch.manual_seed(0)
    inner = _small(CRITICS[name])
    critic = OnObservations(inner, observe)
    assert isinstance(critic, RecipeCritic) and critic.policy_name == inner.policy_name
    assert critic.optimizers is inner.optimizers
    assert set(critic.state_dict()) == {f"critic.{k}" for k in inner.state_dict()}
    data = random_transitions()
    s, a = data.observations, data.actions
    assert torch.equal(critic.q_values(s, a), inner.q_values(observe(s), a))
    assert torch.equal(critic.baseline(s), inner.baseline(observe(s)))
    assert torch.equal(critic.act(s), inner.act(observe(s)))
    value, grad = energy_and_grad(critic_energy(critic.q_values, baseline=critic.baseline), a, s)
    assert value.shape == (64,) and torch.isfinite(grad).all()

    torch.manual_seed(0)
    twin = _small(CRITICS[name])
    mapped = Transitions(observe(s), a, data.rewards, observe(data.next_observations), data.terminals)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert critic.update(data, g1) == twin.update(mapped, g2)
    for x, y in zip(inner.state_dict().values(), twin.state_dict().values(), strict=True):
        assert torch.equal(x, y)


def test_on_observations_needs_a_module():
    class Plain:
        def __init__(self):
            self.optimizers = {}

    with pytest.raises(TypeError, match=r"nn\.Module"):
        OnObservations(Plain(), lambda s: s)  # type: ignore[arg-type]
