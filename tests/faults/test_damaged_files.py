"""A truncated, zeroed or garbage file of each kind the run folder holds: a damaged checkpoint is
quarantined (renamed ``*.damaged``) and the phase falls back to its previous checkpoint, ending with
the same weights; any other damaged input stops the run with one line naming the file, and
nothing in the folder is changed or lost; outputs that are never read are rewritten."""

import json
import logging

import pytest

import energy_guidance.recipes.aepo as aepo
from energy_guidance.checkpoints import checkpoint_steps
from tests.recipes.conftest import tiny_args, tiny_config

from .helpers import PHASES, assert_same_weights, final_weights, no_evaluation, snapshot

DAMAGES = {
    "truncated": lambda b: b[: len(b) // 2],
    "zeroed": lambda b: bytes(len(b)),
    "garbage": lambda b: b"\x17garbage\xff" * (len(b) // 10 + 1),
}
FINAL = {"critic": 200, "behaviour": 200, "energy": 50}
KINDS = (".safetensors", ".pt", ".json")


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_checkpoints_are_quarantined_and_the_phases_end_the_same(
    finished_run, monkeypatch, caplog, damage
):
    """Each phase's final checkpoint gets one of its three files damaged (the kinds rotate with
    the damage, so every kind meets every damage)."""
    folder, _ = finished_run
    reference = final_weights(folder)
    shift = list(DAMAGES).index(damage)
    damaged = {}
    for i, phase in enumerate(PHASES):
        path = folder / "checkpoints" / f"{phase}-{FINAL[phase]}{KINDS[(i + shift) % 3]}"
        path.write_bytes(DAMAGES[damage](path.read_bytes()))
        damaged[phase] = path
    no_evaluation(monkeypatch)
    with caplog.at_level(logging.INFO, logger="energy_guidance"):
        aepo.run(tiny_config(folder))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    for phase, path in damaged.items():
        assert any(str(path) in r.getMessage() for r in warnings), (phase, caplog.text)
        assert path.with_name(path.name + ".damaged").exists()  # kept for inspection, not counted
        assert checkpoint_steps(folder / "checkpoints", phase)[0] == FINAL[phase]
    assert "resuming critic from step 100 of 200" in caplog.text
    assert_same_weights(final_weights(folder), reference)


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("name", ["config.json", "state.json", "variance_table.safetensors"])
def test_a_damaged_input_of_the_run_is_named_in_one_line_and_nothing_is_changed(
    finished_run, capsys, name, damage
):
    folder, _ = finished_run
    path = folder / name
    path.write_bytes(DAMAGES[damage](path.read_bytes()))
    kept = lambda: {k: v for k, v in snapshot(folder).items() if k not in (".lock", "config.json")}  # noqa: E731
    before, config = kept(), (folder / "config.json").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        aepo.main(tiny_args(folder))
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert exit_.value.code == 2 and "Traceback" not in err and str(path) in line
    assert kept() == before  # config.json: only its runtime settings (the folder's path) may change
    if name == "config.json":
        assert (folder / "config.json").read_bytes() == config
    else:
        assert json.loads((folder / "config.json").read_bytes())["training"] == json.loads(config)["training"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_outputs_are_rewritten(finished_run, monkeypatch, damage):
    """results.json, learning_curves.png and .lock are written, never read: a run rewrites them."""
    folder, reference = finished_run
    for name in ("results.json", "learning_curves.png", ".lock"):
        path = folder / name
        path.write_bytes(DAMAGES[damage](path.read_bytes() or b"x" * 10))
    results = aepo.run(tiny_config(folder))
    assert results["scores"] == reference["scores"]
    assert (folder / "learning_curves.png").read_bytes().startswith(b"\x89PNG")
    assert '"scores"' in (folder / "results.json").read_text()
