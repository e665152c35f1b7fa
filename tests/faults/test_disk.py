"""A full disk (a write that fails with ENOSPC), a read-only folder and a second run on the same
folder: the run stops with one line naming the file, no partial or temporary file is left, and
everything the folder held before is intact."""

import errno
import os
from pathlib import Path

import pytest

import energy_guidance.recipes.aepo as aepo
from energy_guidance.recipes.runfolder import RunFolder
from tests.recipes.conftest import tiny_args

from .helpers import no_evaluation, snapshot


def _fail_writes_of(monkeypatch, fragment: str, code: int) -> None:
    """``os.fsync`` of a file whose name contains ``fragment`` fails with ``code`` (the data is
    written but cannot be flushed: how a full disk shows itself)."""
    fsync = os.fsync

    def failing(fd):
        if fragment in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(code, os.strerror(code))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", failing)


def _error_line(capsys, argv: list[str], status: int) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        aepo.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert exit_.value.code == status and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _no_temporaries(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "written, argv_extra",
    [
        ("critic-200.safetensors", ()),  # a checkpoint, while the critic retrains its last 100 steps
        ("state.json", ("--eval-episodes", "2")),  # the record of a new evaluation
    ],
)
def test_a_full_disk_leaves_the_previous_state_intact(finished_run, monkeypatch, capsys, written, argv_extra):
    folder, _ = finished_run
    if written.startswith("critic"):
        (folder / "checkpoints" / "critic-200.json").unlink()  # the critic resumes from step 100
    before = snapshot(folder)
    no_evaluation(monkeypatch)
    _fail_writes_of(monkeypatch, f".{written}.", errno.ENOSPC)
    line = _error_line(capsys, tiny_args(folder, *argv_extra), 1)
    target = folder / "checkpoints" / written if written.startswith("critic") else folder / written
    assert line == f"error: cannot write {target}: No space left on device"
    _no_temporaries(folder)
    after = snapshot(folder)
    for name, data in before.items():  # every file as it was (config.json: its runtime settings)
        if name not in (".lock", "config.json"):
            assert after[name] == data, name
    if written.startswith("critic"):  # the checkpoint that could not be written does not count
        assert not (folder / "checkpoints" / "critic-200.json").exists()


def test_a_read_only_folder_is_named(finished_run, monkeypatch, capsys):
    """A folder that cannot be written (simulated: root ignores permissions): one line naming the
    file the run needed to write, nothing changed."""
    folder, _ = finished_run
    before = snapshot(folder)
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT
        if str(path).startswith(str(folder)) and flags & writes:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    line = _error_line(capsys, tiny_args(folder), 1)
    assert line == f"error: cannot write {folder / '.lock'}: Read-only file system"
    monkeypatch.undo()
    assert snapshot(folder) == before


def test_a_second_run_on_the_folder_is_refused_in_one_line(finished_run, capsys):
    folder, _ = finished_run
    before = snapshot(folder)
    with RunFolder(folder).lock():  # another run holds the folder
        line = _error_line(capsys, tiny_args(folder), 2)
    assert line.startswith(f"error: {folder} is in use by another run (pid {os.getpid()}")
    after = snapshot(folder)
    assert {k: v for k, v in after.items() if k != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }
