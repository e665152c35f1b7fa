"""IQL and CQL updates, their networks and Polyak averaging."""

import copy

import torch

from energy_guidance.recipes.cql import CQL, CQLConfig
from energy_guidance.recipes.iql import IQL, IQLConfig
from energy_guidance.recipes.networks import TanhGaussianPolicy, polyak_update
from energy_guidance.recipes.transitions import Transitions

from .random_transitions import random_transitions


def test_tanh_gaussian_log_prob_matches_torch_distributions():
    policy = TanhGaussianPolicy(3, 2, hidden=16).double()
    states = torch.randn(32, 3, dtype=torch.float64)
    actions, log_prob = policy.sample(states, torch.Generator().manual_seed(0))
    mean, log_std = policy.net(states).chunk(2, dim=-1)
    reference = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.clamp(-5, 2).exp()),
        [torch.distributions.TanhTransform()],
    )
    expected = reference.log_prob(actions).sum(-1)
    # atanh(a) inside the reference loses digits as |a| -> 1; float64 keeps them at |a| < 1 - 1e-6.
    assert actions.abs().max() < 1 - 1e-6
    assert torch.allclose(log_prob, expected, rtol=1e-8, atol=1e-8)


def test_several_draws_per_state_equal_draws_on_the_repeated_states():
    """sample(s, per_state=n) runs the network once per state and draws exactly what sampling the
    repeated states s.repeat_interleave(n) draws (same generator), in the same order."""
    policy = TanhGaussianPolicy(3, 2, hidden=16).double()
    states = torch.randn(8, 3, dtype=torch.float64)
    actions, log_prob = policy.sample(states, torch.Generator().manual_seed(0), per_state=5)
    expected = policy.sample(states.repeat_interleave(5, 0), torch.Generator().manual_seed(0))
    assert actions.shape == (40, 2) and log_prob.shape == (40,)
    torch.testing.assert_close(actions, expected[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(log_prob, expected[1], rtol=1e-12, atol=1e-12)


def test_polyak_update_is_a_lerp():
    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = copy.deepcopy(target)
    polyak_update(target, source, 0.25)
    for t, b, s in zip(target.parameters(), before.parameters(), source.parameters(), strict=True):
        assert torch.allclose(t, 0.75 * b + 0.25 * s, rtol=1e-6, atol=1e-7)


def test_iql_update_moves_only_the_target_by_polyak():
    data = random_transitions()
    iql = IQL(3, 2, IQLConfig(hidden=16, polyak=0.1))
    target_before = copy.deepcopy(iql.q_target)
    iql.update(data)
    # After one step: target = 0.9·old target + 0.1·(updated Q).
    for t, b, q in zip(
        iql.q_target.parameters(), target_before.parameters(), iql.q.parameters(), strict=True
    ):
        assert torch.allclose(t, 0.9 * b + 0.1 * q, rtol=1e-6, atol=1e-7)
        assert not t.requires_grad


def test_iql_and_cql_losses_are_finite_and_policies_in_bounds():
    data = random_transitions()
    g = torch.Generator().manual_seed(0)
    for agent in (IQL(3, 2, IQLConfig(hidden=16, actor="deterministic")), CQL(3, 2, CQLConfig(hidden=16))):
        for _ in range(3):
            logs = agent.update(data.sample(16, g), g)
        assert all(torch.isfinite(torch.tensor(v)) for v in logs.values()), logs
        actions = agent.act(data.observations)
        assert actions.shape == (len(data), 2) and actions.abs().max() <= 1


def test_transitions_reject_nan():
    data = random_transitions()
    rewards = data.rewards.clone()
    rewards[3] = float("nan")
    try:
        Transitions(data.observations, data.actions, rewards, data.next_observations, data.terminals)
    except ValueError as error:
        assert "rewards contains NaN" in str(error)
    else:
        raise AssertionError("NaN rewards were accepted")


def test_iql_update_uses_the_bootstrapped_td_target_and_the_expectile_of_q_minus_v():
    """The losses IQL reports for one step equal the paper's, computed by hand from the networks
    before the step: L_Q = Σ_heads mean (Q_i(s,a) − (r + γ(1−d)·V(s')))², L_V = expectile of
    min_i Q̄_i(s,a) − V(s); terminal transitions do not bootstrap."""
    torch.manual_seed(0)
    iql = IQL(3, 2, IQLConfig(hidden=16, discount=0.9, expectile=0.8))
    batch = random_transitions(n=32)
    before = copy.deepcopy(iql)
    losses = iql.update(batch)
    with torch.no_grad():
        target = batch.rewards + 0.9 * (1 - batch.terminals) * before.v(batch.next_observations)
        q = before.q(batch.observations, batch.actions)  # (2, B)
        q_loss = ((q[0] - target) ** 2).mean() + ((q[1] - target) ** 2).mean()
        u = before.q_target(batch.observations, batch.actions).min(0).values - before.v(batch.observations)
        v_loss = (torch.where(u < 0, 0.2, 0.8) * u**2).mean()
    assert batch.terminals.sum() > 0  # the batch exercises the no-bootstrap case
    assert abs(losses["q_loss"] - q_loss.item()) < 1e-5 * (1 + q_loss.item())
    assert abs(losses["v_loss"] - v_loss.item()) < 1e-5 * (1 + v_loss.item())
