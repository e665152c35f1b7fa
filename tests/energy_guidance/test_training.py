"""training.py: the one loop; an interrupted run resumes bit-identically, also past a damaged checkpoint."""

import logging
import os
import signal

import pytest
import torch
from torch import nn

from energy_guidance.checkpoints import checkpoint_steps
from energy_guidance.training import Interrupted as SignalInterrupted
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


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    reference, reference_history, _ = _run(tmp_path / "straight")
    with pytest.raises(Interrupted):
        _run(tmp_path / "resumed", interrupt_at=33)
    newest = tmp_path / "resumed" / "fit-30.safetensors"
    newest.write_bytes(b"\0" * 100)
    with caplog.at_level(logging.INFO, logger="energy_guidance"):
        resumed, history, calls = _run(tmp_path / "resumed")
    assert "fit-30.safetensors" in caplog.text and "resuming fit from step 20 of 40" in caplog.text
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


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_the_current_step_and_the_run_resumes_exactly(tmp_path, signum, caplog):
    """SIGINT or SIGTERM at step 13 (checkpoints every 10): the step finishes, a checkpoint is
    written at step 14, Interrupted says so; the resumed run redoes nothing and ends as the
    uninterrupted one."""
    reference, reference_history, _ = _run(tmp_path / "straight")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    g = torch.Generator().manual_seed(1)
    calls = []

    def loss():
        if len(calls) == 13:
            os.kill(os.getpid(), signum)
        calls.append(1)
        x = torch.randn(32, 3, generator=g)
        return (net(x)[:, 0] - x.sum(1)).pow(2).mean()

    with pytest.raises(SignalInterrupted) as stopped:
        fit(net, loss, steps=40, lr=1e-2, generator=g, checkpoint_dir=tmp_path / "run",
            checkpoint_every=10, log_every=5, progress=False)  # fmt: skip
    assert (stopped.value.phase, stopped.value.step, stopped.value.status) == ("fit", 14, 128 + signum)
    assert checkpoint_steps(tmp_path / "run", "fit") == [14, 10]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are restored
    with caplog.at_level(logging.INFO, logger="energy_guidance"):
        resumed, history, calls = _run(tmp_path / "run")
    assert "resuming fit from step 14 of 40" in caplog.text and len(calls) == 26
    for a, b in zip(resumed.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert history == reference_history
