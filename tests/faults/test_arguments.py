"""Bad arguments for the recipe: every one is refused before anything is written, with one line
naming the option, the value and what is allowed; never an internal error type, never a traceback."""

import copy
import dataclasses
import math
import subprocess
import sys
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

import energy_guidance.recipes.aepo as aepo
from energy_guidance.recipes import cli
from energy_guidance.recipes.config import LIMITS, AEPOConfig, ConfigError, validate

from .helpers import ROOT


def _fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _fields(hints[f.name], f"{prefix}{f.name}.")
        yield f"{prefix}{f.name}"


FIELDS = sorted(_fields(AEPOConfig))
VALUES = st.one_of(
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 2, 0.5, 1.0, 1e-9, -0.0, 1000, 1001, "", "x", "1", None, True, False]),
    st.text(max_size=4),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.tuples(st.sampled_from(["qgpo", "dps", "cql", "bogus"])),
)


def _set(config, dotted: str, value) -> None:
    *path, leaf = dotted.split(".")
    for part in path:
        config = getattr(config, part)
    setattr(config, leaf, value)


@given(field=st.sampled_from(FIELDS), value=VALUES)
def test_a_bad_value_of_any_field_is_a_config_error_naming_it(field, value):
    config = copy.deepcopy(AEPOConfig(device="cpu", run_dir="runs/never-made"))
    _set(config, field, value)
    try:
        validate(config)
    except ConfigError as error:  # the one error type, naming the field or its flag
        message = str(error)
        assert field in message or cli.flag(field) in message, (field, message)
        assert "\n" not in message
        return
    # accepted: then it is in range
    if field in LIMITS:
        low, high = LIMITS[field]
        assert not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        assert low <= value <= high


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--critic-steps", "-5", "critic_steps must be an integer in [1, ∞), got -5 (--critic-steps)"),
        ("--batch-size", "0", "batch_size must be an integer in [2, ∞), got 0 (--batch-size)"),
        ("--beta", "-1", "beta must be a number in [0, ∞), got -1.0 (--beta)"),
        ("--beta", "nan", "beta must be a finite number, got nan (--beta)"),
        ("--num-candidates", "0", "num_candidates must be an integer in [1, ∞), got 0 (--num-candidates)"),
        ("--iql.expectile", "1", "iql.expectile must be a number in (0, 1), got 1.0 (--iql.expectile)"),
        ("--inference-steps", "5000", "inference_steps must be at most behaviour.num_train_timesteps = 1000"),
    ],
)
def test_the_command_line_answers_a_bad_option_in_one_line_and_writes_nothing(
    tmp_path, capsys, flag, value, message
):
    folder = tmp_path / "run"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        aepo.main(["--run-dir", str(folder), "--device", "cpu", flag, value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not folder.exists()


def test_a_folder_holding_only_a_failed_configuration_is_reused(tiny_dataset, tmp_path, monkeypatch):
    """config.json written by an older recipe that accepted --critic-steps -5: a corrected run
    takes the folder (it holds no results)."""
    from tests.recipes.conftest import tiny_config

    folder = tmp_path / "run"
    monkeypatch.setattr(aepo, "_run", lambda *args: "adopted")
    aepo.run(tiny_config(folder))
    config = (folder / "config.json").read_text().replace('"critic_steps": 200', '"critic_steps": -5')
    (folder / "config.json").write_text(config)
    assert aepo.run(tiny_config(folder)) == "adopted"
    assert '"critic_steps": 200' in (folder / "config.json").read_text()


def test_without_the_rl_extra_the_command_names_it():
    code = (
        "import sys, runpy; sys.modules['gymnasium'] = None; "
        "runpy.run_module('energy_guidance.recipes.aepo', run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == (
        "error: the AEPO recipe needs the [rl] extra (module 'gymnasium' is missing): "
        "pip install 'energy-guidance[rl]'\n"
    )
