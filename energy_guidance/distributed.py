"""The process group: training on several processes launched by ``torchrun``.

Started by ``torchrun --nproc-per-node N`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
the rendezvous address), :func:`setup` joins the processes in one group: NCCL when the device is a
GPU (each process on ``cuda:LOCAL_RANK``), gloo on CPU. Without torchrun it does nothing, and every
helper here answers for one process (rank 0 of 1) without communicating, so a single-process run
is bit for bit what it was before this module existed.

What the group is used for (:mod:`energy_guidance.training` does it all inside
:func:`~energy_guidance.training.gradient_step` and :func:`~energy_guidance.training.train`):

* each process draws its own batches (its generator seeded with :func:`rank_seed`) of
  :func:`local_batch_size` examples, and after each backward pass the gradients of the optimizer's
  parameters are averaged over the processes (:func:`average_gradients`), so every process takes
  the same step, that of the global batch;
* the modules start equal: :func:`broadcast_module` copies rank 0's parameters and buffers;
* rank 0 alone writes checkpoints, shows progress bars and writes files (:func:`is_main`); the
  losses it logs are averaged over the processes (:func:`average`), at log time only.

Why not ``DistributedDataParallel``: DDP averages only what flows through its wrapper's forward
and prefixes the state-dict keys with ``module.``, while the critics call several submodules under
three optimizers inside one ``update()`` and the checkpoints store the modules' own keys (and DDP's
comm hooks only run inside its reducer). So :func:`average_gradients` does DDP's arithmetic on
the optimizer's gradients after the backward pass (one flattened bucket per dtype, divided by the
world size, one ``all_reduce``), losing only DDP's overlap of communication with the backward
pass, which for the project's MLPs costs far less than the step itself.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_owned = False  # whether setup() created the group (and shutdown() should destroy it)


def launched() -> bool:
    """Whether this process was started by torchrun (its environment variables are set)."""
    return all(name in os.environ for name in _TORCHRUN_VARIABLES)


def initialized() -> bool:
    """Whether a default process group exists (made by :func:`setup` or by the caller)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the group; 0 without one."""
    return dist.get_rank() if initialized() else 0


def world_size() -> int:
    """The number of processes in the group; 1 without one."""
    return dist.get_world_size() if initialized() else 1


def local_rank() -> int:
    """This process's rank on its machine (torchrun's ``LOCAL_RANK``); 0 without torchrun."""
    return int(os.environ.get("LOCAL_RANK", 0)) if initialized() else 0


def is_main() -> bool:
    """Whether this is rank 0, the process that writes files and shows progress."""
    return rank() == 0


def active() -> bool:
    """Whether there are other processes to communicate with (a group of two or more)."""
    return world_size() > 1


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """This process's device for ``device``: ``"auto"`` is CUDA when available, else CPU; a CUDA
    device without an index is ``cuda:LOCAL_RANK`` under torchrun and ``cuda`` otherwise."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and launched():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def setup(device: str | torch.device = "cpu", timeout: timedelta = timedelta(hours=1)) -> torch.device:
    """Join torchrun's process group, if this process was started by torchrun; this process's device.

    The backend is NCCL for a CUDA device (the process then uses ``cuda:LOCAL_RANK``) and gloo
    otherwise. ``timeout`` bounds how long a collective (a barrier included) waits for the other
    processes, e.g. while rank 0 alone builds a data set. Without torchrun, or when a group already
    exists, nothing is initialised and the device is only resolved (:func:`resolve_device`).
    """
    global _owned
    device = resolve_device(device)
    if not launched() or initialized():
        return device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    _owned = True
    return device


def shutdown() -> None:
    """Leave the process group that :func:`setup` made (a group made by the caller is left alone)."""
    global _owned
    if _owned and initialized():
        dist.destroy_process_group()
    _owned = False


@contextmanager
def session(
    device: str | torch.device = "cpu", timeout: timedelta = timedelta(hours=1)
) -> Iterator[torch.device]:
    """``with session(device) as device:`` :func:`setup` on entry, :func:`shutdown` on exit."""
    device = setup(device, timeout)
    try:
        yield device
    finally:
        shutdown()


def _communication_device() -> torch.device:
    """Where the backend's tensors must live: the current GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every process gets here; nothing without other processes."""
    if active():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first, the others once it has finished (e.g. rank 0 builds and caches
    a data set, the others then load the cache). Without other processes: just the block. If
    rank 0 fails inside the block, torchrun stops the waiting ranks (or the group's timeout)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into ``module`` on every process, in place."""
    if not active():
        return
    where = _communication_device()
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            moved = tensor.to(where)  # itself when already there (gloo and CPU, NCCL and its GPU)
            dist.broadcast(moved, src)
            if moved is not tensor:
                tensor.copy_(moved)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (any picklable object) on every process."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src, device=_communication_device())
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order, on every process (``[obj]`` without other processes)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def average(values: dict[str, float]) -> dict[str, float]:
    """The mean over the processes of each value (every process must pass the same keys)."""
    if not active() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_communication_device())
    dist.all_reduce(t)
    t /= world_size()
    mean = dict(zip(keys, t.tolist(), strict=True))
    return {k: mean[k] for k in values}


def average_gradients(parameters: Iterable[Tensor]) -> None:
    """Replace each parameter's gradient by its mean over the processes (DDP's averaging).

    One flattened bucket per (device, dtype) is divided by the world size and summed with one
    ``all_reduce``. A parameter without a gradient on some process counts as a zero gradient
    there, as in DDP with ``find_unused_parameters``; one without a gradient on every process
    keeps none (so the optimizer still skips it). Nothing without other processes.
    """
    if not active():
        return
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for p in parameters:
        if p.grad is not None and p.grad.is_sparse:
            raise NotImplementedError("sparse gradients are not averaged across processes")
        groups.setdefault((p.device, p.dtype), []).append(p)
    where, n = _communication_device(), world_size()
    for group in groups.values():
        missing = [p.grad is None for p in group]
        pieces = [torch.zeros_like(p) if p.grad is None else p.grad for p in group]
        flags = torch.tensor(
            [0.0 if m else 1.0 for m in missing], dtype=group[0].dtype, device=group[0].device
        )
        bucket = torch.cat([*(g.reshape(-1) for g in pieces), flags]).to(where)
        bucket.div_(n)
        dist.all_reduce(bucket)
        bucket = bucket.to(group[0].device)
        chunks = bucket.split([p.numel() for p in group] + [len(group)])
        present = chunks[-1].tolist() if any(missing) else None  # > 0: some process had a gradient
        for i, (p, chunk) in enumerate(zip(group, chunks[:-1], strict=False)):
            if p.grad is not None:
                p.grad.copy_(chunk.view_as(p))
            elif present is not None and present[i] > 0:  # present: some grad is missing
                p.grad = chunk.view_as(p).clone()


def rank_seed(seed: int) -> int:
    """The seed of this process's batch generator: ``seed`` itself on rank 0 (so one process draws
    what it always drew), on rank r > 0 a 64-bit seed mixed from (seed, r) by numpy's
    ``SeedSequence``. Not ``seed + r``: that would collide with the ``seed + 1`` of a recipe's
    next phase, and torch's CPU generator only uses a seed's low 32 bits, which the mix spreads."""
    r = rank()
    if r == 0:
        return seed
    return int(np.random.SeedSequence(seed, spawn_key=(r,)).generate_state(1, np.uint64)[0])


def derived_seed(state: Tensor, r: int) -> int:
    """A seed for rank ``r`` from a generator state (a resumed run that lost rank ``r``'s state)."""
    digest = hashlib.sha256(state.cpu().numpy().tobytes() + r.to_bytes(8, "little")).digest()
    return int.from_bytes(digest[:8], "little")


def local_batch_size(global_batch: int) -> int:
    """This process's share of a global batch: ``global_batch`` / :func:`world_size`; an error
    naming both when it does not divide (the averaged gradient is then that of the global batch)."""
    n = world_size()
    if global_batch % n:
        raise ValueError(
            f"the global batch size {global_batch} is not divisible by the {n} processes; "
            f"choose a multiple of {n}"
        )
    return global_batch // n
