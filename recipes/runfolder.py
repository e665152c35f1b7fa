"""Run folders: one recipe run's configuration, checkpoints, cached results, and its lock.

A run folder holds

    .lock                        held (``fcntl.flock``) while a run works in the folder
    config.json                  the settings, split in three groups (below)
    checkpoints/<phase>-<step>.{safetensors,pt,json}
                                 the training phases' checkpoints (:mod:`energy_guidance.checkpoints`);
                                 the final one (step = the phase's steps) stays, so a finished phase
                                 is loaded, never redone
    state.json                   finished untrained steps (the variance table), and every
                                 evaluation's returns, keyed by a hash of its settings
    <name>.safetensors           other results of finished steps (the variance table)
    results.json, learning_curves.png   the report of the latest invocation

The settings are split into **training** settings, which must match for a run to resume (a
different value means a different model: the run is refused, naming the fields), **evaluation**
settings, which may change on a finished run (the models are reused and the evaluations are
recomputed for the new settings; earlier ones stay cached under their own key), and **runtime**
settings (folder, threads, progress bars), which never matter. ``config.json`` is written only
after the inputs were validated, so a run that fails on a bad input leaves the folder usable; a
folder whose only content is a configuration (a run stopped before it computed anything, or a
configuration written by an older recipe that validated less) takes a new one. A run that fails
before it writes its configuration removes the folder it created (no stray ``.lock``).

Every file is written atomically (:func:`energy_guidance.checkpoints.atomic_write`), and a
damaged file is reported by name (:class:`energy_guidance.checkpoints.CorruptFileError`); a
damaged periodic checkpoint falls back to the previous one (``energy_guidance.training.train``).
The lock is an advisory ``flock`` on ``.lock``: a second run in the same folder is refused with
the first one's process id; the operating system releases it when its process ends, however it
ends, so a killed run never leaves a stale lock. (``fcntl`` is POSIX: Linux and macOS.)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from energy_guidance.checkpoints import WriteError, atomic_write, checkpoint_steps, read_json, write_json

logger = logging.getLogger(__name__)

Settings = dict[str, Any]


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock."""


class ConfigMismatch(ValueError):
    """The folder holds a run with other training settings."""


def flatten(settings: Settings, prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"dotted.name": value}``."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def settings_key(settings: Settings) -> str:
    """A short stable hash of ``settings`` (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class RunFolder:
    """A run folder (see the module docstring). Use :meth:`lock` around all work in it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"

    @contextlib.contextmanager
    def lock(self) -> Iterator[RunFolder]:
        """Hold the folder's lock; raise :class:`RunFolderBusy` at once if another process has it.

        A folder this call created and in which nothing else was written (the run failed before
        its configuration was saved) is removed again on the way out, ``.lock`` included."""
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise WriteError(self.path / ".lock", error) from error
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                raise RunFolderBusy(
                    f"{self.path} is in use by another run ({holder}); wait for it to finish, "
                    "or choose another --run-dir"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
            yield self
        finally:
            if created and [p.name for p in self.path.iterdir()] == [".lock"]:
                (self.path / ".lock").unlink()  # while still holding the lock
                with contextlib.suppress(OSError):
                    self.path.rmdir()
            os.close(fd)  # closing the descriptor releases the lock

    # -- configuration ---------------------------------------------------------------------------

    def adopt(
        self, training: Settings, evaluation: Settings, runtime: Settings, defaults: Settings | None = None
    ) -> None:
        """Check ``training`` against the folder's ``config.json`` (if any), then write all three
        groups to it. Call it only once the inputs are known to be valid.

        A training field missing from the saved config (added to the recipe after that run was
        made) counts as its value in ``defaults``, the recipe's defaults, which reproduce what the
        older recipe did: so a new option does not orphan the runs made before it existed."""
        path = self.path / "config.json"
        if path.exists() and not self.holds_results():  # e.g. a run that failed before any work
            logger.info("%s holds a configuration but no results; it takes this run's", self.path)
        elif path.exists():
            differ = self.differing_training(training, defaults)
            if differ:
                raise ConfigMismatch(
                    f"{self.path} holds a run with different training settings (fields {differ}); "
                    "resume it with the same settings or choose another --run-dir (evaluation "
                    "settings may change freely)"
                )
        write_json(path, {"training": training, "evaluation": evaluation, "runtime": runtime})

    def differing_training(self, training: Settings, defaults: Settings | None = None) -> list[str]:
        """The (dotted) training fields in which ``training`` differs from the folder's
        ``config.json``; a field missing there counts as its value in ``defaults`` (:meth:`adopt`)."""
        path = self.path / "config.json"
        saved = read_json(path)
        if not isinstance(saved, dict) or not isinstance(saved.get("training"), dict):
            raise ConfigMismatch(
                f"{path} was written by an older version of the recipe; choose another --run-dir "
                "or delete the folder"
            )
        old, new, known = flatten(saved["training"]), flatten(training), flatten(defaults or {})
        old |= {k: known[k] for k in new.keys() - old.keys() if k in known}
        return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))

    def holds_results(self) -> bool:
        """Whether anything was computed here: a checkpoint (intact or quarantined), a finished step
        or evaluation (``state.json``), a result file. A folder with only ``config.json`` holds none."""
        if self.checkpoints.is_dir() and any(self.checkpoints.iterdir()):
            return True
        return any(p.name not in (".lock", "config.json") for p in self.path.iterdir())

    # -- state: finished steps and cached evaluations ----------------------------------------------

    @property
    def state(self) -> dict[str, Any]:
        path = self.path / "state.json"
        return read_json(path) if path.exists() else {"steps": {}, "evaluations": {}}

    def _update_state(self, change) -> None:
        state = self.state
        change(state)
        write_json(self.path / "state.json", state)

    def finished(self, step: str) -> dict[str, Any] | None:
        """The record of a finished untrained step (e.g. ``"variance"``), or None."""
        return self.state["steps"].get(step)

    def step_seconds(self, step: str) -> float | None:
        """Seconds of a finished untrained step (None: not finished)."""
        record = self.finished(step)
        return None if record is None else record["seconds"]

    def finish(self, step: str, **record: Any) -> None:
        self._update_state(lambda state: state["steps"].__setitem__(step, record))

    def evaluation(self, settings: Settings, policy: str) -> dict[str, Any] | None:
        """The stored evaluation of ``policy`` under ``settings``, or None."""
        entry = self.state["evaluations"].get(settings_key(settings))
        return None if entry is None else entry["policies"].get(policy)

    def record_evaluation(self, settings: Settings, policy: str, record: dict[str, Any]) -> None:
        def change(state):
            entry = state["evaluations"].setdefault(
                settings_key(settings), {"settings": settings, "policies": {}}
            )
            entry["policies"][policy] = record

        self._update_state(change)

    # -- training phases and reports ---------------------------------------------------------------

    def phase_seconds(self, phase: str) -> float | None:
        """Training seconds of ``phase`` up to its newest checkpoint (None without one)."""
        steps = checkpoint_steps(self.checkpoints, phase)
        if not steps:
            return None
        return read_json(self.checkpoints / f"{phase}-{steps[0]}.json").get("seconds")

    def write_json(self, name: str, data: Any) -> None:
        write_json(self.path / name, data)

    def write_bytes(self, name: str, data: bytes) -> None:
        atomic_write(self.path / name, data)
