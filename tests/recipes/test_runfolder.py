"""Run folders: the lock, the configuration split, cached evaluations, atomic state; and the
recipe's networks through the core's checkpoints and training loop (resume is bit-identical)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from energy_guidance import IntermediateEnergyNet
from energy_guidance.checkpoints import CorruptFileError, checkpoint_steps, load_modules, save_modules
from energy_guidance.recipes.behaviour import NoiseMLP
from energy_guidance.recipes.iql import IQL, IQLConfig
from energy_guidance.recipes.runfolder import ConfigMismatch, RunFolder, RunFolderBusy, flatten
from energy_guidance.recipes.transitions import Transitions
from energy_guidance.training import train

ROOT = Path(__file__).resolve().parents[2]
HOLD = (
    "import sys, time\nfrom energy_guidance.recipes.runfolder import RunFolder\n"
    "with RunFolder(sys.argv[1]).lock():\n    print('locked', flush=True)\n    time.sleep(120)\n"
)


def _holder(path: Path) -> subprocess.Popen:
    """Another process holding the lock of the run folder ``path``."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "locked"
    return process


def test_lock_refuses_a_second_process_and_a_killed_holder_does_not_block(tmp_path):
    holder = _holder(tmp_path / "run")
    try:
        with pytest.raises(RunFolderBusy, match=rf"in use by another run \(pid {holder.pid}, since "):
            with RunFolder(tmp_path / "run").lock():
                pass
    finally:
        holder.kill()  # SIGKILL: no clean-up in the holder
        holder.wait()
    with RunFolder(tmp_path / "run").lock() as folder:  # the stale lock file does not block
        assert f"pid {os.getpid()}" in (folder.path / ".lock").read_text()


def test_adopt_compares_training_settings_only(tmp_path):
    folder = RunFolder(tmp_path)
    training = {"beta": 3.0, "iql": {"hidden": 32, "lr": 3e-4}}
    folder.adopt(training, {"eval_episodes": 10}, {"threads": 1})
    folder.finish("variance", seconds=1.0)  # the folder holds results: its training settings count
    folder.adopt(training, {"eval_episodes": 3}, {"threads": 2})  # evaluation and runtime may change
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved == {"training": training, "evaluation": {"eval_episodes": 3}, "runtime": {"threads": 2}}
    changed = {"beta": 3.0, "iql": {"hidden": 64, "lr": 3e-4}, "seed": 1}
    with pytest.raises(ConfigMismatch, match=r"fields \['iql\.hidden', 'seed'\]"):
        folder.adopt(changed, {}, {})
    # a field added to the recipe after the run: its default stands in for the missing value
    with pytest.raises(ConfigMismatch, match=r"fields \['loss'\]"):
        folder.adopt({**training, "loss": "new"}, {}, {}, defaults={"loss": "old"})
    folder.adopt({**training, "loss": "old"}, {}, {}, defaults={"loss": "old"})
    assert json.loads((tmp_path / "config.json").read_text())["training"]["loss"] == "old"
    (tmp_path / "config.json").write_text(json.dumps({"beta": 3.0}))  # an older, flat format
    with pytest.raises(ConfigMismatch, match="older version"):
        folder.adopt(training, {}, {})


def test_a_folder_holding_only_a_configuration_takes_a_new_one(tmp_path):
    """A run that failed before any work (or an older recipe that validated less) left only its
    config.json: nothing would be lost, so any configuration is adopted."""
    folder = RunFolder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"beta": 3.0}))  # even an older format
    folder.adopt({"beta": 1.0}, {}, {})
    folder.adopt({"beta": 2.0}, {}, {})
    assert json.loads((tmp_path / "config.json").read_text())["training"] == {"beta": 2.0}
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "critic-3.json.damaged").write_text("{}")  # even a quarantined one counts
    with pytest.raises(ConfigMismatch, match=r"fields \['beta'\]"):
        folder.adopt({"beta": 1.0}, {}, {})


def test_flatten():
    assert flatten({"a": 1, "b": {"c": 2, "d": {"e": 3}}}) == {"a": 1, "b.c": 2, "b.d.e": 3}


def test_evaluations_are_cached_per_settings(tmp_path):
    folder = RunFolder(tmp_path)
    ten, three = {"eval_episodes": 10}, {"eval_episodes": 3}
    folder.record_evaluation(ten, "aepo", {"returns": [1.0]})
    folder.record_evaluation(three, "aepo", {"returns": [2.0]})
    folder.record_evaluation(ten, "behaviour", {"returns": [3.0]})
    folder.finish("variance", seconds=1.5)
    again = RunFolder(tmp_path)  # read back from state.json
    assert again.evaluation({"eval_episodes": 10}, "aepo") == {"returns": [1.0]}
    assert again.evaluation(three, "aepo") == {"returns": [2.0]}
    assert again.evaluation(three, "behaviour") is None
    assert again.finished("variance") == {"seconds": 1.5} and again.finished("energy") is None


def test_an_interrupted_write_leaves_the_previous_state(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path)
    folder.record_evaluation({"n": 1}, "aepo", {"returns": [1.0]})
    before = (tmp_path / "state.json").read_bytes()

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)  # dies after writing the temporary file
    with pytest.raises(KeyboardInterrupt):
        folder.record_evaluation({"n": 2}, "aepo", {"returns": [2.0]})
    monkeypatch.undo()
    assert (tmp_path / "state.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left behind
    (tmp_path / "state.json").write_bytes(before[:-3])
    with pytest.raises(CorruptFileError, match=r"state\.json"):
        folder.evaluation({"n": 1}, "aepo")


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
    assert torch.equal(iql2.q_values(states, actions), iql.q_values(states, actions))
    assert torch.equal(iql2.act(states), iql.act(states))
    assert torch.equal(model2(actions, t, states), model(actions, t, states))
    alpha, sigma = torch.full((16,), 0.6), torch.full((16,), 0.8)
    assert torch.equal(net2(actions, alpha, sigma, states), net(actions, alpha, sigma, states))


def _critic_phase(directory, interrupt_at=None, steps=100):
    """Train IQL through the core loop, checkpoints every 10 steps; optionally die at a step."""
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
        return iql.update(data.sample(32, g), g)

    history = train(
        update,
        steps,
        modules={"critic": iql},
        optimizers=iql.optimizers,
        generator=g,
        checkpoint_dir=directory,
        name="critic",
        checkpoint_every=10,
        log_every=5,
        progress=False,
    )
    return iql, history, calls


def test_critic_resumes_bit_identically_through_the_training_loop(tmp_path):
    """The critic's optimizers and Polyak target survive a checkpoint: same result, bit for bit."""
    reference, reference_history, _ = _critic_phase(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        _critic_phase(tmp_path / "resumed", interrupt_at=37)
    assert checkpoint_steps(tmp_path / "resumed", "critic") == [30, 20]
    resumed, history, calls = _critic_phase(tmp_path / "resumed")
    assert calls == list(range(30, 100))  # steps 31..100 only, told their index
    assert history["step"] == list(range(5, 101, 5))
    for a, b in zip(resumed.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert history == reference_history
    # A finished phase is not redone: no update is called, the weights are loaded.
    again, _, calls = _critic_phase(tmp_path / "resumed", interrupt_at=0)
    assert calls == []
    assert torch.equal(again.q_target.q1[0].weight, reference.q_target.q1[0].weight)
