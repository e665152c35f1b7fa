"""The losses of IQL, AWR and CQL against hand-computed values."""

import math

import pytest
import torch

from energy_guidance.recipes.cql import cql_penalty
from energy_guidance.recipes.iql import awr_loss, expectile_loss


def test_expectile_loss_hand_computed():
    # weights |τ − 1(u < 0)| = [0.3, 0.7, 0.7] for u = [-2, 1, 3], τ = 0.7
    loss = expectile_loss(torch.tensor([-2.0, 1.0, 3.0]), 0.7)
    assert loss.item() == pytest.approx((0.3 * 4 + 0.7 * 1 + 0.7 * 9) / 3, rel=1e-6)


def test_expectile_loss_is_minimised_at_the_expectile():
    # For Q ∈ {0, 1} the τ-expectile v solves τ·(1 − v) = (1 − τ)·v, i.e. v = τ.
    q = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for tau in (0.5, 0.7, 0.9):
        v = torch.tensor(tau, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(expectile_loss(q - v, tau), v)
        assert abs(grad.item()) < 1e-12
        v_off = torch.tensor(tau + 0.01, dtype=torch.float64, requires_grad=True)
        (grad_off,) = torch.autograd.grad(expectile_loss(q - v_off, tau), v_off)
        assert grad_off.item() > 0


def test_awr_loss_hand_computed_and_clipped():
    bc = torch.tensor([1.0, 2.0], requires_grad=True)
    advantage = torch.tensor([0.0, 1.0], requires_grad=True)
    loss = awr_loss(bc, advantage, temperature=2.0, max_weight=5.0)  # weights [1, min(e², 5)]
    assert loss.item() == pytest.approx((1 * 1 + 5 * 2) / 2, rel=1e-6)
    loss.backward()
    assert advantage.grad is None  # advantages are weights, not differentiated
    assert torch.allclose(bc.grad, torch.tensor([0.5, 2.5]))


def test_cql_penalty_hand_computed():
    q_data = torch.tensor([1.0, 0.0], dtype=torch.float64)
    q_sampled = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]], dtype=torch.float64)
    log_density = torch.tensor([[0.0, 0.0], [math.log(2.0)] * 2], dtype=torch.float64)
    # T = 1: row 1 logsumexp(0, log 3) = log 4; row 2 logsumexp(1 − log 2, 1 − log 2) = 1.
    expected = ((math.log(4.0) - 1.0) + (1.0 - 0.0)) / 2
    assert cql_penalty(q_data, q_sampled, log_density).item() == pytest.approx(expected, rel=1e-12)
    # T = 2: row 1 2·log(1 + √3); row 2 2·((1 − log 2)/2 + log 2) = 1 + log 2.
    expected = ((2 * math.log(1 + math.sqrt(3.0)) - 1.0) + (1 + math.log(2.0))) / 2
    assert cql_penalty(q_data, q_sampled, log_density, 2.0).item() == pytest.approx(expected, rel=1e-12)


def test_cql_penalty_gradient_pushes_sampled_down_and_data_up():
    q_data = torch.tensor([0.5], requires_grad=True)
    q_sampled = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)
    cql_penalty(q_data, q_sampled, torch.zeros(1, 3)).backward()
    # ∂P/∂Q_k = softmax(Q)_k > 0 summing to 1; ∂P/∂Q_data = −1.
    assert torch.allclose(q_sampled.grad, torch.softmax(q_sampled.detach(), dim=1))
    assert q_data.grad.item() == -1.0
