"""What every recipe's command line shares: logging flags, one-line errors, and interruption.

:func:`command` runs a recipe's ``main`` body so that

- ``--log-level LEVEL`` (debug, info, warning, error; default info) and ``-q`` / ``--quiet``
  (warnings and errors only) configure the ``energy_guidance`` logger, the one switch for
  everything the library and the recipes report (a handler on standard error, one line a record);
- a user error (a bad option, a missing or damaged file, a folder in use, a write the system
  refuses) prints one line ``error: ...`` on standard error and exits with status 2 (1 for a
  write the system refused: a full disk, a read-only folder); any other exception is a bug and
  keeps its traceback;
- SIGINT (Ctrl-C) and SIGTERM stop the run after saving the current training step
  (:class:`energy_guidance.training.Interrupted`), print one line with the command that resumes,
  and exit with the conventional status 130 or 143.
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

from energy_guidance.checkpoints import CorruptFileError, WriteError
from energy_guidance.training import Interrupted

logger = logging.getLogger("energy_guidance")
LEVELS = ("debug", "info", "warning", "error")


class UserError(ValueError):
    """A bad option or input: the command line prints its message as one line (exit status 2)."""


# What a user can cause and fix; their messages say what to do. Anything else is a bug.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, CorruptFileError, FileNotFoundError)


def flag(dotted: str) -> str:
    """The command-line flag of a (dotted) config field, as tyro and argparse spell it."""
    return "--" + dotted.replace("_", "-")


def bad_value(dotted: str, what: str, value: Any, error: type[UserError] = UserError) -> UserError:
    """``<field> must be <what>, got <value> (<its flag>)``: the one line of a rejected setting."""
    return error(f"{dotted} must be {what}, got {value!r} ({flag(dotted)})")


def check_range(
    dotted: str,
    value: Any,
    low: float,
    high: float = math.inf,
    *,
    integer: bool = False,
    lower_open: bool = False,
    upper_open: bool = False,
    error: type[UserError] = UserError,
) -> None:
    """Reject ``value`` unless it is an integer (``integer``) or a finite number in the interval
    from ``low`` to ``high`` (ends included unless open), naming the field, the value and the range."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise bad_value(dotted, kind, value, error)
    if not integer and not math.isfinite(value):
        raise bad_value(dotted, "a finite number", value, error)
    above = value > low if lower_open else value >= low
    below = value < high if upper_open else value <= high
    if not (above and below):

        def text(v: float) -> str:
            return "∞" if v == math.inf else f"{v:g}"

        left, right = "(" if lower_open else "[", ")" if upper_open or high == math.inf else "]"
        raise bad_value(dotted, f"{kind} in {left}{text(low)}, {text(high)}{right}", value, error)


def logging_flags() -> argparse.ArgumentParser:
    """The logging flags as a parent parser (``argparse.ArgumentParser(parents=[...])``)."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument(
        "--log-level", type=str.lower, choices=LEVELS, default="info", help="what is logged (default info)"
    )
    flags.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    return flags


LOGGING_HELP = "Logging: --log-level {debug,info,warning,error} (default info), -q/--quiet (warnings only)."


def configure_logging(level: str = "info", quiet: bool = False) -> None:
    """A handler on standard error for the ``energy_guidance`` logger (the library itself configures
    none); called once by each command line."""
    logger.setLevel(logging.WARNING if quiet else getattr(logging, level.upper()))
    if not any(isinstance(h, _StandardError) for h in logger.handlers):
        handler = _StandardError()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


class _StandardError(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record is emitted (not when the handler was made)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _terminate(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


_terminate.energy_guidance = True  # type: ignore[attr-defined]  # training may defer it


def fail(message: str, status: int = 2) -> NoReturn:
    """Print ``error: message`` as one line on standard error and exit with ``status``."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def command(
    prog: str,
    argv: list[str] | None,
    body: Callable[[list[str]], Any],
    user_errors: tuple[type[BaseException], ...] = (),
    resumable: bool = False,
) -> Any:
    """Run ``body(rest of argv)`` as the command line ``prog`` (the module docstring); ``user_errors``
    adds exception types whose message is printed as one line. ``resumable``: an interrupted run
    is resumed by the same command (its line says so)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    known, rest = logging_flags().parse_known_args(argv)
    configure_logging(known.log_level, known.quiet)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return body(rest)
    except Interrupted as stop:
        _stopped(prog, argv, stop, stop.status, resumable)
    except KeyboardInterrupt as stop:
        _stopped(prog, argv, stop, 128 + signal.SIGINT, resumable)
    except WriteError as error:
        fail(str(error), 1)
    except USER_ERRORS + user_errors as error:
        fail(str(error))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stopped(prog: str, argv: list[str], stop: BaseException, status: int, resumable: bool) -> None:
    what = str(stop) or signal.Signals(status - 128).name
    if resumable:
        if not (isinstance(stop, Interrupted) and stop.step is not None):
            what += " (finished phases and checkpoints are kept; the work under way is redone)"
        what += f"; resume with: {shlex.join(['python', '-m', prog, *argv])}"
    print(f"interrupted: {what}", file=sys.stderr, flush=True)
    raise SystemExit(status)
