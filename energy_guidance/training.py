"""The training loop: every network of the project trains through :func:`train`.

``update(step)`` takes one optimisation step (drawing its batch from a torch generator) and
returns its losses; :func:`train` calls it for the remaining steps, steps torch's learning-rate
schedulers, averages the losses over ``log_every`` steps into a history, shows a progress bar,
hands each averaged entry to ``log`` and, given a ``checkpoint_dir``, checkpoints every
``checkpoint_every`` steps (:mod:`energy_guidance.checkpoints`). A run that was interrupted
resumes from its newest intact checkpoint with the same weights, optimizer moments,
learning-rate schedule and generator state: the result is the same, bit for bit, as that of a
run that was never interrupted. A finished run leaves its final checkpoint (step = ``steps``),
so calling :func:`train` again only loads the weights.

:func:`fit` is the common case: Adam on a loss function with a cosine decay of the learning rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler
from tqdm.auto import tqdm

from .checkpoints import load_checkpoint, save_checkpoint

History = dict[str, list[float]]  # "step" -> [step, ...], each loss -> its averages at those steps


def gradient_step(optimizer: Optimizer, loss: Tensor) -> float:
    """Zero the gradients of ``optimizer``'s parameters, back-propagate ``loss``, step; its value."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def train(
    update: Callable[[int], dict[str, float]],
    steps: int,
    *,
    modules: dict[str, nn.Module] | None = None,
    optimizers: dict[str, Optimizer] | None = None,
    lr_schedulers: dict[str, LRScheduler] | None = None,
    generator: torch.Generator | None = None,
    checkpoint_dir: str | Path | None = None,
    name: str = "training",
    checkpoint_every: int = 1000,
    log_every: int = 50,
    log: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
) -> History:
    """Call ``update(step)`` for step = 0 .. ``steps`` - 1 (resumably); returns the loss history.

    ``modules``, ``optimizers``, ``lr_schedulers`` and ``generator`` are what a checkpoint saves
    and a resumed run restores; every learning-rate scheduler is stepped once after each update.
    ``log(step, means)`` receives each entry of the history as it is made (metrics loggers).
    ``checkpoint_every`` should be a multiple of ``log_every``.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    modules, optimizers, lr_schedulers = modules or {}, optimizers or {}, lr_schedulers or {}
    start, history, seconds = 0, {"step": []}, 0.0
    if checkpoint_dir is not None:

        def restore(states: dict[str, Any]) -> None:
            for key, optimizer in optimizers.items():
                optimizer.load_state_dict(states["optimizers"][key])
            for key, scheduler in lr_schedulers.items():
                scheduler.load_state_dict(states["lr_schedulers"][key])
            if generator is not None:
                generator.set_state(states["generator"])

        record = load_checkpoint(checkpoint_dir, name, modules, restore)
        if record is not None:
            start, history, seconds = record["step"], record["history"], record["seconds"]
            if start > steps:
                raise ValueError(f"{checkpoint_dir} holds {name} at step {start}, beyond steps={steps}")

    began = time.perf_counter() - seconds

    def checkpoint(step: int) -> None:
        states = {
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "lr_schedulers": {k: s.state_dict() for k, s in lr_schedulers.items()},
            "generator": None if generator is None else generator.get_state(),
        }
        record = {"history": history, "seconds": time.perf_counter() - began}
        save_checkpoint(checkpoint_dir, name, step, modules=modules, states=states, record=record)

    window: dict[str, list[float]] = {}
    with tqdm(total=steps, initial=start, desc=name, disable=not progress, mininterval=1.0) as bar:
        for step in range(start, steps):
            for key, value in update(step).items():
                window.setdefault(key, []).append(float(value))
            for scheduler in lr_schedulers.values():
                scheduler.step()
            if (step + 1) % log_every == 0 or step + 1 == steps:
                means = {key: sum(values) / len(values) for key, values in window.items()}
                history["step"].append(step + 1)
                for key, value in means.items():
                    history.setdefault(key, []).append(value)
                bar.set_postfix({k: f"{v:.3g}" for k, v in means.items()}, refresh=False)
                if log is not None:
                    log(step + 1, means)
                window = {}
            bar.update()
            if checkpoint_dir is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
                checkpoint(step + 1)
    return history


def fit(
    module: nn.Module,
    loss: Callable[[], Tensor],
    *,
    steps: int,
    lr: float = 1e-3,
    parameters: Iterable[Tensor] | None = None,
    generator: torch.Generator | None = None,
    checkpoint_dir: str | Path | None = None,
    name: str = "fit",
    checkpoint_every: int = 1000,
    log_every: int = 50,
    log: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
) -> History:
    """Minimise ``loss()`` over ``module``'s parameters with Adam, the learning rate decaying from
    ``lr`` to 0 on a cosine (``CosineAnnealingLR``) over ``steps``; :func:`train` does the rest.
    The history's key is ``"loss"``."""
    optimizer = torch.optim.Adam(module.parameters() if parameters is None else parameters, lr=lr)
    schedule = CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    return train(
        lambda step: {"loss": gradient_step(optimizer, loss())},
        steps,
        modules={"module": module},
        optimizers={"module": optimizer},
        lr_schedulers={"module": schedule},
        generator=generator,
        checkpoint_dir=checkpoint_dir,
        name=name,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        log=log,
        progress=progress,
    )
