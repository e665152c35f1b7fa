"""critic_energy: the sign, the reduction over heads, gradients and shape errors."""

import pytest
import torch

from energy_guidance.adapters import critic_energy, reduce_critic
from energy_guidance.callables import energy_and_grad
from energy_guidance.recipes.networks import TwinQ


def test_gradient_of_quadratic_critic_is_analytic():
    # Q(s, a) = −‖a − W s‖²  =>  E = ‖a − W s‖² / c  and  ∇_a E = 2·(a − W s) / c.
    w = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]], dtype=torch.float64)
    states = torch.randn(7, 3, dtype=torch.float64)
    actions = torch.randn(7, 2, dtype=torch.float64)
    energy = critic_energy(lambda s, a: -(a - s @ w.T).pow(2).sum(1), scale=2.5)
    value, grad = energy_and_grad(energy, actions, states)
    assert torch.allclose(value, (actions - states @ w.T).pow(2).sum(1) / 2.5, rtol=1e-12)
    assert torch.allclose(grad, 2 * (actions - states @ w.T) / 2.5, rtol=1e-12)


@pytest.mark.parametrize("reduce", ["min", "mean"])
def test_gradient_equals_autograd_through_each_head(reduce):
    q = TwinQ(4, 3, hidden=32).double()
    states = torch.randn(64, 4, dtype=torch.float64)
    actions = (torch.rand(64, 3, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    heads = q(states, actions)
    (g1,) = torch.autograd.grad(heads[0].sum(), actions, retain_graph=True)
    (g2,) = torch.autograd.grad(heads[1].sum(), actions)
    if reduce == "min":  # the gradient of a min is the gradient of the active head
        expected = -torch.where((heads[0] <= heads[1])[:, None], g1, g2)
    else:
        expected = -(g1 + g2) / 2
    _, grad = energy_and_grad(critic_energy(q, reduce), actions.detach(), states)
    # The same float64 operations in a different order: agreement to rounding error.
    assert torch.allclose(grad, expected, rtol=1e-10, atol=1e-12)


def test_reduce_critic_shapes():
    values = torch.tensor([[1.0, -2.0, 3.0], [0.0, 5.0, -1.0]])
    assert torch.equal(reduce_critic(values, 3, "min"), torch.tensor([0.0, -2.0, -1.0]))
    assert torch.equal(reduce_critic(values, 3, "mean"), torch.tensor([0.5, 1.5, 1.0]))
    assert torch.equal(reduce_critic(values[0][:, None], 3), values[0])
    assert torch.equal(reduce_critic(values[0], 3), values[0])


@pytest.mark.parametrize(
    "bad",
    [
        lambda s, a: torch.zeros(len(a), 2),
        lambda s, a: torch.zeros(len(a), 1, 1),
        lambda s, a: torch.zeros(3),
    ],
)
def test_wrong_critic_shape_is_a_clear_error(bad):
    energy = critic_energy(bad)
    with pytest.raises(ValueError, match=r"critic returned shape .* expected \(5,\), \(5, 1\) or \(K, 5\)"):
        energy(torch.zeros(5, 2), torch.zeros(5, 3))


def test_bad_arguments():
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        critic_energy(lambda s, a: [0.0] * len(a))(torch.zeros(2, 1), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="one state per action"):
        critic_energy(lambda s, a: a[:, 0])(torch.zeros(4, 1), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="reduce"):
        critic_energy(lambda s, a: a[:, 0], reduce="max")
    with pytest.raises(ValueError, match="scale"):
        critic_energy(lambda s, a: a[:, 0], scale=0.0)


def test_state_baseline_shifts_values_but_not_gradients():
    q = TwinQ(4, 2, hidden=32).double()
    baseline = torch.nn.Linear(4, 1).double()
    states = torch.randn(16, 4, dtype=torch.float64)
    actions = torch.rand(16, 2, dtype=torch.float64) * 2 - 1
    plain_value, plain_grad = energy_and_grad(critic_energy(q, scale=2.0), actions, states)
    value, grad = energy_and_grad(
        critic_energy(q, scale=2.0, baseline=lambda s: baseline(s)[:, 0]), actions, states
    )
    assert torch.allclose(value, plain_value + baseline(states)[:, 0].detach() / 2.0, rtol=1e-12)
    assert torch.equal(grad, plain_grad)
    with pytest.raises(ValueError, match="baseline returned shape"):
        critic_energy(q, baseline=baseline)(actions, states)
