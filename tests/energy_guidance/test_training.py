"""training.py: the one loop; an interrupted run resumes bit-identically, also past a damaged checkpoint."""

import pytest
import torch
from torch import nn

from energy_guidance.training import fit, gradient_step, train


class Interrupted(Exception):
    pass


def _run(directory, interrupt_at=None, steps=40, checkpoint_every=10):
    """Regress a small MLP on noisy data drawn from a generator, checkpointing every 10 steps."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    g = torch.Generator().manual_seed(1)
    calls = []

    def loss():
        if len(calls) == interrupt_at:
            raise Interrupted
        calls.append(len(calls))
        x = torch.randn(32, 3, generator=g)
        return (net(x)[:, 0] - x.sum(1)).pow(2).mean()

    history = fit(net, loss, steps=steps, lr=1e-2, generator=g, checkpoint_dir=directory,
                  checkpoint_every=checkpoint_every, log_every=5, progress=False)  # fmt: skip
    return net, history, calls


def test_an_interrupted_run_resumes_exactly(tmp_path):
    reference, reference_history, _ = _run(tmp_path / "straight")
    with pytest.raises(Interrupted):
        _run(tmp_path / "resumed", interrupt_at=27)
    resumed, history, calls = _run(tmp_path / "resumed")
    assert len(calls) == 20  # steps 20..39: the checkpoint at step 20 was the newest
    # Weights, Adam moments, the cosine schedule and the generator all resumed: bit for bit.
    for a, b in zip(resumed.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert history == reference_history
    assert history["step"] == list(range(5, 41, 5))


def test_a_checkpoint_between_history_entries_resumes_the_same_history(tmp_path):
    """Checkpoints every 7 steps, history entries every 5: the checkpoint at step 21 holds the
    loss of step 21 (step 20 closed an entry), which the resumed run must average into step 25's."""
    reference, reference_history, _ = _run(tmp_path / "straight", checkpoint_every=7)
    with pytest.raises(Interrupted):
        _run(tmp_path / "resumed", interrupt_at=24, checkpoint_every=7)
    resumed, history, calls = _run(tmp_path / "resumed", checkpoint_every=7)
    assert len(calls) == 19  # steps 21..39
    assert history == reference_history
    for a, b in zip(resumed.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    reference, reference_history, _ = _run(tmp_path / "straight")
    with pytest.raises(Interrupted):
        _run(tmp_path / "resumed", interrupt_at=33)
    newest = tmp_path / "resumed" / "fit-30.safetensors"
    newest.write_bytes(b"\0" * 100)
    with pytest.warns(UserWarning, match="fit-30.safetensors"):
        resumed, history, calls = _run(tmp_path / "resumed")
    assert len(calls) == 20  # from step 20
    for a, b in zip(resumed.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert history == reference_history


def test_a_finished_run_only_loads(tmp_path):
    first, history, _ = _run(tmp_path)
    again, history_again, calls = _run(tmp_path, interrupt_at=0)  # any update would raise
    assert calls == [] and history_again == history
    assert torch.equal(first[0].weight, again[0].weight)


def test_train_steps_schedulers_and_logs_window_means():
    param = nn.Parameter(torch.zeros(()))
    optimizer = torch.optim.SGD([param], lr=1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    lrs, logged = [], []

    def update(step):
        lrs.append(optimizer.param_groups[0]["lr"])
        return {"loss": float(step), "value": gradient_step(optimizer, (param - 1) ** 2)}

    def log(step, means):
        logged.append((step, means["loss"]))

    history = train(update, 6, optimizers={"o": optimizer}, lr_schedulers={"s": schedule},
                    log_every=4, log=log, progress=False)  # fmt: skip
    assert lrs == [1.0, 1 / 2, 1 / 3, 1 / 4, 1 / 5, 1 / 6]
    assert history["step"] == [4, 6] and history["loss"] == [1.5, 4.5]  # means of 0..3 and 4..5
    assert logged == [(4, 1.5), (6, 4.5)]
    with pytest.raises(ValueError, match="steps must be >= 0"):
        train(update, -1)
