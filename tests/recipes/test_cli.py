"""cli.py: the logging flags, one-line errors and the range checks every recipe command shares."""

import logging

import pytest

from energy_guidance.recipes import cli


def _body(error):
    def body(rest):
        logging.getLogger("energy_guidance.recipes.test").info("an info record")
        logging.getLogger("energy_guidance.recipes.test").warning("a warning record")
        if error is not None:
            raise error
        return rest

    return body


@pytest.mark.parametrize(
    "flags, shown",
    [
        ([], ["an info record", "a warning record"]),
        (["-q"], ["a warning record"]),
        (["--log-level", "ERROR"], []),
        (["--log-level", "debug"], ["an info record", "a warning record"]),
    ],
)
def test_logging_flags_set_what_is_printed(capsys, flags, shown):
    assert cli.command("prog", [*flags, "--other", "1"], _body(None)) == ["--other", "1"]
    assert capsys.readouterr().err.splitlines() == shown


def test_a_user_error_is_one_line_with_status_2_and_a_bug_keeps_its_traceback(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.command("prog", ["-q"], _body(cli.UserError("beta must be\n  >= 0")))
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == ["a warning record", "error: beta must be >= 0"]
    with pytest.raises(ZeroDivisionError):
        cli.command("prog", ["-q"], _body(ZeroDivisionError("a bug")))


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        (0, {"integer": True}, "n must be an integer in [1, ∞), got 0 (--n)"),
        (1.5, {"integer": True}, "n must be an integer, got 1.5 (--n)"),
        (True, {"integer": True}, "n must be an integer, got True (--n)"),
        (float("inf"), {}, "n must be a finite number, got inf (--n)"),
        (1.0, {"upper_open": True, "lower_open": True}, "n must be a number in (1, 2), got 1.0 (--n)"),
        ("1", {}, "n must be a number, got '1' (--n)"),
    ],
)
def test_check_range_names_the_field_the_value_and_the_range(value, kwargs, message):
    high = 2 if kwargs.get("upper_open") else float("inf")
    with pytest.raises(cli.UserError) as error:
        cli.check_range("n", value, 1, high, **kwargs)
    assert str(error.value) == message


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("demo2d", ["--beta", "-1"], "error: beta must be a number in [0, ∞), got -1.0 (--beta)"),
        ("demo2d", ["--steps", "5000"], "error: steps must be an integer in [1, 1000], got 5000 (--steps)"),
        (
            "digits",
            ["--num-samples", "0"],
            "error: num_samples must be an integer in [1, ∞), got 0 (--num-samples)",
        ),
        ("digits", ["--variance", "bogus"], "error: variance must be a number >= 0 or one of"),
        ("data", ["build", "--episodes", "0"], "--episodes must be an integer >= 1, got 0"),
        ("datasets", ["build", "energy-guidance/hopper/medium-v0", "--steps", "0"], "error: steps must be"),
    ],
)
def test_every_recipe_command_answers_a_bad_option_in_one_line(capsys, module, argv, message):
    import importlib

    main = importlib.import_module(f"energy_guidance.recipes.{module}").main
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err, err
    assert [line for line in err.splitlines() if "error" in line] == [err.splitlines()[-1]]
