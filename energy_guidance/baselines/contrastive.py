"""QGPO's contrastive energy prediction (CEP; Lu et al. 2023, arXiv 2304.12824).

CEP learns the same intermediate energy E_t(x_t) = -log E_{q(x0 | x_t)}[exp(-β·E(x0))] as the
amortized AEPO network, but from samples instead of a closed form: for a *support set* of M
samples x0^1..x0^M of the model (for one condition) sharing one noise level, with
x_t^i = α·x0^i + σ·z^i (independent z^i), the loss is the cross-entropy

    ℓ = -Σ_i softmax_i(-β·E(x0^i)) · log softmax_i(-E_Θ(x_t^i)),                    (CEP)

averaged over support sets. Its minimiser over functions satisfies, as M → ∞,
-E_Θ(x_t) = log E[exp(-β·E(x0)) | x_t] + c(t): the exact intermediate energy up to a constant
per noise level, which guidance does not see. Unlike the AEPO targets it involves no expansion
of E, but it needs M model samples per condition and its gradient is a self-normalised
importance estimate, noisy when exp(-β·E) is peaked within a support set.

The network is an :class:`~energy_guidance.amortized.IntermediateEnergyNet` (the same class as
the amortized AEPO network, so the two plug into guidance identically, via ``network=``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from ..amortized import IntermediateEnergyNet
from ..callables import Energy, NoiseModel, call_energy
from ..sampling import sample
from ..schedulers import SchedulerLike, add_noise, noise_level, training_timesteps
from ..training import History, fit


def contrastive_loss(predicted: Tensor, energies: Tensor, beta: float) -> Tensor:
    """Equation (CEP), averaged over support sets.

    predicted: E_Θ(x_t^i) (B, M);  energies: E(x0^i) (B, M);  returns a scalar.
    """
    if predicted.shape != energies.shape or predicted.dim() != 2:
        raise ValueError(
            "predicted and energies must both be (B, M); "
            f"got {tuple(predicted.shape)} and {tuple(energies.shape)}"
        )
    weights = torch.softmax(-beta * energies.to(predicted), dim=1)
    return -(weights * torch.log_softmax(-predicted, dim=1)).sum(1).mean()


@torch.no_grad()
def draw_support(
    scheduler: SchedulerLike,
    model: NoiseModel,
    event_shape: tuple[int, ...],
    num_support: int,
    *,
    cond: Tensor | None = None,
    num_groups: int | None = None,
    num_inference_steps: int = 50,
    batch_size: int = 4096,
    generator: torch.Generator | None = None,
) -> Tensor:
    """M = ``num_support`` model samples per condition: (N, M, *event_shape).

    With ``cond`` (N, ...) every row is sampled with its condition repeated M times; without it,
    ``num_groups`` rows of unconditional samples. Uses :func:`energy_guidance.sample` with
    ``scheduler`` (whose timesteps it resets).
    """
    if cond is not None:
        n = cond.shape[0]
    elif num_groups is not None:
        n = num_groups
    else:
        raise ValueError("give cond (conditional model) or num_groups (unconditional)")
    total = n * num_support
    flat_cond = None if cond is None else cond.repeat_interleave(num_support, dim=0)
    chunks = []
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        chunks.append(
            sample(
                scheduler,
                model,
                (stop - start, *event_shape),
                cond=None if flat_cond is None else flat_cond[start:stop],
                num_inference_steps=num_inference_steps,
                generator=generator,
            )
        )
    return torch.cat(chunks).reshape(n, num_support, *event_shape)


def train_contrastive_energy(
    network: IntermediateEnergyNet,
    scheduler: SchedulerLike,
    energy: Energy,
    support: Tensor,
    cond: Tensor | None = None,
    *,
    regroup: bool | None = None,
    steps: int = 2000,
    batch_size: int = 16,
    lr: float = 1e-3,
    generator: torch.Generator | None = None,
    progress: bool = True,
    log: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    name: str = "contrastive energy",
    checkpoint_every: int = 1000,
) -> History:
    """Train ``network`` with the CEP loss (β = ``network.beta``); returns the loss history.

    ``support`` (N, M, ...) holds M model samples for each of N conditions ``cond`` (N, ...)
    (see :func:`draw_support`). Each step draws ``batch_size`` support sets and one training
    timestep per set, so a step sees ``batch_size·M`` noised samples. With ``regroup`` (the
    default when unconditional) the N·M samples are one pool and every step forms new sets of M
    from it. Otherwise as :func:`~energy_guidance.amortized.train_intermediate_energy`: Adam with
    a cosine learning-rate decay (:func:`energy_guidance.training.fit`), ``log(step, means)``,
    resumable checkpoints named ``name`` in ``checkpoint_dir``.
    """
    if support.dim() < 3:
        raise ValueError(
            f"support must be (N, M, ...) with M samples per condition; got {tuple(support.shape)}"
        )
    if regroup is None:
        regroup = cond is None
    if regroup and cond is not None:
        raise ValueError("regroup mixes samples of different conditions; use it only without cond")
    n, m = support.shape[:2]
    event = support.shape[2:]
    beta = network.beta
    valid = training_timesteps(scheduler)
    flat = support.reshape(n * m, *event)
    flat_cond = None if cond is None else cond.repeat_interleave(m, dim=0)
    with torch.no_grad():
        parts = []
        for i in range(0, n * m, 4096):
            c = None if flat_cond is None else flat_cond[i : i + 4096]
            parts.append(call_energy(energy, flat[i : i + 4096], c))
        energies = torch.cat(parts).reshape(n, m)
        # Unit-scale outputs for the MLP: E_Θ lives on the scale of β·E (the loss ignores shifts).
        network.target_mean.fill_(beta * float(energies.mean()))
        network.target_scale.fill_(max(beta * float(energies.std()), 1e-6))

    def loss() -> Tensor:
        if regroup:
            idx = torch.randint(0, n * m, (batch_size, m), generator=generator).to(support.device)
            x0, e, c = flat[idx], energies.reshape(-1)[idx], None
        else:
            rows = torch.randint(0, n, (batch_size,), generator=generator).to(support.device)
            x0, e = support[rows], energies[rows]
            c = None if cond is None else cond[rows].repeat_interleave(m, dim=0)
        t = valid[torch.randint(0, len(valid), (batch_size,), generator=generator)]
        levels = noise_level(scheduler, t)
        alpha, sigma = (v.to(support).repeat_interleave(m) for v in levels)
        x0 = x0.reshape(batch_size * m, *event)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        x_t = add_noise(x0, noise, alpha, sigma)
        predicted = network(x_t, alpha, sigma, c).reshape(batch_size, m)
        return contrastive_loss(predicted, e, beta)

    return fit(
        network,
        loss,
        steps=steps,
        lr=lr,
        generator=generator,
        progress=progress,
        name=name,
        log=log,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
    )
