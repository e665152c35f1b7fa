"""Files that survive interruption: atomic writes, checksummed weights, checkpoints with a fallback,
cached trained modules. The library, its recipes and its benchmarks write their files through here.

Every file is written to a temporary sibling and moved into place with ``os.replace``, so a reader
sees either the old file or the complete new one, never a partial one. Weight files are
safetensors with a SHA-256 of their tensors in the metadata; optimizer and generator states are
``torch.save`` files whose SHA-256 is kept in the checkpoint's JSON record. A file that fails to
parse or to match its checksum raises :class:`CorruptFileError`, which names it.

A checkpoint ``<name>-<step>`` is three files in one directory:

    <name>-<step>.safetensors   the modules' weights (keys prefixed by the module's name)
    <name>-<step>.pt            optimizer, learning-rate scheduler and random-generator states
    <name>-<step>.json          step, history, seconds, the .pt file's checksum; written last

so a checkpoint exists exactly when its JSON record does. :func:`load_checkpoint` restores the
newest one that reads back intact; a damaged one is *quarantined*: its files are renamed with the
suffix ``.damaged`` (kept for inspection, never counted as progress), a WARNING log record names
the file, and the previous one is tried. :func:`save_checkpoint` keeps the two newest *intact*
checkpoints (each older one is verified once before it is relied on as the fallback; a damaged one
is quarantined), so progress made after a fallback is never pruned in favour of damaged files.

A write that fails (a full disk, a read-only folder) raises :class:`WriteError`, which names the
file and leaves no partial file behind; the previous file stays as it was.

A cached module (:func:`cached_module`) is one checksummed safetensors file holding a trained
module's weights and the settings it was trained with: equal settings load it, other settings or
a damaged file train it again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

logger = logging.getLogger(__name__)

KEEP = 2  # checkpoints kept per name: the newest and the one to fall back to
_UMASK = os.umask(0o022)  # read the process's umask (os.umask sets and returns it) ...
os.umask(_UMASK)  # ... and put it back


class CorruptFileError(ValueError):
    """A file is truncated, damaged or not what it claims to be; ``path`` names it."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path} is damaged or truncated ({reason}); delete it to recompute it")


class WriteError(OSError):
    """A file could not be written (full disk, read-only folder, ...); ``path`` names it. The
    previous file, if any, is unchanged and no partial file is left."""

    def __init__(self, path: str | Path, error: OSError) -> None:
        self.path = Path(path)
        self.message = f"cannot write {self.path}: {error.strerror or error}"
        super().__init__(error.errno, self.message)

    def __str__(self) -> str:
        return self.message  # the whole message; OSError would prefix "[Errno N]"


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is always either the old or the new file.

    An operating-system error (``ENOSPC``, ``EACCES``, ``EROFS``, ...) is raised as
    :class:`WriteError` naming ``path``, after the temporary file is removed."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a file is created as open() would
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, WriteError):
            raise WriteError(path, error) from error
        raise
    _fsync_directory(path.parent)


def _fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (after a power loss, not only a crash); a no-op where
    directories cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the file itself is on disk
    finally:
        os.close(fd)


def write_json(path: str | Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True).encode())


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(path, f"not valid JSON: {err}") from None


def _digest(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_tensors(
    path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None
) -> None:
    """A safetensors file with ``metadata`` and the tensors' SHA-256 (key ``sha256``), atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {**(metadata or {}), "sha256": _digest(tensors)}
    atomic_write(path, save_safetensors(tensors, metadata=meta))


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], dict]:
    """Tensors and metadata of a safetensors file, checked against its stored SHA-256 if it has one."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        tensors = load_safetensors(raw)
        metadata = _safetensors_metadata(raw)
    except Exception as err:  # safetensors raises its own error types for every kind of damage
        raise CorruptFileError(path, f"not a readable safetensors file: {err}") from None
    stored = metadata.get("sha256")
    if stored is not None and stored != _digest(tensors):
        raise CorruptFileError(path, "its tensors do not match the checksum stored with them")
    return {k: v.to(device) for k, v in tensors.items()}, metadata


def _safetensors_metadata(raw: bytes) -> dict[str, str]:
    size = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + size]).get("__metadata__", {}) or {}


def save_modules(
    path: str | Path, modules: dict[str, nn.Module], metadata: dict[str, str] | None = None
) -> None:
    """All modules' state dicts in one checksummed safetensors file, keys prefixed by the module's name."""
    tensors = {
        f"{name}.{key}": value.clone()
        for name, module in modules.items()
        for key, value in module.state_dict().items()
    }
    save_tensors(path, tensors, metadata)


def load_modules(path: str | Path, modules: dict[str, nn.Module]) -> None:
    """Load what :func:`save_modules` wrote into ``modules`` (strict: every key must match)."""
    tensors, _ = load_tensors(path)
    for name, module in modules.items():
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})


def _state_path(directory: Path, name: str, step: int, suffix: str) -> Path:
    return directory / f"{name}-{step}{suffix}"


def checkpoint_steps(directory: str | Path, name: str) -> list[int]:
    """Steps of the complete checkpoints of ``name`` in ``directory``, newest first."""
    pattern = re.compile(rf"{re.escape(name)}-(\d+)\.json")
    directory = Path(directory)
    if not directory.is_dir():
        return []
    steps = [int(m.group(1)) for p in directory.iterdir() if (m := pattern.fullmatch(p.name))]
    return sorted(steps, reverse=True)


def save_checkpoint(
    directory: str | Path,
    name: str,
    step: int,
    *,
    modules: dict[str, nn.Module],
    states: dict[str, Any],
    record: dict[str, Any],
) -> None:
    """Write checkpoint ``<name>-<step>``: weights, then ``states`` (optimizers, generators,
    anything ``torch.load(weights_only=True)`` reads back), then the JSON ``record``; then keep
    the :data:`KEEP` newest intact checkpoints of ``name`` (a damaged one is quarantined, see
    :func:`quarantine_checkpoint`) and delete the others."""
    directory = Path(directory)
    save_modules(_state_path(directory, name, step, ".safetensors"), modules)
    buffer = io.BytesIO()
    torch.save(states, buffer)
    blob = buffer.getvalue()
    atomic_write(_state_path(directory, name, step, ".pt"), blob)
    write_json(
        _state_path(directory, name, step, ".json"),
        {**record, "step": step, "states_sha256": hashlib.sha256(blob).hexdigest()},
    )
    _VERIFIED.add(_fingerprint(directory, name, step))
    prune_checkpoints(directory, name)


# Checkpoints known intact (written or verified by this process), by their files' paths, sizes and
# modification times, so that each one is read back at most once (a file changed since is read again).
_VERIFIED: set[tuple] = set()


def _fingerprint(directory: Path, name: str, step: int) -> tuple:
    paths = [_state_path(directory, name, step, suffix) for suffix in (".json", ".safetensors", ".pt")]
    return tuple((str(p), (s := p.stat()).st_size, s.st_mtime_ns) for p in paths)


def prune_checkpoints(directory: str | Path, name: str, keep: int = KEEP) -> None:
    """Keep the ``keep`` newest intact checkpoints of ``name``; delete the older ones. A damaged
    checkpoint met on the way is quarantined, so it never displaces an intact one."""
    directory = Path(directory)
    kept = 0
    for step in checkpoint_steps(directory, name):
        if kept >= keep:
            remove_checkpoint(directory, name, step)
            continue
        try:
            key = _fingerprint(directory, name, step)
            if key not in _VERIFIED:
                _read_checkpoint(directory, name, step)
                _VERIFIED.add(key)
            kept += 1
        except (CorruptFileError, FileNotFoundError) as error:
            quarantine_checkpoint(directory, name, step, error)


def copy_checkpoint(source: str | Path, target: str | Path, name: str) -> int:
    """Copy the newest complete checkpoint of ``name`` from directory ``source`` into ``target``
    (created if needed; its JSON record last, so the copy is complete exactly when it exists), so
    that a new run starts from it; returns its step."""
    source, target = Path(source), Path(target)
    steps = checkpoint_steps(source, name)
    if not steps:
        raise FileNotFoundError(f"no complete checkpoint {name!r} in {source}")
    for suffix in (".safetensors", ".pt", ".json"):  # each file atomically, the record last
        path = _state_path(source, name, steps[0], suffix)
        atomic_write(_state_path(target, name, steps[0], suffix), path.read_bytes())
    return steps[0]


def remove_checkpoint(directory: str | Path, name: str, step: int) -> None:
    directory = Path(directory)
    _state_path(directory, name, step, ".json").unlink(missing_ok=True)  # first: it marks completeness
    for suffix in (".safetensors", ".pt"):
        _state_path(directory, name, step, suffix).unlink(missing_ok=True)


DAMAGED = ".damaged"  # the suffix of a quarantined file


def quarantine_checkpoint(directory: str | Path, name: str, step: int, error: Exception) -> None:
    """Move checkpoint ``<name>-<step>`` aside: each of its files gets the suffix ``.damaged``
    (the JSON record first, so it stops counting at once), and a WARNING log record names the
    damaged file. In a folder that cannot be changed the files stay and the record says so."""
    directory = Path(directory)
    try:
        for suffix in (".json", ".safetensors", ".pt"):
            path = _state_path(directory, name, step, suffix)
            if path.exists():
                os.replace(path, path.with_name(path.name + DAMAGED))
        where = f"moved aside as {_state_path(directory, name, step, '.*' + DAMAGED)}"
    except OSError as failure:
        where = f"left in place ({failure.strerror or failure})"
    logger.warning("checkpoint %s-%d is damaged and does not count: %s; %s", name, step, error, where)


def _read_checkpoint(directory: Path, name: str, step: int) -> tuple[dict, dict[str, Tensor], bytes]:
    """The record, weights and states blob of checkpoint ``<name>-<step>``, each checked against
    its checksum; :class:`CorruptFileError` (or FileNotFoundError) names the damaged file."""
    record = read_json(_state_path(directory, name, step, ".json"))
    if not isinstance(record, dict):
        raise CorruptFileError(_state_path(directory, name, step, ".json"), "not a checkpoint record")
    pt = _state_path(directory, name, step, ".pt")
    blob = pt.read_bytes()
    if hashlib.sha256(blob).hexdigest() != record.get("states_sha256"):
        raise CorruptFileError(pt, "it does not match the checksum in its record")
    tensors, _ = load_tensors(_state_path(directory, name, step, ".safetensors"))
    return record, tensors, blob


def load_checkpoint(
    directory: str | Path,
    name: str,
    modules: dict[str, nn.Module],
    restore: Callable[[dict[str, Any]], None],
) -> dict[str, Any] | None:
    """Restore the newest intact checkpoint of ``name``: weights into ``modules``, and
    ``restore(states)`` for what :func:`save_checkpoint` stored as ``states``. Returns its record,
    or None when there is no intact checkpoint. A damaged one is quarantined
    (:func:`quarantine_checkpoint`: renamed ``*.damaged``, a WARNING log record naming the file)."""
    directory = Path(directory)
    for step in checkpoint_steps(directory, name):
        try:
            key = _fingerprint(directory, name, step)
            record, tensors, blob = _read_checkpoint(directory, name, step)
            try:
                states = torch.load(io.BytesIO(blob), weights_only=True)
            except Exception as err:  # a blob with the right checksum that torch cannot read
                raise CorruptFileError(_state_path(directory, name, step, ".pt"), str(err)) from None
        except (CorruptFileError, FileNotFoundError) as err:
            quarantine_checkpoint(directory, name, step, err)
            continue
        _VERIFIED.add(key)
        for module_name, module in modules.items():
            prefix = f"{module_name}."
            module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        restore(states)
        return record
    return None


M = TypeVar("M", bound=nn.Module)


class Cached(NamedTuple):
    """What :func:`cached_module` returns."""

    module: nn.Module  # in evaluation mode
    loaded: bool  # read from the cache file (False: built now, and saved)
    seconds: float  # spent building it (0 when loaded)


def cached_module(path: str | Path, build: Callable[[], M], make: Callable[[], M], settings: Any) -> Cached:
    """``build()``'s trained module, cached in ``path`` under ``settings`` (anything JSON holds).

    When ``path`` holds weights saved with equal ``settings`` they are loaded into ``make()`` (an
    untrained module of the same architecture); otherwise ``build()`` trains one, and its weights
    are saved atomically and checksummed with ``settings`` in the file's metadata. A damaged file,
    or one that does not fit ``make()``'s architecture, is reported with a WARNING log record and rebuilt.
    """
    path = Path(path)
    key = json.dumps(settings, sort_keys=True)
    if path.exists():
        try:
            tensors, metadata = load_tensors(path)
            if metadata.get("settings") == key:
                module = make()
                module.load_state_dict(tensors)
                return Cached(module.eval(), True, 0.0)
        except (CorruptFileError, RuntimeError) as err:  # RuntimeError: other keys or shapes
            logger.warning("rebuilding %s: %s", path, err)
    start = time.perf_counter()
    module = build()
    save_tensors(path, module.state_dict(), metadata={"settings": key})
    return Cached(module.eval(), False, time.perf_counter() - start)
