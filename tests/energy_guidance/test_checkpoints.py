"""checkpoints.py: atomic files, checksummed weights, a fallback past a damaged checkpoint, and
cached trained modules."""

import errno
import json
import logging
import os

import pytest
import torch
from torch import nn

from energy_guidance.checkpoints import (
    CorruptFileError,
    WriteError,
    atomic_write,
    cached_module,
    checkpoint_steps,
    copy_checkpoint,
    load_checkpoint,
    load_modules,
    load_tensors,
    read_json,
    save_checkpoint,
    save_modules,
    save_tensors,
)


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write(path, b"old")
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert os.listdir(path.parent) == ["f.bin"]


def test_written_files_get_the_usual_permissions(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, b"data")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    atomic_write(path, b"old")

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_tensors_round_trip_with_metadata(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5), "scalar": torch.tensor(2.5)}
    save_tensors(tmp_path / "t.safetensors", tensors, {"config": "{}"})
    loaded, metadata = load_tensors(tmp_path / "t.safetensors")
    assert metadata["config"] == "{}" and "sha256" in metadata
    for key, value in tensors.items():
        assert torch.equal(loaded[key], value)


@pytest.mark.parametrize("damage", ["truncate", "zero", "flip_data_byte", "garbage"])
def test_a_damaged_weight_file_is_named(tmp_path, damage):
    path = tmp_path / "weights.safetensors"
    save_tensors(path, {"w": torch.randn(64, 64)})
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "zero":
        raw = bytearray(len(raw))
    elif damage == "flip_data_byte":  # the header still parses: only the checksum can tell
        raw[-5] ^= 0xFF
    else:
        raw = bytearray(b"not a safetensors file at all")
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match=r"weights\.safetensors") as info:
        load_tensors(path)
    assert info.value.path == path


def test_a_truncated_json_file_is_named(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"phases": {"critic": {"done": True}}})[:-7])
    with pytest.raises(CorruptFileError, match=r"state\.json"):
        read_json(path)


def test_modules_round_trip_and_a_missing_key_is_an_error(tmp_path):
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    save_modules(tmp_path / "m.safetensors", {"net": a})
    load_modules(tmp_path / "m.safetensors", {"net": b})
    assert torch.equal(a.weight, b.weight)
    with pytest.raises(RuntimeError, match="Missing key"):
        load_modules(tmp_path / "m.safetensors", {"other": nn.Linear(3, 2)})


def _save(directory, step, value):
    net = nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.fill_(value)
    save_checkpoint(
        directory, "phase", step, modules={"net": net}, states={"value": value}, record={"x": step}
    )


def test_checkpoints_keep_the_two_newest_and_fall_back_past_a_damaged_one(tmp_path, caplog):
    for step in (10, 20, 30):
        _save(tmp_path, step, float(step))
    assert checkpoint_steps(tmp_path, "phase") == [30, 20]
    assert not (tmp_path / "phase-10.safetensors").exists()

    restored = {}
    net = nn.Linear(2, 1)
    record = load_checkpoint(tmp_path, "phase", {"net": net}, restored.update)
    assert record["step"] == 30 and restored == {"value": 30.0} and float(net.weight.detach()[0, 0]) == 30.0

    weights = tmp_path / "phase-30.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])  # a crash mid-copy, a bad disk block
    with caplog.at_level(logging.WARNING, logger="energy_guidance"):
        record = load_checkpoint(tmp_path, "phase", {"net": net}, restored.update)
    assert record["step"] == 20 and restored == {"value": 20.0} and float(net.weight.detach()[0, 0]) == 20.0
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "phase-30.safetensors" in caplog.text and "phase-30.*.damaged" in caplog.text
    # quarantined: renamed aside, no longer a checkpoint
    assert checkpoint_steps(tmp_path, "phase") == [20]
    assert sorted(p.name for p in tmp_path.glob("phase-30.*")) == [
        "phase-30.json.damaged",
        "phase-30.pt.damaged",
        "phase-30.safetensors.damaged",
    ]

    caplog.clear()
    states = tmp_path / "phase-20.pt"
    states.write_bytes(states.read_bytes()[:-3])
    with caplog.at_level(logging.WARNING, logger="energy_guidance"):
        assert load_checkpoint(tmp_path, "phase", {"net": net}, restored.update) is None
    assert "phase-20.pt" in caplog.text and checkpoint_steps(tmp_path, "phase") == []


def test_progress_after_a_fallback_survives_pruning(tmp_path, caplog):
    """Both kept checkpoints damaged: the run starts again, and what it saves then is kept (the
    damaged files never count as newer progress)."""
    for step in (30, 40):
        _save(tmp_path, step, float(step))
    for step in (30, 40):
        path = tmp_path / f"phase-{step}.safetensors"
        path.write_bytes(bytes(len(path.read_bytes())))
    with caplog.at_level(logging.WARNING, logger="energy_guidance"):
        assert load_checkpoint(tmp_path, "phase", {"net": nn.Linear(2, 1)}, {}.update) is None
    _save(tmp_path, 10, 10.0)
    assert checkpoint_steps(tmp_path, "phase") == [10]
    _save(tmp_path, 20, 20.0)
    assert checkpoint_steps(tmp_path, "phase") == [20, 10]
    restored = {}
    assert load_checkpoint(tmp_path, "phase", {"net": nn.Linear(2, 1)}, restored.update)["step"] == 20


def test_pruning_keeps_the_newest_intact_checkpoints(tmp_path, caplog):
    """A damaged older checkpoint is not kept as the fallback: pruning quarantines it and keeps
    an intact one instead."""
    for step in (10, 20):
        _save(tmp_path, step, float(step))
    (tmp_path / "phase-20.pt").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="energy_guidance"):
        _save(tmp_path, 30, 30.0)
    assert checkpoint_steps(tmp_path, "phase") == [30, 10]
    assert "phase-20.pt" in caplog.text and (tmp_path / "phase-20.pt.damaged").exists()


def test_a_full_disk_leaves_no_partial_file_and_the_old_one_intact(tmp_path, monkeypatch):
    path = tmp_path / "data.bin"
    atomic_write(path, b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError, match=f"cannot write {path}: No space left on device") as error:
        atomic_write(path, b"new" * 1000)
    assert error.value.errno == errno.ENOSPC and error.value.path == path
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["data.bin"]


def test_copy_checkpoint_copies_the_newest_complete_one(tmp_path):
    """A new run starts from another run's phase: the copy loads like the original."""
    for step in (10, 20):
        _save(tmp_path / "a", step, float(step))
    assert copy_checkpoint(tmp_path / "a", tmp_path / "b" / "checkpoints", "phase") == 20
    assert checkpoint_steps(tmp_path / "b" / "checkpoints", "phase") == [20]
    restored, net = {}, nn.Linear(2, 1)
    record = load_checkpoint(tmp_path / "b" / "checkpoints", "phase", {"net": net}, restored.update)
    assert record["step"] == 20 and restored == {"value": 20.0} and float(net.weight.detach()[0, 0]) == 20.0
    with pytest.raises(FileNotFoundError, match="no complete checkpoint 'other'"):
        copy_checkpoint(tmp_path / "a", tmp_path / "c", "other")


def test_cached_module_loads_equal_settings_and_rebuilds_otherwise(tmp_path, caplog):
    path = tmp_path / "cache" / "net.safetensors"
    builds = []

    def build(seed):
        def make_trained():
            builds.append(seed)
            torch.manual_seed(seed)
            return nn.Linear(3, 2)

        return make_trained

    first = cached_module(path, build(0), lambda: nn.Linear(3, 2), {"seed": 0, "sizes": (3, 2)})
    assert not first.loaded and builds == [0] and not first.module.training
    again = cached_module(path, build(0), lambda: nn.Linear(3, 2), {"sizes": [3, 2], "seed": 0})
    assert again.loaded and again.seconds == 0.0 and builds == [0]  # JSON-equal settings load
    for a, b in zip(first.module.state_dict().values(), again.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    other = cached_module(path, build(1), lambda: nn.Linear(3, 2), {"seed": 1, "sizes": (3, 2)})
    assert not other.loaded and builds == [0, 1]
    # a damaged file, and one that does not fit the architecture, are reported and rebuilt
    path.write_bytes(path.read_bytes()[:-5])
    with caplog.at_level(logging.WARNING, logger="energy_guidance"):
        assert not cached_module(path, build(1), lambda: nn.Linear(3, 2), {"seed": 1, "sizes": (3, 2)}).loaded
    assert f"rebuilding {path}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="energy_guidance"):
        assert not cached_module(path, build(1), lambda: nn.Linear(4, 2), {"seed": 1, "sizes": (3, 2)}).loaded
    assert "rebuilding" in caplog.text
    assert builds == [0, 1, 1, 1]
