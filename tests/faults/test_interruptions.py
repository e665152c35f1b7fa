"""SIGINT, SIGTERM and kill -9 in each phase of the recipe that writes (data build, critic,
behaviour, intermediate energy): nothing made before is lost, a run interrupted by a signal saves
its current step, says in one line how to resume, exits 130 / 143, and the resumed run ends with
the uninterrupted run's weights, bit for bit."""

import logging
import os
import signal
import subprocess
import sys
import time

import minari
import pytest

import energy_guidance.recipes.aepo as aepo
from energy_guidance.checkpoints import checkpoint_steps
from energy_guidance.recipes.data import build_pendulum_mixed
from energy_guidance.recipes.iql import IQL
from energy_guidance.training import Interrupted
from tests.recipes.conftest import TINY, tiny_args, tiny_config

from .helpers import (
    PHASES,
    ROOT,
    STOP_AT,
    assert_same_weights,
    final_weights,
    no_evaluation,
    start_cli,
    wait_for,
)

FINAL = {"critic": 200, "behaviour": 200, "energy": 50}  # the tiny preset's steps
# where each phase's steps are taken: patched to send the signal at the chosen step
STEPPERS = {
    "critic": (IQL, "update"),
    "behaviour": (aepo, "diffusion_loss"),
    "energy": (aepo, "regression_loss"),
}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_each_training_phase_saves_the_step_and_resumes_bit_identically(
    finished_run, tmp_path, monkeypatch, caplog, signum
):
    reference, _ = finished_run
    folder = tmp_path / "fresh"
    no_evaluation(monkeypatch)
    for phase in PHASES:
        with monkeypatch.context() as patch:
            owner, name = STEPPERS[phase]
            original, calls = getattr(owner, name), []

            def wrapped(*args, _original=original, _calls=calls, _stop=STOP_AT[phase], **kwargs):
                _calls.append(1)
                if len(_calls) == _stop + 1:  # the signal arrives during step STOP_AT (from 0)
                    os.kill(os.getpid(), signum)
                return _original(*args, **kwargs)

            patch.setattr(owner, name, wrapped)
            with pytest.raises(Interrupted) as stopped, caplog.at_level(logging.INFO, "energy_guidance"):
                aepo.run(tiny_config(folder))
        assert (stopped.value.phase, stopped.value.step) == (phase, STOP_AT[phase] + 1)
        assert stopped.value.status == 128 + signum
        assert checkpoint_steps(folder / "checkpoints", phase)[0] == STOP_AT[phase] + 1
        if phase != "critic":  # the phase interrupted before resumed where its signal left it
            previous = PHASES[PHASES.index(phase) - 1]
            assert (
                f"resuming {previous} from step {STOP_AT[previous] + 1} of {FINAL[previous]}" in caplog.text
            )
        for done in PHASES[: PHASES.index(phase)]:
            assert checkpoint_steps(folder / "checkpoints", done)[0] == FINAL[done]
        caplog.clear()
    with caplog.at_level(logging.INFO, "energy_guidance"):
        aepo.run(tiny_config(folder))
    assert f"resuming energy from step {STOP_AT['energy'] + 1} of 50" in caplog.text
    assert_same_weights(final_weights(folder), final_weights(reference))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_command_line_says_how_to_resume_in_one_line_and_exits_conventionally(
    finished_run, tmp_path, monkeypatch, capsys, signum
):
    """``python -m energy_guidance.recipes.aepo`` (its main) stopped by a signal in the behaviour phase."""
    folder = tmp_path / "fresh"
    no_evaluation(monkeypatch)
    original, calls = aepo.diffusion_loss, []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == 50:
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(aepo, "diffusion_loss", wrapped)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        aepo.main(tiny_args(folder))
    err = capsys.readouterr().err
    assert exit_.value.code == 128 + signum
    name = signal.Signals(signum).name
    command = " ".join(["python -m energy_guidance.recipes.aepo", *tiny_args(folder)])
    assert err == f"interrupted: {name} in behaviour at step 50 (checkpoint saved); resume with: {command}\n"
    assert checkpoint_steps(folder / "checkpoints", "behaviour") == [50]
    assert checkpoint_steps(folder / "checkpoints", "critic") == [200, 100]


@pytest.mark.slow
def test_sigterm_from_outside_stops_the_command_line_the_same_way(tmp_path, minari_root, tiny_dataset):
    """The signal sent by another process (a scheduler's SIGTERM) to ``python -m ...aepo``."""
    folder = tmp_path / "fresh"
    process = start_cli("energy_guidance.recipes.aepo", *tiny_args(folder, "--checkpoint-every", "20"))
    wait_for(folder / "checkpoints" / "critic-20.json", process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143 and "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert line.startswith("interrupted: SIGTERM in critic at step ") and "resume with: python -m" in line
    step = int(line.split(" at step ")[1].split()[0])
    assert checkpoint_steps(folder / "checkpoints", "critic")[0] == step


@pytest.mark.slow
@pytest.mark.parametrize("phase, marker", [("behaviour", "behaviour-40.json"), ("energy", "energy-20.json")])
def test_kill_9_in_a_phase_loses_at_most_the_steps_since_its_checkpoint(
    finished_run, tmp_path, monkeypatch, phase, marker
):
    """kill -9 cannot be caught: the run resumes from the phase's last checkpoint, bit-identically
    (the critic phase: tests/recipes/test_aepo.py)."""
    reference, _ = finished_run
    folder = tmp_path / "fresh"
    process = start_cli("energy_guidance.recipes.aepo", *tiny_args(folder, "--checkpoint-every", "20"))
    wait_for(folder / "checkpoints" / marker, process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert checkpoint_steps(folder / "checkpoints", "critic")[0] == 200
    no_evaluation(monkeypatch)
    aepo.run(tiny_config(folder, "--checkpoint-every", "20"))
    assert_same_weights(final_weights(folder), final_weights(reference))


BUILD = """
import sys
from energy_guidance.recipes import cli, data
cli.command("energy_guidance.recipes.data", [], lambda rest: data.build_pendulum_mixed(
    "energy-guidance/pendulum/mixed-v0", episodes=4, reference_episodes=4))
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_data_build_leaves_no_half_written_data_set(tmp_path, minari_root, signum):
    """A data set is built aside and moved into place: stopped while it writes, the storage holds
    no set or the whole one (SIGINT and SIGTERM let the move finish), never a half-written one;
    building it again works."""
    dest = minari_root / "energy-guidance" / "pendulum" / "mixed-v0"
    process = subprocess.Popen(
        [sys.executable, "-c", BUILD], cwd=ROOT, stderr=subprocess.PIPE, text=True, env=os.environ
    )
    deadline = time.monotonic() + 120
    while process.poll() is None and not any(tmp_path.glob(".minari-staging-*")):
        assert time.monotonic() < deadline, "the build did not start writing"
        time.sleep(0.001)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    if process.returncode != 0:  # stopped before it finished (else it won the race: a whole set)
        assert process.returncode in (128 + signum, -signal.SIGKILL), err
        if dest.exists():
            assert minari.load_dataset("energy-guidance/pendulum/mixed-v0").total_episodes == 4
        if signum != signal.SIGKILL:
            assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted: ")
            assert not any(tmp_path.glob(".minari-staging-*"))  # cleaned up on the way out
    build_pendulum_mixed(episodes=4, reference_episodes=4)
    assert minari.load_dataset("energy-guidance/pendulum/mixed-v0").total_episodes == 4


def test_a_missing_data_set_names_the_command_that_builds_it(tmp_path, minari_root, capsys):
    from energy_guidance.recipes import data

    with pytest.raises(SystemExit) as exit_:
        data.main(["info", "energy-guidance/hopper/medium-v0"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert "`python -m energy_guidance.recipes.datasets build energy-guidance/hopper/medium-v0`" in err
    with pytest.raises(SystemExit):
        data.main(["info", TINY])
    assert "`python -m energy_guidance.recipes.data build`" in capsys.readouterr().err


def test_a_signal_outside_the_training_phases_keeps_them_and_says_the_work_is_redone(
    finished_run, monkeypatch, capsys
):
    """SIGTERM while the variance table is computed: nothing saved is lost, the line says so."""
    folder, _ = finished_run
    (folder / "variance_table.safetensors").unlink()  # the run recomputes it
    before = {p: checkpoint_steps(folder / "checkpoints", p) for p in PHASES}

    def stopped(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr(aepo, "estimate_variance_table", stopped)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        aepo.main(tiny_args(folder))
    err = capsys.readouterr().err
    assert exit_.value.code == 143
    line = "interrupted: SIGTERM (finished phases and checkpoints are kept; the work under way is redone)"
    assert err.splitlines()[-1].startswith(line + "; resume with: python -m energy_guidance.recipes.aepo --")
    assert err.count("interrupted") == 1 and "Traceback" not in err
    assert {p: checkpoint_steps(folder / "checkpoints", p) for p in PHASES} == before
