"""Run folders, checkpoints and resumable training phases.

A run folder holds

    config.json                 the recipe's configuration (a dataclass, as JSON)
    state.json                  which phases are finished, and their wall time
    <phase>.safetensors         a finished phase's weights
    checkpoints/<phase>.json    the latest periodic checkpoint of an unfinished phase: step,
                                loss history, seconds; it names the files of that step:
    checkpoints/<phase>-<step>.safetensors   weights
    checkpoints/<phase>-<step>.pt            optimizer and random-generator states (torch.save)

A finished phase is never redone: :func:`train_phase` loads its weights and returns. An unfinished
one restarts from its latest checkpoint with the same weights, optimizer moments and generator
state, so an interrupted run continues exactly where the checkpoint left it. The JSON record is
replaced (atomically) only after the files it names are complete, so an interruption while saving
leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm


def write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def save_modules(path: Path, modules: dict[str, nn.Module]) -> None:
    """All modules' state dicts in one safetensors file, keys prefixed by the module's name."""
    tensors = {
        f"{name}.{key}": value.detach().contiguous().clone()
        for name, module in modules.items()
        for key, value in module.state_dict().items()
    }
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def load_modules(path: Path, modules: dict[str, nn.Module]) -> None:
    """Load what :func:`save_modules` wrote into ``modules`` (strict: every key must match)."""
    tensors = load_file(str(path))
    for name, module in modules.items():
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})


class RunDir:
    """A run folder (see the module docstring); ``state.json`` records finished phases."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        state_file = self.path / "state.json"
        self.state = json.loads(state_file.read_text()) if state_file.exists() else {"phases": {}}

    def done(self, phase: str) -> bool:
        return self.state["phases"].get(phase, {}).get("done", False)

    def info(self, phase: str) -> dict:
        return self.state["phases"].get(phase, {})

    def finish(self, phase: str, **info) -> None:
        self.state["phases"][phase] = {"done": True, **info}
        write_json(self.path / "state.json", self.state)

    def weights(self, phase: str) -> Path:
        return self.path / f"{phase}.safetensors"

    def checkpoint(self, phase: str, suffix: str) -> Path:
        return self.path / "checkpoints" / f"{phase}{suffix}"


def save_checkpoint(
    run: RunDir,
    phase: str,
    step: int,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    generator: torch.Generator,
    history: dict[str, list[float]],
    seconds: float,
) -> None:
    """Write ``<phase>-<step>.{safetensors,pt}``, then point ``<phase>.json`` at them.

    The JSON is replaced last, atomically, so it always names a complete checkpoint; the files
    of the previous checkpoint are deleted afterwards.
    """
    previous = _record(run, phase)
    save_modules(run.checkpoint(f"{phase}-{step}", ".safetensors"), modules)
    state = {
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "generator": generator.get_state(),
    }
    tmp = run.checkpoint(f"{phase}-{step}", ".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, run.checkpoint(f"{phase}-{step}", ".pt"))
    write_json(run.checkpoint(phase, ".json"), {"step": step, "history": history, "seconds": seconds})
    if previous is not None and previous["step"] != step:
        _remove_files(run, phase, previous["step"])


def _record(run: RunDir, phase: str) -> dict | None:
    path = run.checkpoint(phase, ".json")
    return json.loads(path.read_text()) if path.exists() else None


def _remove_files(run: RunDir, phase: str, step: int) -> None:
    for suffix in (".safetensors", ".pt"):
        run.checkpoint(f"{phase}-{step}", suffix).unlink(missing_ok=True)


def load_checkpoint(
    run: RunDir,
    phase: str,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    generator: torch.Generator,
) -> dict | None:
    """Restore the latest checkpoint of ``phase``; its JSON record, or None if there is none."""
    record = _record(run, phase)
    if record is None:
        return None
    step = record["step"]
    load_modules(run.checkpoint(f"{phase}-{step}", ".safetensors"), modules)
    state = torch.load(run.checkpoint(f"{phase}-{step}", ".pt"), weights_only=True)
    for key, optimizer in optimizers.items():
        optimizer.load_state_dict(state["optimizers"][key])
    generator.set_state(state["generator"])
    return record


def train_phase(
    run: RunDir,
    phase: str,
    update: Callable[[int], dict[str, float]],
    *,
    steps: int,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    generator: torch.Generator,
    checkpoint_every: int = 1000,
    log_every: int = 50,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Call ``update(step)`` for step = 0 .. ``steps`` - 1, resumably; returns the loss history.

    ``update`` takes one optimisation step (drawing its batch from ``generator``; ``step`` is
    for step-dependent schedules) and returns its losses. ``history`` holds ``step`` and each
    loss averaged over the last ``log_every`` steps. ``checkpoint_every`` should be a multiple
    of ``log_every``.
    """
    if run.done(phase):
        load_modules(run.weights(phase), modules)
        return run.info(phase)["history"]
    record = load_checkpoint(run, phase, modules, optimizers, generator)
    if record is None:
        start, history, seconds = 0, {"step": []}, 0.0
    else:
        start, history, seconds = record["step"], record["history"], record["seconds"]
    began = time.perf_counter() - seconds
    window: dict[str, list[float]] = {}
    with tqdm(total=steps, initial=start, desc=phase, disable=not progress, mininterval=1.0) as bar:
        for step in range(start, steps):
            for key, value in update(step).items():
                window.setdefault(key, []).append(value)
            if (step + 1) % log_every == 0 or step + 1 == steps:
                means = {key: sum(values) / len(values) for key, values in window.items()}
                history["step"].append(step + 1)
                for key, value in means.items():
                    history.setdefault(key, []).append(value)
                bar.set_postfix({k: f"{v:.3g}" for k, v in means.items()}, refresh=False)
                window = {}
            bar.update()
            if (step + 1) % checkpoint_every == 0 and step + 1 < steps:
                elapsed = time.perf_counter() - began
                save_checkpoint(run, phase, step + 1, modules, optimizers, generator, history, elapsed)
    save_modules(run.weights(phase), modules)
    run.finish(phase, seconds=time.perf_counter() - began, history=history)
    last = _record(run, phase)
    if last is not None:  # the periodic checkpoint is superseded by the finished weights
        _remove_files(run, phase, last["step"])
        run.checkpoint(phase, ".json").unlink()
    return history
