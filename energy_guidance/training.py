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

Under ``torchrun`` (:mod:`energy_guidance.distributed`, after its ``setup``) the same code trains
on several processes: :func:`gradient_step` averages the gradients over the processes before the
optimizer steps, so every process takes the global batch's step; :func:`train` starts every
process from rank 0's modules (all ranks resume from the same checkpoint), averages the logged
losses over the processes, and leaves the checkpoints, the progress bar and ``log`` to rank 0.
Each process must draw its own batches: seed its generator with
:func:`~energy_guidance.distributed.rank_seed` and draw
:func:`~energy_guidance.distributed.local_batch_size` examples. A checkpoint keeps every
process's generator state, so a run resumed on as many processes continues exactly.

Interruption: while :func:`train` checkpoints (``checkpoint_dir`` given, one process), SIGINT
(Ctrl-C) and SIGTERM do not stop a step half way: the step under way finishes, a checkpoint is
written at that step (one checkpoint's cost), and :class:`Interrupted` is raised, saying the phase,
the step saved and the signal; a second signal stops at once. A handler the program installed
itself is left alone. A resumed run logs where it resumes ("resuming critic from step 140").

:func:`fit` is the common case: Adam on a loss function with a cosine decay of the learning rate.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

from . import distributed
from .checkpoints import load_checkpoint, save_checkpoint
from .progress import progress_bar

logger = logging.getLogger(__name__)

History = dict[str, list[float]]  # "step" -> [step, ...], each loss -> its averages at those steps


class Interrupted(KeyboardInterrupt):
    """Stopped by a signal (SIGINT or SIGTERM). ``phase`` and ``step``: the training phase and the
    step of the checkpoint written on the way out (None outside :func:`train`: the work under way
    is redone); ``status``: the conventional exit status, 128 + the signal's number. A subclass of
    KeyboardInterrupt, so code that handles Ctrl-C handles it."""

    def __init__(self, signum: int, phase: str | None = None, step: int | None = None) -> None:
        self.signum, self.phase, self.step = signum, phase, step
        self.status = 128 + signum
        where = "" if phase is None else f" in {phase}"
        if step is not None:
            where += f" at step {step} (checkpoint saved)"
        super().__init__(f"{signal.Signals(signum).name}{where}")


def _ours(handler: Any) -> bool:
    """Whether a signal's current handler may be replaced while training: Python's defaults, or
    one marked as the library's (``handler.energy_guidance = True``, e.g. a recipe's CLI)."""
    return handler in (signal.default_int_handler, signal.SIG_DFL) or getattr(
        handler, "energy_guidance", False
    )


@contextlib.contextmanager
def deferred_signals(enabled: bool = True) -> Iterator[list[int]]:
    """Within the block, SIGINT and SIGTERM are recorded in the list yielded instead of stopping
    the program (a second one raises :class:`Interrupted` at once). Only in the main thread, and
    only for signals whose handler :func:`_ours` allows; elsewhere the list stays empty."""
    received: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: Any) -> None:
        if received:
            raise Interrupted(signum)
        received.append(signum)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if _ours(signal.getsignal(signum)):
            previous[signum] = signal.signal(signum, handler)
    try:
        yield received
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def gradient_step(optimizer: Optimizer, loss: Tensor) -> float:
    """Zero the gradients of ``optimizer``'s parameters, back-propagate ``loss``, step; its value.

    With other processes (torchrun), the gradients are averaged over them before the step
    (:func:`~energy_guidance.distributed.average_gradients`); the value returned is this
    process's own loss."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if distributed.active():
        distributed.average_gradients(p for group in optimizer.param_groups for p in group["params"])
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
    A checkpoint keeps the losses since the last history entry, so a resumed run's history is
    the uninterrupted run's whatever ``checkpoint_every`` and ``log_every`` are.

    With other processes (torchrun), every process calls :func:`train` with the same arguments
    but its own ``generator``; the modules start from rank 0's, the history holds losses averaged
    over the processes (the same on every process), and only rank 0 writes checkpoints, shows the
    progress bar and calls ``log``.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    modules, optimizers, lr_schedulers = modules or {}, optimizers or {}, lr_schedulers or {}
    start, seconds = 0, 0.0
    history: History = {"step": []}
    window: dict[str, list[float]] = {}  # losses since the last history entry
    multi, main = distributed.active(), distributed.is_main()
    if checkpoint_dir is not None:

        def restore(states: dict[str, Any]) -> None:
            for key, optimizer in optimizers.items():
                optimizer.load_state_dict(states["optimizers"][key])
            for key, scheduler in lr_schedulers.items():
                scheduler.load_state_dict(states["lr_schedulers"][key])
            if generator is not None:
                state = _rank_generator_state(states, name)
                if isinstance(state, int):
                    generator.manual_seed(state)
                else:
                    generator.set_state(state)

        record = load_checkpoint(checkpoint_dir, name, modules, restore)
        if record is not None:
            start, history, seconds = record["step"], record["history"], record["seconds"]
            window = record.get("window", {})  # a checkpoint between two history entries
            if start > steps:
                raise ValueError(f"{checkpoint_dir} holds {name} at step {start}, beyond steps={steps}")
            if main:
                if start == steps:
                    logger.info("%s: finished (step %d), loaded from %s", name, start, checkpoint_dir)
                else:
                    logger.info("resuming %s from step %d of %d", name, start, steps)
    if multi:
        starts = distributed.gather_objects(start)
        if len(set(starts)) > 1:
            raise RuntimeError(f"the processes resume {name} from different steps {starts}")
        for module in modules.values():
            distributed.broadcast_module(module)

    began = time.perf_counter() - seconds

    def checkpoint(step: int) -> None:
        assert checkpoint_dir is not None  # called only when checkpointing
        state = None if generator is None else generator.get_state()
        states: dict[str, Any] = {
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "lr_schedulers": {k: s.state_dict() for k, s in lr_schedulers.items()},
            "generator": state,
        }
        if multi and generator is not None:  # every process's state, so that each resumes its own
            states["rank_generators"] = distributed.gather_objects(state)
        if main:
            record = {"history": history, "seconds": time.perf_counter() - began, "window": window}
            save_checkpoint(checkpoint_dir, name, step, modules=modules, states=states, record=record)
        distributed.barrier()  # no process reads a checkpoint before rank 0 has written it

    saving = checkpoint_dir is not None and not multi  # torchrun: its launcher handles signals
    bar = progress_bar(total=steps, initial=start, desc=name, progress=progress and main, mininterval=1.0)
    with bar, deferred_signals(saving and start < steps) as received:
        for step in range(start, steps):
            for key, value in update(step).items():
                window.setdefault(key, []).append(float(value))
            for scheduler in lr_schedulers.values():
                scheduler.step()
            if (step + 1) % log_every == 0 or step + 1 == steps:
                means = {key: sum(values) / len(values) for key, values in window.items()}
                means = distributed.average(means)  # over the processes; as is with one
                history["step"].append(step + 1)
                for key, value in means.items():
                    history.setdefault(key, []).append(value)
                bar.set_postfix({k: f"{v:.3g}" for k, v in means.items()}, refresh=False)
                if log is not None and main:
                    log(step + 1, means)
                window = {}
            bar.update()
            if checkpoint_dir is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
                checkpoint(step + 1)
            elif received:  # SIGINT or SIGTERM: save this step, then stop
                checkpoint(step + 1)
            if received:
                raise Interrupted(received[0], name, step + 1)
    return history


def _rank_generator_state(states: dict[str, Any], name: str) -> Tensor | int:
    """This process's generator state in a checkpoint's ``states``: its own when the checkpoint
    was written by as many processes; else rank 0's on rank 0 and, on other ranks, a seed mixed
    from rank 0's state and the rank (so each still draws its own batches, though not those an
    uninterrupted run would have drawn)."""
    own = states.get("rank_generators")
    r, n = distributed.rank(), distributed.world_size()
    if own is not None and len(own) == n:
        return own[r]
    if r == 0:
        return states["generator"]
    if r == 1:
        logger.warning(
            "%s: resuming on %d processes a checkpoint written by %d; the other ranks' batches are reseeded",
            name,
            n,
            1 if own is None else len(own),
        )
    return distributed.derived_seed(states["generator"], r)


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
