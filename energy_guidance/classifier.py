"""The intermediate energy learned as a noise-conditional classifier: exact targets, no model calls.

Let p̃(x0) = q(x0)·exp(-β·E(x0))/Z be the target and q_t, p̃_t the marginals of x_t = α_t·x0 + σ_t·ε
under q and p̃. Since p̃_t(x_t) = q_t(x_t)·E_q[exp(-β·E(x0)) | x_t]/Z,

    E_t(x_t) = -log E_q[exp(-β·E(x0)) | x_t] = -log(p̃_t(x_t)/q_t(x_t)) - log Z:          (6)

the intermediate energy is, up to a constant, minus the log density ratio of the noised target
and the noised model distribution. A classifier that tells noised tilted samples from noised
model samples, with balanced classes and logit -E_Θ(x_t), minimises the logistic loss

    ℓ = E_{x0 ~ p̃}[softplus(E_Θ(x_t))] + E_{x0 ~ q}[softplus(-E_Θ(x_t))],                  (C)

whose minimiser over functions is E_Θ = E_t + log Z exactly (the Bayes-optimal logit is the log
density ratio). Training needs the energy of each data point once, and neither the model nor a
closed form: no expansion of E (the closed-form targets are exact only for linear or quadratic
E), and no support sets of M model samples per condition (CEP).

Estimating (C). With w(x0) = exp(-β·E(x0))/Z the density ratio p̃/q (on data: N times the
softmax of -β·E over the N points, mean 1), each step draws x0 from the mixture m = ½(q + p̃)
(half of the batch uniformly from the data, half resampled by w; each pair shares its noise
level) and labels it softly with the probability that the mixture drew it from p̃,
π = p̃/(q + p̃) = w/(1 + w):

    ℓ_m = E_{x0 ~ m}[π·softplus(E_Θ(x_t)) + (1 - π)·softplus(-E_Θ(x_t))] = ½·ℓ.             (C')

Every sample then informs both terms with a weight in [0, 1], where two separate batches (one
from q, one from p̃) would each inform one: on the Gaussian test the soft labels halved the
guidance error of the two-batch estimate, and on QGPO's 2-D toys at equal training time the
two-batch version lost to CEP on 8 of 17 settings, this one on 1 of 18 (docs/benchmarks.md).
What remains is the spread of w: where few data points carry the target (high β; in offline RL
with weights normalised over all states, docs/benchmarks.md) the classifier sees them again and
again and extrapolates elsewhere.

Conditions. With ``cond`` the weights are normalised over the whole data set (the tilt of the
joint distribution of (cond, x0)); the ratio (6) is then taken at each condition, with one global
constant log Z. A ``baseline(cond)`` (B,) subtracted from E before weighting (e.g. -V(s) for
E = -Q(s, a)) spreads the weights evenly over conditions and changes E_Θ by a function of the
condition only (-β·baseline), which guidance (a gradient in x_t) does not see.

The network is an :class:`~energy_guidance.amortized.IntermediateEnergyNet`, used by guidance and
:func:`~energy_guidance.smc_sample` like any other estimator. Related: discriminator guidance
(Kim et al. 2022, arXiv 2211.17091) trains such a time-dependent classifier between data and
model samples to correct a model's score; here the two classes are the target and the model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn.functional import softplus

from .amortized import IntermediateEnergyNet
from .callables import Energy, call_energy
from .schedulers import SchedulerLike, add_noise, noise_level, training_timesteps
from .training import History, fit


def classifier_loss(predicted: Tensor, label: Tensor) -> Tensor:
    """Equation (C'): E_Θ(x_t) (B,) and the soft labels π (B,) of the samples' x0 (the logit is
    -E_Θ: label 1 is the target p̃, 0 the model q)."""
    return (label * softplus(predicted) + (1 - label) * softplus(-predicted)).mean()


@torch.no_grad()
def tilt_log_weights(
    energy: Energy,
    data: Tensor,
    beta: float,
    cond: Tensor | None = None,
    baseline: Callable[[Tensor], Tensor] | None = None,
    chunk: int = 4096,
) -> Tensor:
    """Normalised log-weights (N,) float64 of the data under the tilt: log softmax(-β·(E - baseline))."""
    parts = []
    for i in range(0, data.shape[0], chunk):
        c = None if cond is None else cond[i : i + chunk]
        e = call_energy(energy, data[i : i + chunk], c).double()
        if baseline is not None:
            if c is None:
                raise ValueError("baseline(cond) is a function of the condition: give cond, or no baseline")
            e = e - baseline(c).double().reshape(e.shape)
        parts.append(e)
    return torch.log_softmax(-float(beta) * torch.cat(parts), dim=0)


class ClassifierBatch(NamedTuple):
    """Noised mixture samples x_t (B, ...) at levels α, σ (B,), their conditions and labels π (B,)."""

    x_t: Tensor
    alpha: Tensor
    sigma: Tensor
    cond: Tensor | None
    label: Tensor


def classifier_batches(
    scheduler: SchedulerLike,
    energy: Energy,
    data: Tensor,
    cond: Tensor | None = None,
    *,
    beta: float,
    baseline: Callable[[Tensor], Tensor] | None = None,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> tuple[Callable[[], ClassifierBatch], float]:
    """(a function drawing :class:`ClassifierBatch` es of (C'), the network's output scale).

    ``data`` (N, ...) are samples of the model's distribution q (for a behaviour model, its
    training data), with conditions ``cond`` (N, ...); ``baseline(cond)`` see the module docstring.
    Each call draws ``batch_size`` // 2 data points uniformly and as many by their tilt weights,
    one training timestep per pair and noise per sample, from ``generator``. The scale is the
    spread of the log-weights (at least 1): the log ratio's range at t = 0, for
    ``IntermediateEnergyNet.target_scale``.
    """
    if data.shape[0] < 2:
        raise ValueError(f"need at least 2 data points, got {data.shape[0]}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (half from the data, half tilted), got {batch_size}")
    if cond is not None and cond.shape[0] != data.shape[0]:
        raise ValueError(f"cond has {cond.shape[0]} rows for {data.shape[0]} data points")
    log_w = tilt_log_weights(energy, data, beta, cond, baseline)
    weights = log_w.exp()
    n, half = data.shape[0], batch_size // 2
    ratio = weights * n  # w = p̃/q at each data point
    label = (ratio / (1 + ratio)).to(data)  # π of (C')
    valid = training_timesteps(scheduler)
    gen_device = generator.device if generator is not None else torch.device("cpu")

    def draw() -> ClassifierBatch:
        base = torch.randint(0, n, (half,), generator=generator, device=gen_device)
        tilted = torch.multinomial(weights.to(gen_device), half, replacement=True, generator=generator)
        idx = torch.cat([base, tilted]).to(data.device)
        pick = torch.randint(0, len(valid), (half,), generator=generator, device=gen_device)
        t = valid[pick.to(valid.device)].repeat(2)
        x0 = data[idx]
        alpha, sigma = (v.to(x0) for v in noise_level(scheduler, t))
        noise = torch.randn(x0.shape, generator=generator, device=gen_device).to(x0)
        c = None if cond is None else cond[idx]
        return ClassifierBatch(add_noise(x0, noise, alpha, sigma), alpha, sigma, c, label[idx])

    return draw, max(float(log_w.std()), 1.0)


def classifier_batch_loss(network: IntermediateEnergyNet, batch: ClassifierBatch) -> Tensor:
    """(C') of ``network`` on one batch."""
    return classifier_loss(network(batch.x_t, batch.alpha, batch.sigma, batch.cond), batch.label)


def train_classifier_energy(
    network: IntermediateEnergyNet,
    scheduler: SchedulerLike,
    energy: Energy,
    data: Tensor,
    cond: Tensor | None = None,
    *,
    baseline: Callable[[Tensor], Tensor] | None = None,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-3,
    generator: torch.Generator | None = None,
    checkpoint_dir: str | Path | None = None,
    name: str = "classifier energy",
    checkpoint_every: int = 1000,
    progress: bool = True,
    log: Callable[[int, dict[str, float]], None] | None = None,
) -> History:
    """Train ``network`` on (C') at β = ``network.beta``; returns the loss history.

    The batches are :func:`classifier_batches`'; the rest is :func:`energy_guidance.training.fit`
    (Adam, cosine decay, resumable checkpoints named ``name`` in ``checkpoint_dir``,
    ``log(step, means)``).
    """
    draw, scale = classifier_batches(
        scheduler,
        energy,
        data,
        cond,
        beta=float(network.beta),
        baseline=baseline,
        batch_size=batch_size,
        generator=generator,
    )
    with torch.no_grad():  # unit-scale outputs; no shift (the loss is not invariant to one)
        network.target_mean.fill_(0.0)
        network.target_scale.fill_(scale)
    return fit(
        network,
        lambda: classifier_batch_loss(network, draw()),
        steps=steps,
        lr=lr,
        generator=generator,
        checkpoint_dir=checkpoint_dir,
        name=name,
        checkpoint_every=checkpoint_every,
        progress=progress,
        log=log,
    )
