"""What a sampler costs: measured wall time and model passes, for comparisons at equal cost.

A guided sampler and the importance-resampling baseline (:mod:`.resampling`) are compared at the
same cost, measured two ways: wall-clock seconds, and *sample-passes* through the noise model, one
per sample per forward call and one per sample per backward pass through the model's output (a
backward counted as one pass, as measured, not as a multiple of a forward). Wrap the model once,
run each sampler under :func:`measure`::

    counter = CountingModel(model)
    guided, cost = measure(lambda: guidance_sampler(counter), counter)
    unguided, base = measure(lambda: sample(scheduler, counter, (n, d)), counter)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from ..callables import NoiseModel

T = TypeVar("T")


class CountingModel:
    """``model(x_t, t[, cond], ...)`` that counts its forward calls, the samples passed through it
    and the backward passes through its output; otherwise transparent.

    The wrapped model's return value comes back unchanged (a tensor, an object with ``.sample``
    as diffusers models return, or a tuple), and attributes it does not define itself are read
    from the wrapped model (``config``, ``dtype``, ...). Every forward call adds 1 to
    ``forward_calls`` and the batch size ``x_t.shape[0]`` to ``forward_samples``. When the output
    requires grad, a tensor hook on it adds the batch size to ``backward_samples`` each time a
    gradient flows back through it: once per ``backward()`` or ``autograd.grad`` that reaches it,
    and once more for each further differentiation that passes through it again (double backward
    through the model); every firing counts. A backward that reaches the output counts its whole
    batch, whichever rows its gradient is non-zero on.
    """

    def __init__(self, model: NoiseModel) -> None:
        self.model = model
        self.reset()

    def reset(self) -> None:
        """Set every count to zero."""
        self.forward_calls = 0
        self.forward_samples = 0
        self.backward_samples = 0

    @property
    def passes(self) -> int:
        """Sample-passes so far: ``forward_samples + backward_samples``."""
        return self.forward_samples + self.backward_samples

    def __call__(self, x_t, t, *args, **kwargs):
        out = self.model(x_t, t, *args, **kwargs)
        batch = int(x_t.shape[0]) if isinstance(x_t, Tensor) and x_t.dim() > 0 else 1
        self.forward_calls += 1
        self.forward_samples += batch
        tensor = getattr(out, "sample", out)
        if isinstance(tensor, tuple) and tensor:
            tensor = tensor[0]
        if isinstance(tensor, Tensor) and tensor.requires_grad:
            tensor.register_hook(self._counter(batch))
        return out

    def _counter(self, batch: int) -> Callable[[Tensor], None]:
        def count(grad: Tensor) -> None:  # returns None: the gradient passes on unchanged
            self.backward_samples += batch

        return count

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found normally; ``model`` itself is looked up in the
        # instance dict so that a half-built object (copy, unpickling) cannot recurse.
        model = self.__dict__.get("model")
        if model is None:
            raise AttributeError(name)
        return getattr(model, name)

    def __repr__(self) -> str:
        return (
            f"CountingModel({self.model!r}, forward_calls={self.forward_calls}, "
            f"forward_samples={self.forward_samples}, backward_samples={self.backward_samples})"
        )


@dataclass(frozen=True)
class Cost:
    """Measured cost of a sampler run: wall-clock ``seconds`` and sample-``passes`` through the
    model (:attr:`CountingModel.passes`)."""

    seconds: float
    passes: int


def _synchronize() -> None:
    """Wait for queued CUDA work, so that a wall-clock time includes it (a no-op without CUDA)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def measure(fn: Callable[[], T], counter: CountingModel) -> tuple[T, Cost]:
    """Run ``fn()`` once; return its result and its :class:`Cost`: the ``time.perf_counter``
    wall time of the call and the sample-passes ``counter`` recorded during it (``counter`` is
    reset first, so ``fn`` must call the model through ``counter``). Where CUDA is in use, queued
    GPU work is waited for before and after, so that the time is the work's, not its launch's."""
    counter.reset()
    _synchronize()
    start = time.perf_counter()
    result = fn()
    _synchronize()
    seconds = time.perf_counter() - start
    return result, Cost(seconds=seconds, passes=counter.passes)
