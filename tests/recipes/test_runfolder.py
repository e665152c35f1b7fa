"""Checkpoints: save -> load gives identical outputs; an interrupted phase resumes exactly."""

import json

import pytest
import torch

from adapters import IQL, IQLConfig, Transitions
from energy_guidance import IntermediateEnergyNet
from recipes.behaviour import NoiseMLP
from recipes.checkpoint import RunDir, load_modules, save_modules, train_phase


def test_save_load_gives_identical_outputs(tmp_path):
    states, actions = torch.randn(16, 3), torch.rand(16, 2) * 2 - 1
    t = torch.randint(0, 1000, (16,))
    iql, model = IQL(3, 2, IQLConfig(hidden=16)), NoiseMLP(2, 3, hidden=16)
    net = IntermediateEnergyNet(2, 3, hidden=16)
    net.target_scale.fill_(3.0)  # buffers travel too
    save_modules(tmp_path / "w.safetensors", {"critic": iql, "model": model, "net": net})
    iql2, model2 = IQL(3, 2, IQLConfig(hidden=16)), NoiseMLP(2, 3, hidden=16)
    net2 = IntermediateEnergyNet(2, 3, hidden=16)
    assert not torch.equal(iql2.q(states, actions), iql.q(states, actions))  # fresh weights differ
    load_modules(tmp_path / "w.safetensors", {"critic": iql2, "model": model2, "net": net2})
    assert torch.equal(iql2.q(states, actions), iql.q(states, actions))
    assert torch.equal(iql2.q_target(states, actions), iql.q_target(states, actions))
    assert torch.equal(iql2.act(states), iql.act(states))
    assert torch.equal(model2(actions, t, states), model(actions, t, states))
    alpha, sigma = torch.full((16,), 0.6), torch.full((16,), 0.8)
    assert torch.equal(net2(actions, alpha, sigma, states), net(actions, alpha, sigma, states))


def _phase(tmp_path, interrupt_at=None, steps=100):
    """Train IQL for ``steps`` with checkpoints every 10 steps; optionally die at a given step."""
    g0 = torch.Generator().manual_seed(5)
    data = Transitions(
        torch.randn(200, 3, generator=g0),
        torch.rand(200, 1, generator=g0) * 2 - 1,
        torch.randn(200, generator=g0),
        torch.randn(200, 3, generator=g0),
        torch.zeros(200),
    )
    torch.manual_seed(0)
    iql = IQL(3, 1, IQLConfig(hidden=16))
    g = torch.Generator().manual_seed(0)
    calls = []

    def update(step):
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        calls.append(step)
        return iql.update(data.sample(32, g))

    history = train_phase(
        RunDir(tmp_path),
        "critic",
        update,
        steps=steps,
        modules={"critic": iql},
        optimizers=iql.optimizers,
        generator=g,
        checkpoint_every=10,
        log_every=5,
        progress=False,
    )
    return iql, history, calls


def test_resume_continues_from_the_saved_step_and_matches_an_uninterrupted_run(tmp_path):
    reference, reference_history, _ = _phase(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        _phase(tmp_path / "resumed", interrupt_at=37)
    checkpoints = tmp_path / "resumed" / "checkpoints"
    record = json.loads((checkpoints / "critic.json").read_text())
    assert record["step"] == 30  # the last checkpoint before step 37
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "critic-30.pt",
        "critic-30.safetensors",
        "critic.json",
    ]
    resumed, history, calls = _phase(tmp_path / "resumed")
    assert calls == list(range(30, 100))  # steps 31..100 only, told their index
    assert history["step"] == list(range(5, 101, 5))
    # Same weights, optimizer moments and generator state: the same result, bit for bit.
    for a, b in zip(resumed.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert history == reference_history
    assert list(checkpoints.iterdir()) == []  # superseded by the finished phase's weights
    # A finished phase is not redone: no update is called, the weights are loaded.
    again, _, calls = _phase(tmp_path / "resumed", interrupt_at=0)
    assert calls == []
    assert torch.equal(again.q.q1[0].weight, reference.q.q1[0].weight)
