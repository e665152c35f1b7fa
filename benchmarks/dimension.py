"""A dimension sweep: guided samplers against importance resampling at equal cost (issue 17, item 4).

    python -m benchmarks.dimension                # d ∈ {2, 8, 32, 128}, 3 β per energy, SMC K ∈ {8, 32, 128}
    python -m benchmarks.dimension --quick        # d ∈ {2, 32}, one β per energy, SMC K = 8 (minutes)
    python -m benchmarks.dimension --out DIR --seed N --dims 2 8 --models exact --energies linear

Data: a diagonal Gaussian mixture in d dimensions, 4 components with weights 0.4/0.3/0.2/0.1, means
2·N(0, I) and per-dimension variances U(0.1, 0.5), drawn from ``--seed``. Two noise models per d:
the EXACT one (:meth:`~energy_guidance.testing.GaussianMixture.noise_model`) and a TRAINED
ε-prediction MLP (3 hidden layers of max(256, 2d) SiLU units over [x_t, a sinusoidal embedding of
t]; from d = :data:`SKIP_FROM_DIM` on, added to the exact ε of N(0, σ_d²·I) with σ_d the data's
RMS s.d. per coordinate: a skip without which the MLP's high-noise ε error, amplified by σ_t/α_t
in x̂0, wrecks d = 128 (docs/benchmarks.md; below 64 the plain MLP is sound, and its results
stay reproducible); ``energy_guidance.training.fit``: 3,000 Adam steps, batches of 512 fresh
mixture samples; its weights are cached in ``<out>/models`` so that reruns skip the training).

Energies (lower is better), with their β from mild to sharp:

    linear      E = wᵀx, w a random unit vector                               β ∈ {1, 3, 10}
    quadratic   E = ½·k·‖x - c‖², k = 1, c one unit from the lightest mean      β ∈ {0.5, 2, 8}
    distance    E = ‖x - c‖ (smoothed: √(‖x - c‖² + 10⁻⁶)), the same c         β ∈ {1, 3, 10}
    plateau     E = sigmoid((uᵀx - b)/0.1), u a random unit vector, b the 20 % quantile of uᵀx
                under the data: a steep step, like a classifier or 1 - success probability
                                                                                β ∈ {2, 5, 10}

Ground truth: the tilted target of the TRUE mixture, p ∝ q·exp(-β·E). Linear: the tilted mixture
(:meth:`GaussianMixture.tilted`). Quadratic: each component stays Gaussian
(:meth:`GaussianMixture.quadratic_tilted`:
per dimension precision 1/v + βk, mean (μ + βk·v·c)/(1 + βk·v), and the component reweighted by its
normaliser Π (1 + βk·v)^-½·exp(-βk·(μ - c)²/(2(1 + βk·v)))). Both give log Z = log E_q[exp(-β·E)]
in closed form. Distance and plateau: self-normalised importance sampling with proposals that are
the target up to a 1-D grid, so that it works in any d. Distance (:func:`distance_reference`):
exp(-β·‖x - c‖) is a Gaussian scale mixture of exp(-t·‖x - c‖²) over t (Lévy weights), so each
tilted component is a 1-D mixture of quadratic tilts; the proposal is that mixture on 48 values
of log t per component. Plateau (:func:`plateau_reference`): the tilt acts on z = uᵀx alone; the
proposal draws z from a 4096-bin version of each component's tilted 1-D density and x | z
exactly. Kish's ESS is reported; a reference with ESS below ``--min-ref-ess`` is marked
unreliable: its rows are marked † and kept out of the issue-17 bar.

Methods (every model call goes through a counter):

    unguided      energy_guidance.sample, DPM-Solver++ (2M), 25 steps
    default       AnalyticEnergyGuidance(scheduler, model, energy, beta): the library's default
    auto          energy_guidance.tilted_sample: the default guidance or resampling, chosen by the
                  ESS of exp(-β·E) over its 256 pilot samples (the row records which, ``chose``)
    single        the default with one Gaussian between modes (ImportanceTilt(energy, beta,
                  max_components=1)): the default before its mixture prior (docs/math.md (9)),
                  with the default's own sampler draws (a paired comparison)
    pairs8        the default with 8 antithetic pairs of draws per sample and step
                  (ImportanceTilt(energy, beta, num_pairs=8), the default's M before
                  2026-12-07), with the default's own sampler draws (a paired comparison)
    paper         AnalyticEnergyGuidance(scheduler, model, estimator=ClosedForm(energy, beta))
    dps           energy_guidance.baselines.dps_guidance (E_t = β·E(x̂0))
    quadrature    AnalyticEnergyGuidance(..., estimator=GaussianQuadrature(energy, beta)); skipped
                  where it refuses the dimension (3**d Gauss-Hermite nodes > 4096, i.e. d ≥ 8)
    smc_K<K>      energy_guidance.smc_sample with the default guidance as twist (``--smc-twist``
                  paper or dps for another), temper=3, DDPM with "trailing" spacing, 50 steps
                  (smc.py's docstring); min(batch, smc_particles/K) populations of K particles,
                  one output per population
    target        draws of the reference itself: the noise floor of SW2 at this sample size

Cost: wall time and model sample-passes (one per sample per forward call, one per backward pass
through the model's output), relative to unguided sampling per output sample. Each method's
budget buys the resampling baseline a pool (``equal_cost_pool``: the larger of the pools its
seconds and its passes buy), from which importance resampling by exp(-β·E) draws as many outputs
as the method made; its SW2, energy gap and ESS stand beside the method's. The pool is the first
P draws of one shared unguided pool per (d, model) (drawn once, at most ``--max-pool``): the
estimator of ``importance_resampling`` on a pool of P, without sampling the model again for every
method; a pool cut at ``--max-pool`` is flagged (``rs_capped``).

Metrics per (d, model, energy, β, method): SW2 to the reference
(:func:`~energy_guidance.testing.sliced_wasserstein`, 256 fixed directions, a weighted
reference where it is one), the energy gap closed (E_unguided - E_method)/(E_unguided - E_target)
of mean energies (E_unguided of the same model), max |x| (largest coordinate), the finite
fraction, for SMC the mean log Ẑ minus log Z (closed form for linear and quadratic, the reference's
estimate otherwise; for the trained model log Ẑ estimates the MODEL's Z, so the error includes the
model's), and for the default whether it passes issue 17's bar: all samples finite, max |x| ≤ 1.5×
the reference's max |x|, SW2 ≤ unguided's, gap closed ≥ 0.5.

Outputs in ``--out`` (default outputs/dimension): results.json (every row, the references, the
configuration, timings, the git state), results.md (the tables, also printed) and dimension.png
(SW2 against d per energy, one line per method, the method's equal-cost resampling dashed).
A method that fails is recorded with its error string; a NonFiniteError counts as non-finite
(finite fraction 0), not as a crash.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import subprocess
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler
from torch import Tensor, nn

from benchmarks.models import EpsMLP
from energy_guidance import (
    AnalyticEnergyGuidance,
    ClosedForm,
    GaussianQuadrature,
    ImportanceTilt,
    NonFiniteError,
    sample,
    smc_sample,
    tilted_sample,
)
from energy_guidance.baselines import (
    Cost,
    CountingModel,
    dps_guidance,
    effective_sample_size,
    equal_cost_pool,
    measure,
)
from energy_guidance.checkpoints import atomic_write, cached_module
from energy_guidance.testing import GaussianMixture, sliced_wasserstein
from energy_guidance.training import fit

ENERGIES = ("linear", "quadratic", "distance", "plateau")
BETAS = {
    "linear": (1.0, 3.0, 10.0),
    "quadratic": (0.5, 2.0, 8.0),
    "distance": (1.0, 3.0, 10.0),
    "plateau": (2.0, 5.0, 10.0),
}
MODELS = ("exact", "trained")
SINGLE_PASS = ("default", "auto", "single", "pairs8", "paper", "dps", "quadrature")  # auto: tilted_sample
PAIRED = ("single", "pairs8")  # the default's variants, run with the default's sampler draws
WEIGHTS = (0.4, 0.3, 0.2, 0.1)
QUADRATIC_K = 1.0
PLATEAU_WIDTH = 0.1  # the sigmoid's scale: steep against the components' spread (s.d. 0.3-0.7)
PLATEAU_QUANTILE = 0.2  # the share of the data on the low-energy side of the step
DISTANCE_EPS2 = 1e-6
PROJECTIONS = 256
C = TypeVar("C")  # a benchmark's configuration dataclass (config_from_args)
DIRECTIONS_SEED = 1234  # seeds SW2's PROJECTIONS random directions, the same in every measurement
RANGE_FACTOR = 1.5  # the bar: max |x| within 1.5× the reference's


@dataclass
class Config:
    dims: tuple[int, ...] = (2, 8, 32, 128)
    models: tuple[str, ...] = MODELS
    energies: tuple[str, ...] = ENERGIES
    methods: tuple[str, ...] = SINGLE_PASS
    beta_index: tuple[int, ...] = (0, 1, 2)  # which of each energy's three β
    batch: int = 256  # output samples per method
    steps: int = 25  # DPM-Solver++ steps (unguided, single-pass guidance, the resampling pool)
    smc_steps: int = 50  # DDPM steps for SMC
    smc_k: tuple[int, ...] = (8, 32, 128)
    smc_particles: int = 2048  # SMC populations = min(batch, smc_particles // K)
    smc_temper: float = 3.0
    smc_twist: str = "default"  # the twist and proposal of SMC: "default", "paper" or "dps"
    ref_size: int = 20000  # reference samples (or SNIS proposals)
    min_ref_ess: float = 1000.0  # a SNIS reference with a smaller Kish ESS is unreliable
    model_steps: int = 3000  # Adam steps of the trained MLP
    model_lr: float = 2e-3
    model_batch: int = 512
    max_pool: int = 65536  # the shared unguided pool of the resampling baseline, per (d, model)
    seed: int = 0
    threads: int = 1
    quick: bool = False
    out: str = "outputs/dimension"


SKIP_FROM_DIM = 64  # the trained ε-MLP is a residual on a Gaussian's exact ε from here on
QUICK = dict(dims=(2, 32), beta_index=(1,), smc_k=(8,), ref_size=10000, max_pool=32768)


# --- data, energies, models ------------------------------------------------------------------


def _generator(seed: int, *keys) -> torch.Generator:
    """A generator seeded from ``seed`` and a stable hash of ``keys`` (same run, same draws)."""
    text = "/".join(str(k) for k in keys)
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(text.encode()))


def make_mixture(d: int, seed: int) -> GaussianMixture:
    """4 diagonal components: weights 0.4/0.3/0.2/0.1, means 2·N(0, I), variances U(0.1, 0.5)."""
    g = _generator(seed, "mixture", d)
    means = 2 * torch.randn(4, d, generator=g, dtype=torch.float64)
    variances = 0.1 + 0.4 * torch.rand(4, d, generator=g, dtype=torch.float64)
    return GaussianMixture(torch.tensor(WEIGHTS, dtype=torch.float64), means, variances)


class LinearEnergy:
    kind = "linear"

    def __init__(self, w: Tensor) -> None:
        self.w = w.double()

    def __call__(self, x: Tensor) -> Tensor:
        return x @ self.w.to(x)


class QuadraticEnergy:
    kind = "quadratic"

    def __init__(self, c: Tensor, k: float) -> None:
        self.c, self.k = c.double(), float(k)

    def __call__(self, x: Tensor) -> Tensor:
        return 0.5 * self.k * ((x - self.c.to(x)) ** 2).sum(-1)


class DistanceEnergy:
    kind = "distance"

    def __init__(self, c: Tensor) -> None:
        self.c = c.double()

    def __call__(self, x: Tensor) -> Tensor:
        return (((x - self.c.to(x)) ** 2).sum(-1) + DISTANCE_EPS2).sqrt()


class PlateauEnergy:
    kind = "plateau"

    def __init__(self, u: Tensor, b: float, width: float) -> None:
        self.u, self.b, self.width = u.double(), float(b), float(width)

    def __call__(self, x: Tensor) -> Tensor:
        return torch.sigmoid((x @ self.u.to(x) - self.b) / self.width)


def make_energies(mix: GaussianMixture, seed: int) -> dict[str, Callable]:
    d = mix.dim
    g = _generator(seed, "energies", d)
    unit = lambda v: v / v.norm()  # noqa: E731
    w = unit(torch.randn(d, generator=g, dtype=torch.float64))
    light = int(torch.argmin(mix.weights))
    c = mix.means[light] + unit(torch.randn(d, generator=g, dtype=torch.float64))
    u = unit(torch.randn(d, generator=g, dtype=torch.float64))
    z = mix.sample(200_000, generator=g).double() @ u
    b = float(torch.quantile(z[:100_000], PLATEAU_QUANTILE))  # torch.quantile caps its input size
    return {
        "linear": LinearEnergy(w),
        "quadratic": QuadraticEnergy(c, QUADRATIC_K),
        "distance": DistanceEnergy(c),
        "plateau": PlateauEnergy(u, b, PLATEAU_WIDTH),
    }


def trained_model(mix: GaussianMixture, cfg: Config, log, skip: bool | None = None) -> tuple[EpsMLP, dict]:
    """The ε-MLP for ``mix``, trained with ``fit`` (cached in ``<out>/models``); from d =
    :data:`SKIP_FROM_DIM` on (or as ``skip`` says, when given) a residual on the ε of
    N(0, σ_d²·I), σ_d the data's RMS per-coordinate s.d. (:class:`EpsMLP`'s ``sigma_data``)."""
    d = mix.dim
    hidden = max(256, 2 * d)
    ddpm = DDPMScheduler()
    torch.manual_seed(cfg.seed)
    settings = {"d": d, "hidden": hidden, "batch": cfg.model_batch, "steps": cfg.model_steps}
    settings |= {"lr": cfg.model_lr, "seed": cfg.seed}
    sigma_data, kind = None, "eps_mlp"
    if (d >= SKIP_FROM_DIM) if skip is None else skip:
        sigma_data, kind = float(mix.covariance().diagonal().mean().sqrt()), "eps_mlp_skip"
        settings["skip_sigma_data"] = sigma_data
    net = EpsMLP(d, hidden, sigma_data, None if sigma_data is None else ddpm.alphas_cumprod)
    stem = f"{kind}_d{d}_h{hidden}_b{cfg.model_batch}_steps{cfg.model_steps}_seed{cfg.seed}"
    path = Path(cfg.out) / "models" / f"{stem}.safetensors"
    last = None

    def build() -> EpsMLP:
        nonlocal last
        g = _generator(cfg.seed, "training", d)
        batch = cfg.model_batch

        def loss() -> Tensor:
            x0 = mix.sample(batch, generator=g)
            t = torch.randint(0, ddpm.config.num_train_timesteps, (batch,), generator=g)
            noise = torch.randn(batch, d, generator=g)
            return (net(ddpm.add_noise(x0, noise, t), t) - noise).pow(2).mean()

        history = fit(net, loss, steps=cfg.model_steps, lr=cfg.model_lr, progress=False)
        last = history["loss"][-5:] if isinstance(history, dict) and "loss" in history else None
        return net

    _, loaded, train_s = cached_module(path, build, lambda: net, settings)
    if loaded:
        log(f"  trained model: loaded {path}")
    else:
        log(f"  trained model: {cfg.model_steps} Adam steps in {train_s:.1f} s, saved {path}")
    info = {
        "hidden": hidden,
        "steps": cfg.model_steps,
        "path": str(path),
        "cached": loaded,
        "sigma_data": sigma_data,
    }
    return net.requires_grad_(False).eval(), {**info, "train_s": train_s, "last_losses": last}


# --- ground truth -----------------------------------------------------------------------------


def linear_tilt(mix: GaussianMixture, w: Tensor, beta: float) -> tuple[GaussianMixture, float]:
    """The exact target of E = wᵀx and log Z = log E_q[exp(-β·wᵀx)]."""
    w = w.double()
    log_mgf = -beta * mix.means @ w + 0.5 * beta**2 * mix.variances @ (w**2)
    return mix.tilted(w, beta), float(torch.logsumexp(torch.log(mix.weights) + log_mgf, dim=0))


@dataclass
class Reference:
    """The tilted target as a (weighted) point set, and what the metrics need of it."""

    kind: str  # "closed form" or "snis"
    points: Tensor  # (N, d) float64
    weights: Tensor | None  # (N,) normalised, or None for exact draws
    log_z: float
    log_z_se: float
    ess: float
    mean_energy: float
    max_abs: float
    reliable: bool
    seconds: float = 0.0

    def draws(self, n: int, generator: torch.Generator) -> Tensor:
        """n draws of the target (resampled from a weighted set)."""
        if self.weights is None:
            index = torch.randint(0, len(self.points), (n,), generator=generator)
        else:
            index = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return self.points[index]

    def summary(self) -> dict:
        return {
            "kind": self.kind,
            "n": len(self.points),
            "log_z": self.log_z,
            "log_z_se": self.log_z_se,
            "ess": self.ess,
            "mean_energy": self.mean_energy,
            "max_abs": self.max_abs,
            "reliable": self.reliable,
            "seconds": self.seconds,
        }


def _log_diag_normal(x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """log N(x; mean, diag(var)) for x (N, d) and one mean/var (d,), float64."""
    return -0.5 * (((x - mean) ** 2 / var) + torch.log(2 * math.pi * var)).sum(1)


def snis(
    mix: GaussianMixture,
    energy: Callable[[Tensor], Tensor],
    beta: float,
    x: Tensor,
    log_r: Tensor,
    generator: torch.Generator,
    *,
    min_ess: float,
    started: float,
) -> Reference:
    """Self-normalised importance sampling of p ∝ q·exp(-β·E) from proposal draws ``x`` with
    log-density ``log_r``: the weighted set, log Z = log mean w with its delta-method standard error,
    Kish's ESS, and ``reliable`` = ESS ≥ ``min_ess``."""
    x = x.double()
    e = energy(x).double()
    log_w = mix.log_prob(x) - beta * e - log_r
    n = len(x)
    log_z = float(torch.logsumexp(log_w, 0) - math.log(n))
    w = torch.softmax(log_w, 0)
    ess = float(effective_sample_size(log_w))
    log_z_se = float(torch.exp(log_w - log_z).std() / math.sqrt(n))  # s.e. of Ẑ/Z
    resampled = x[torch.multinomial(w, n, replacement=True, generator=generator)]
    return Reference(
        kind="snis",
        points=x,
        weights=w,
        log_z=log_z,
        log_z_se=log_z_se,
        ess=ess,
        mean_energy=float(w @ e),
        max_abs=float(resampled.abs().max()),
        reliable=ess >= min_ess,
        seconds=time.perf_counter() - started,
    )


def _allocate(weights: Tensor, n: int) -> Tensor:
    """Deterministic counts n·w (rounded down, the rest to the largest) summing to n."""
    counts = torch.floor(weights * n).long()
    counts[torch.argmax(weights)] += n - int(counts.sum())
    return counts


def distance_reference(
    mix: GaussianMixture,
    energy: DistanceEnergy,
    beta: float,
    n: int,
    generator,
    *,
    min_ess: float,
    grid: int = 48,
) -> Reference:
    """SNIS reference for E = √(‖x - c‖² + ε²), with a proposal that is the target up to a grid.

    exp(-β·√(u + ε²)) is a Gaussian scale mixture in u = ‖x - c‖² (the Laplace transform of the
    Lévy density): exp(-β·√(u + ε²)) = ∫ λ(t)·exp(-t·(u + ε²)) dt, λ(t) = β/(2√π)·t^(-3/2)·exp(-β²/(4t)).
    For each t a component tilted by exp(-t‖x - c‖²) is the quadratic tilt with βk = 2t
    (:meth:`GaussianMixture.quadratic_tilted`: Gaussian, known normaliser), so the target is a
    continuous mixture over
    (component, t) with weights π_k·λ(t)·Z_k(t). The proposal puts ``grid`` values of log t on the
    region that carries the mass of each component (from a fine grid) and is that finite mixture of
    diagonal Gaussians; SNIS corrects the discretisation.
    """
    started = time.perf_counter()
    c = energy.c.double()
    s = torch.linspace(-30.0, 20.0, 4001, dtype=torch.float64)  # s = log t
    t = s.exp()

    def log_density(k: int, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log π_k·λ(t)·Z_k(t)·t (the weight per unit of log t), and the tilted means/variances."""
        mu, v = mix.means[k], mix.variances[k]
        a = 2 * t[:, None]
        av1 = 1 + a * v
        log_z = (-0.5 * torch.log(av1) - a * (mu - c) ** 2 / (2 * av1)).sum(1) - t * DISTANCE_EPS2
        log_lam = math.log(beta / (2 * math.sqrt(math.pi))) - 1.5 * torch.log(t) - beta**2 / (4 * t)
        return torch.log(mix.weights[k]) + log_lam + log_z + torch.log(t), (mu + a * v * c) / av1, v / av1

    means, variances, log_mass = [], [], []
    for k in range(len(mix.weights)):
        dens = log_density(k, t)[0]
        keep = s[dens > dens.max() - 40]
        sj = torch.linspace(float(keep.min()), float(keep.max()), grid, dtype=torch.float64)
        dj, mj, vj = log_density(k, sj.exp())
        step = float(sj[1] - sj[0]) if grid > 1 else 1.0
        log_mass.append(dj + math.log(step))
        means.append(mj)
        variances.append(vj)
    log_mass, means, variances = torch.cat(log_mass), torch.cat(means), torch.cat(variances)
    rho = torch.softmax(log_mass, 0)
    counts = _allocate(rho, n)
    draws = [
        means[j]
        + variances[j].sqrt() * torch.randn(int(m), mix.dim, generator=generator, dtype=torch.float64)
        for j, m in enumerate(counts)
        if m > 0
    ]
    x = torch.cat(draws)
    frac = counts.double() / n  # the balance heuristic with the counts drawn
    used = frac > 0
    log_r = torch.stack(
        [
            torch.log(f) + _log_diag_normal(x, m, v)
            for f, m, v in zip(frac[used], means[used], variances[used], strict=True)
        ],
        dim=1,
    ).logsumexp(1)
    return snis(mix, energy, beta, x, log_r, generator, min_ess=min_ess, started=started)


def plateau_reference(
    mix: GaussianMixture,
    energy: PlateauEnergy,
    beta: float,
    n: int,
    generator,
    *,
    min_ess: float,
    bins: int = 4096,
) -> Reference:
    """SNIS reference for E = sigmoid((uᵀx - b)/τ): the tilt acts on z = uᵀx alone.

    Per component z ~ N(uᵀμ, Σ u²v) and x | z is Gaussian, so the tilted component is the 1-D tilted
    density of z times the exact conditional. The proposal draws z from a piecewise-constant
    version of that density (``bins`` bins over ±10 s.d., midpoint rule), then x | z exactly (x' ~
    N(μ, V), x = x' + V·u·(z - uᵀx')/(uᵀVu)); its density is p̂_k(z)·N_k(x)/N(z; uᵀμ, uᵀVu).
    """
    started = time.perf_counter()
    u = energy.u.double()
    k_count = len(mix.weights)
    edges_all, log_p_all, log_mass = [], [], []
    for k in range(k_count):
        mz, sz = float(mix.means[k] @ u), float((mix.variances[k] @ u**2).sqrt())
        edges = torch.linspace(mz - 10 * sz, mz + 10 * sz, bins + 1, dtype=torch.float64)
        mid, width = 0.5 * (edges[1:] + edges[:-1]), float(edges[1] - edges[0])
        log_f = -0.5 * ((mid - mz) / sz) ** 2 - math.log(sz * math.sqrt(2 * math.pi))
        log_f = log_f - beta * torch.sigmoid((mid - energy.b) / energy.width)
        log_zk = torch.logsumexp(log_f, 0) + math.log(width)
        edges_all.append(edges)
        log_p_all.append(log_f - log_zk)  # the piecewise-constant density in each bin
        log_mass.append(torch.log(mix.weights[k]) + log_zk)
    rho = torch.softmax(torch.stack(log_mass), 0)
    counts = _allocate(rho, n)
    xs = []
    for k in range(k_count):
        m = int(counts[k])
        if m == 0:
            continue
        edges, probs = edges_all[k], log_p_all[k].exp()
        index = torch.multinomial(probs, m, replacement=True, generator=generator)
        z = edges[index] + (edges[1] - edges[0]) * torch.rand(m, generator=generator, dtype=torch.float64)
        mu, v = mix.means[k], mix.variances[k]
        x0 = mu + v.sqrt() * torch.randn(m, mix.dim, generator=generator, dtype=torch.float64)
        xs.append(x0 + (v * u) * ((z - x0 @ u) / (v @ u**2))[:, None])
    x = torch.cat(xs)
    frac = counts.double() / n
    z = x @ u
    parts = []
    for k in range(k_count):
        if counts[k] == 0:
            continue
        mu, v = mix.means[k], mix.variances[k]
        mz, sz2 = mu @ u, v @ u**2
        edges = edges_all[k]
        index = torch.bucketize(z, edges) - 1
        inside = (index >= 0) & (index < bins)
        log_p = torch.full_like(z, -math.inf)
        log_p[inside] = log_p_all[k][index[inside]]
        log_nz = -0.5 * (z - mz) ** 2 / sz2 - 0.5 * torch.log(2 * math.pi * sz2)
        parts.append(torch.log(frac[k]) + log_p + _log_diag_normal(x, mu, v) - log_nz)
    log_r = torch.stack(parts, 1).logsumexp(1)
    return snis(mix, energy, beta, x, log_r, generator, min_ess=min_ess, started=started)


def closed_reference(target: GaussianMixture, log_z: float, energy, n: int, generator) -> Reference:
    start = time.perf_counter()
    x = target.sample(n, generator=generator).double()
    return Reference(
        kind="closed form",
        points=x,
        weights=None,
        log_z=log_z,
        log_z_se=0.0,
        ess=float(n),
        mean_energy=float(energy(x).mean()),
        max_abs=float(x.abs().max()),
        reliable=True,
        seconds=time.perf_counter() - start,
    )


def build_reference(
    mix: GaussianMixture, energy, beta: float, n: int, generator, min_ess: float
) -> Reference:
    """Closed form for the linear and quadratic energies; SNIS for the distance
    (:func:`distance_reference`) and the plateau (:func:`plateau_reference`)."""
    if isinstance(energy, LinearEnergy):
        target, log_z = linear_tilt(mix, energy.w, beta)
        return closed_reference(target, log_z, energy, n, generator)
    if isinstance(energy, QuadraticEnergy):
        target, log_z = mix.quadratic_tilted(energy.c, energy.k, beta)
        return closed_reference(target, log_z, energy, n, generator)
    if isinstance(energy, DistanceEnergy):
        return distance_reference(mix, energy, beta, n, generator, min_ess=min_ess)
    if isinstance(energy, PlateauEnergy):
        return plateau_reference(mix, energy, beta, n, generator, min_ess=min_ess)
    raise TypeError(f"no reference for {type(energy).__name__}")


# --- running the methods ----------------------------------------------------------------------


def dpm_scheduler() -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler()


def smc_scheduler() -> DDPMScheduler:
    return DDPMScheduler(clip_sample=False, timestep_spacing="trailing")


def model_for(kind: str, mix: GaussianMixture, mlp: nn.Module | None, scheduler) -> Callable:
    """The noise model for ``scheduler``: the mixture's exact one, or the trained MLP (ε, DDPM time)."""
    return mix.noise_model(scheduler) if kind == "exact" else mlp


def make_guidance(method: str, scheduler, model, energy, beta: float) -> AnalyticEnergyGuidance:
    """The guidance of a single-pass method (also SMC's twist)."""
    if method == "default":
        return AnalyticEnergyGuidance(scheduler, model, energy, beta)
    if method == "single":
        single = ImportanceTilt(energy, beta, max_components=1)  # the default before (9)
        return AnalyticEnergyGuidance(scheduler, model, estimator=single)
    if method == "pairs8":
        return AnalyticEnergyGuidance(scheduler, model, estimator=ImportanceTilt(energy, beta, num_pairs=8))
    if method == "paper":
        return AnalyticEnergyGuidance(scheduler, model, estimator=ClosedForm(energy, beta))
    if method == "dps":
        return dps_guidance(scheduler, model, energy, beta)
    if method == "quadrature":
        return AnalyticEnergyGuidance(scheduler, model, estimator=GaussianQuadrature(energy, beta))
    raise ValueError(f"unknown method {method!r}")


def sw2(x: Tensor, ref: Reference) -> float:
    if len(x) < 2:
        return float("nan")
    directions = torch.Generator().manual_seed(DIRECTIONS_SEED)
    return sliced_wasserstein(x.double(), ref.points, PROJECTIONS, directions, y_weights=ref.weights)


def _short(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) < 400 else text[:397] + "..."


def run_method(method: str, ctx: dict, energy, beta: float, cfg: Config) -> dict:
    """One method's samples, cost and status (never raises for the method's own failures)."""
    d, kind = ctx["d"], ctx["model"]
    # the default's variants take its sampler draws, so that they differ by the estimator alone
    gen = _generator(
        cfg.seed, "sample", d, kind, energy.kind, beta, "default" if method in PAIRED else method
    )
    record: dict[str, Any] = {"status": "ok", "error": None, "warnings": [], "x": None, "cost": None}
    x = None
    if method.startswith("smc_K"):
        k = int(method[len("smc_K") :])
        scheduler = smc_scheduler()
        outputs = max(1, min(cfg.batch, cfg.smc_particles // k))
        record.update(K=k, outputs=outputs)
    else:
        scheduler = dpm_scheduler()
        outputs = cfg.batch
        record["outputs"] = outputs
    counter = CountingModel(model_for(kind, ctx["mix"], ctx["mlp"], scheduler))
    if method == "quadrature":
        try:
            GaussianQuadrature(energy, beta).nodes(d)
        except ValueError as err:
            record.update(status="skipped", error=f"refuses d = {d}: {err}")
            return record
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if method.startswith("smc_K"):
                guidance = make_guidance(cfg.smc_twist, scheduler, counter, energy, beta)
                result, cost = measure(
                    lambda: smc_sample(
                        scheduler,
                        guidance,
                        (outputs, d),
                        num_particles=record["K"],
                        num_inference_steps=cfg.smc_steps,
                        generator=gen,
                        temper=cfg.smc_temper,
                    ),
                    counter,
                )
                x = result.samples.detach()
                log_z = result.log_normalizer.double()
                record.update(
                    logz_hat=float(log_z.mean()),
                    logz_hat_sd=float(log_z.std()) if len(log_z) > 1 else 0.0,
                    smc_min_ess_frac=float(result.ess.double().min(0).values.mean() / record["K"]),
                )
            elif method == "auto":
                chosen, cost = measure(
                    lambda: tilted_sample(
                        scheduler,
                        counter,
                        energy,
                        beta,
                        (outputs, d),
                        num_inference_steps=cfg.steps,
                        generator=gen,
                    ),
                    counter,
                )
                x = chosen.samples.detach()
                record.update(chose=chosen.method, pilot_ess_frac=chosen.ess_fraction)
            else:
                guidance = make_guidance(method, scheduler, counter, energy, beta)
                (x, _), cost = measure(
                    lambda: guidance.sample(
                        (outputs, d),
                        num_inference_steps=cfg.steps,
                        generator=gen,
                        on_nonfinite="drop",
                        return_mask=True,
                    ),
                    counter,
                )
                x = x.detach()
            record["cost"] = cost
        except NonFiniteError as err:
            record.update(status="nonfinite", error=_short(err), cost=None)
        except Exception as err:  # recorded, not raised: one method's failure is a result
            record.update(status="error", error=_short(err), cost=None)
    seen = []
    for w in caught:
        text = f"{w.category.__name__}: {str(w.message)[:160]}"
        if text not in seen:
            seen.append(text)
    record["warnings"] = seen[:3]
    record["warning_count"] = len(caught)
    record["x"] = x
    return record


def score(x: Tensor | None, energy, ref: Reference, e_unguided: float | None) -> dict:
    """SW2, mean energy, gap closed, max |x| and the finite fraction of samples ``x``."""
    if x is None:
        return {
            "finite_frac": 0.0,
            "sw2": float("nan"),
            "mean_energy": float("nan"),
            "gap_closed": float("nan"),
            "max_abs": float("nan"),
        }
    finite = torch.isfinite(x).all(1)
    xf = x[finite].double()
    out = {"finite_frac": float(finite.double().mean())}
    if len(xf) == 0:
        return {
            **out,
            "sw2": float("nan"),
            "mean_energy": float("nan"),
            "gap_closed": float("nan"),
            "max_abs": float("nan"),
        }
    mean_e = float(energy(xf).mean())
    gap = float("nan")
    if e_unguided is not None and abs(e_unguided - ref.mean_energy) > 1e-12:
        gap = (e_unguided - mean_e) / (e_unguided - ref.mean_energy)
    return {
        **out,
        "sw2": sw2(xf, ref),
        "mean_energy": mean_e,
        "gap_closed": gap,
        "max_abs": float(xf.abs().max()),
    }


def resample_pool(
    pool_x: Tensor, pool_e: Tensor, beta: float, size: int, n: int, gen
) -> tuple[Tensor, float]:
    """n draws from the first ``size`` pool samples, resampled by softmax(-β·E): importance
    resampling's estimator on a pool of ``size``; non-finite pool samples get weight 0."""
    e = pool_e[:size]
    log_w = torch.where(torch.isfinite(e), -beta * e, torch.full_like(e, -math.inf))
    log_w = torch.log_softmax(log_w, 0)
    index = torch.multinomial(log_w.exp(), n, replacement=True, generator=gen)
    return pool_x[:size][index], float(effective_sample_size(log_w))


# --- the sweep --------------------------------------------------------------------------------


def git_state() -> dict:
    def git(*args) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": git("status", "--short").splitlines()}


def run_model(d: int, kind: str, cfg: Config, log) -> tuple[list[dict], list[dict], dict]:
    """All energies, β and methods for one (d, model): rows, references, timings."""
    began = time.perf_counter()
    mix = make_mixture(d, cfg.seed)
    energies = make_energies(mix, cfg.seed)
    mlp, model_info = None, {}
    if kind == "trained":
        mlp, model_info = trained_model(mix, cfg, log)
    ctx = {"d": d, "model": kind, "mix": mix, "mlp": mlp}
    # unguided: the baseline of cost and energy
    scheduler = dpm_scheduler()
    counter = CountingModel(model_for(kind, mix, mlp, scheduler))
    gen = _generator(cfg.seed, "sample", d, kind, "unguided")
    unguided, base_cost = measure(
        lambda: sample(scheduler, counter, (cfg.batch, d), num_inference_steps=cfg.steps, generator=gen),
        counter,
    )
    per_sample = Cost(seconds=base_cost.seconds / cfg.batch, passes=base_cost.passes / cfg.batch)
    settings = []
    for name in cfg.energies:
        for i in cfg.beta_index:
            settings.append((name, BETAS[name][i]))
    methods = list(cfg.methods) + [f"smc_K{k}" for k in cfg.smc_k]
    pending, references = [], []
    for name, beta in settings:
        energy = energies[name]
        ref = build_reference(
            mix, energy, beta, cfg.ref_size, _generator(cfg.seed, "reference", d, name, beta), cfg.min_ref_ess
        )
        references.append({"d": d, "energy": name, "beta": beta, **ref.summary()})
        flag = "" if ref.reliable else "  UNRELIABLE"
        log(
            f"  {name} β={beta:g}: reference {ref.kind}, ESS {ref.ess:.0f}/{len(ref.points)}, "
            f"log Z {ref.log_z:.3f} ± {ref.log_z_se:.3f}, {ref.seconds:.1f} s{flag}"
        )
        e_ung = float(energy(unguided[torch.isfinite(unguided).all(1)].double()).mean())
        base = {
            "d": d,
            "model": kind,
            "energy": name,
            "beta": beta,
            "ref_kind": ref.kind,
            "ref_reliable": ref.reliable,
            "ref_ess": ref.ess,
            "ref_max_abs": ref.max_abs,
            "target_energy": ref.mean_energy,
            "unguided_energy": e_ung,
        }
        target_x = ref.draws(cfg.batch, _generator(cfg.seed, "target draws", d, name, beta))
        row = {**base, "method": "target", "status": "ok", "outputs": cfg.batch}
        row.update(score(target_x.float(), energy, ref, e_ung))
        pending.append((row, None, energy, beta, ref))
        run_list = [
            (
                "unguided",
                {
                    "status": "ok",
                    "error": None,
                    "x": unguided,
                    "cost": base_cost,
                    "outputs": cfg.batch,
                    "warnings": [],
                    "warning_count": 0,
                },
            )
        ]
        for method in methods:
            run_list.append((method, run_method(method, ctx, energy, beta, cfg)))
        for method, record in run_list:
            x, cost = record.pop("x"), record.pop("cost", None)
            row = {**base, "method": method, **record}
            row.update(score(x, energy, ref, e_ung))
            if record["status"] == "nonfinite":
                row["finite_frac"] = 0.0
            elif row["finite_frac"] == 0.0 and record["status"] == "ok":
                row.update(status="nonfinite", error="every sample non-finite (dropped by the sampler)")
            if cost is not None:
                outputs = record["outputs"]
                row.update(
                    seconds=cost.seconds,
                    passes=int(cost.passes),
                    time_ratio=cost.seconds / outputs / per_sample.seconds,
                    pass_ratio=cost.passes / outputs / per_sample.passes,
                    rs_pool=int(equal_cost_pool(cost, per_sample, outputs)),
                )
            if method.startswith("smc_K") and "logz_hat" in row:
                row["logz_err"] = row["logz_hat"] - ref.log_z
            pending.append((row, x, energy, beta, ref))
            log(
                f"    {method:10s} {row['status']:9s} SW2 {row['sw2']:.3f} gap {row['gap_closed']:+.2f} "
                f"max|x| {row['max_abs']:.1f} finite {row['finite_frac']:.2f} "
                + (
                    f"{row['time_ratio']:.1f}x time {row['pass_ratio']:.1f}x passes"
                    if cost is not None
                    else ""
                )
                + (f"  [{row['error'][:100]}]" if row.get("error") else "")
            )
    # the resampling baseline: one shared unguided pool, the first P draws for a pool of P
    wanted = max([r["rs_pool"] for r, *_ in pending if "rs_pool" in r] + [cfg.batch])
    size = min(wanted, cfg.max_pool)
    pool_began = time.perf_counter()
    chunks = []
    pool_gen = _generator(cfg.seed, "pool", d, kind)
    with torch.no_grad():
        for start in range(0, size, 4096):
            n = min(4096, size - start)
            chunks.append(
                sample(
                    dpm_scheduler(),
                    model_for(kind, mix, mlp, scheduler),
                    (n, d),
                    num_inference_steps=cfg.steps,
                    generator=pool_gen,
                )
            )
    pool_x = torch.cat(chunks)
    pool_s = time.perf_counter() - pool_began
    log(f"  resampling pool: {size} unguided samples in {pool_s:.1f} s (largest equal-cost pool {wanted})")
    pool_energy = {}
    rows = []
    for row, _x, energy, beta, ref in pending:
        if "rs_pool" in row:
            key = (row["energy"], row["beta"])
            if key not in pool_energy:
                finite = torch.isfinite(pool_x).all(1)
                e = torch.full((size,), math.inf, dtype=torch.float64)
                e[finite] = energy(pool_x[finite].double())
                pool_energy[key] = e
            p = min(row["rs_pool"], size)
            gen = _generator(cfg.seed, "resample", d, kind, row["energy"], row["beta"], row["method"])
            xs, ess = resample_pool(pool_x, pool_energy[key], beta, p, row["outputs"], gen)
            s = score(xs, energy, ref, row["unguided_energy"])
            row.update(
                rs_pool_used=p,
                rs_capped=p < row["rs_pool"],
                rs_ess=ess,
                rs_sw2=s["sw2"],
                rs_gap=s["gap_closed"],
                rs_max_abs=s["max_abs"],
            )
        rows.append(row)
    unguided_sw2 = {(r["energy"], r["beta"]): r["sw2"] for r in rows if r["method"] == "unguided"}
    for row in rows:
        if row["method"] == "default":
            row["bar"] = issue_bar(row, unguided_sw2[(row["energy"], row["beta"])])
    timing = {
        "d": d,
        "model": kind,
        "seconds": time.perf_counter() - began,
        "pool_seconds": pool_s,
        "pool": size,
        "unguided_seconds": base_cost.seconds,
        **({"model_info": model_info} if model_info else {}),
    }
    return rows, references, timing


def issue_bar(row: dict, unguided_sw2: float) -> dict:
    """Issue 17's bar for the default: finite, max |x| ≤ 1.5× the reference's, SW2 ≤ unguided's,
    gap closed ≥ 0.5."""
    ok = row["status"] == "ok"
    checks = {
        "finite": ok and row["finite_frac"] == 1.0,
        "range": ok and row["max_abs"] <= RANGE_FACTOR * row["ref_max_abs"],
        "sw2": ok and row["sw2"] <= unguided_sw2,
        "gap": ok and row["gap_closed"] >= 0.5,
    }
    return {**checks, "pass": all(checks.values()), "counted": bool(row["ref_reliable"])}


def configure(argv=None) -> Config:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="d ∈ {2, 32}, one β per energy, SMC K = 8")
    p.add_argument("--out", default=None, help="output folder (default outputs/dimension)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--dims", type=int, nargs="+")
    p.add_argument("--models", nargs="+", choices=MODELS)
    p.add_argument("--energies", nargs="+", choices=ENERGIES)
    p.add_argument("--methods", nargs="*", choices=SINGLE_PASS, help="single-pass methods (SMC: --smc-k)")
    p.add_argument("--beta-index", type=int, nargs="+", choices=(0, 1, 2), help="which of each energy's 3 β")
    p.add_argument("--smc-k", type=int, nargs="*", help="particles per population (none: no SMC)")
    p.add_argument("--smc-twist", choices=("default", "paper", "dps"), help="SMC's twist (default: default)")
    for name in (
        "batch",
        "steps",
        "smc_steps",
        "smc_particles",
        "ref_size",
        "model_steps",
        "max_pool",
        "threads",
    ):
        p.add_argument("--" + name.replace("_", "-"), type=int)
    p.add_argument("--min-ref-ess", type=float)
    return config_from_args(Config, QUICK, vars(p.parse_args(argv)))


def config_from_args(config_type: type[C], quick: dict, args: dict) -> C:
    """A benchmark's ``config_type`` (a dataclass with a ``quick`` field) from its parsed command
    line ``args``: the defaults, then ``quick``'s values where ``--quick`` was given, then every
    flag given (lists as tuples)."""
    values = asdict(config_type())
    if args.pop("quick"):
        values.update(quick, quick=True)
    for key, value in args.items():
        if value is not None:
            values[key] = tuple(value) if isinstance(value, list) else value
    return config_type(**values)


def main(argv=None) -> dict:
    cfg = configure(argv)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(s, flush=True)  # noqa: E731
    start = time.perf_counter()
    rows, references, timings = [], [], []
    log(f"dimension sweep: d {list(cfg.dims)}, models {list(cfg.models)}, energies {list(cfg.energies)}")
    for d in cfg.dims:
        for kind in cfg.models:
            log(f"d = {d}, {kind} model")
            r, refs, timing = run_model(d, kind, cfg, log)
            rows += r
            references += [{**ref, "model": kind} for ref in refs] if kind == cfg.models[0] else []
            timings.append(timing)
            log(f"  ({timing['seconds']:.0f} s)")
    wall = time.perf_counter() - start
    meta = {
        "wall_s": wall,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "git": git_state(),
    }
    text = render(rows, references, cfg, meta)
    print(text)
    atomic_write(out / "results.md", (text + "\n").encode())
    result = {"config": asdict(cfg), "rows": rows, "references": references, "timings": timings, **meta}
    atomic_write(out / "results.json", json.dumps(result, indent=1, default=_json_default).encode())
    try:
        plot(rows, cfg, out / "dimension.png")
    except Exception as err:  # a missing matplotlib must not lose the tables
        log(f"no plot: {_short(err)}")
    result["text"] = text
    return result


def _json_default(value):
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, float):
        return float(value)
    return str(value)


# --- the report -------------------------------------------------------------------------------


def _f(value, fmt: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if abs(value) >= 1e4:  # a diverged sampler: the order of magnitude is what matters
        return format(value, ".1e")
    return format(value, fmt)


def _cell(row: dict | None) -> str:
    """SW2 of the method / of its equal-cost resampling, or what went wrong."""
    if row is None:
        return ""
    if row["status"] == "skipped":
        return "skip"
    if row["status"] in ("error", "nonfinite"):
        return "nonfinite" if row["status"] == "nonfinite" else "error"
    text = _f(row["sw2"])
    if row["finite_frac"] < 1:
        text += f" ({row['finite_frac']:.0%} finite)"
    if "rs_sw2" in row and row["method"] != "unguided":
        text += f" / {_f(row['rs_sw2'])}"
    return text


def _table_row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def render(rows: list[dict], references: list[dict], cfg: Config, meta: dict) -> str:
    methods = ["target", "unguided", *cfg.methods, *[f"smc_K{k}" for k in cfg.smc_k]]
    index = {(r["d"], r["model"], r["energy"], r["beta"], r["method"]): r for r in rows}
    settings = sorted(
        {(r["d"], r["model"], r["energy"], r["beta"]) for r in rows},
        key=lambda s: (s[1], ENERGIES.index(s[2]), s[3], s[0]),
    )
    lines = [
        f"# Dimension sweep ({meta['date']}, {meta['machine']}, git {meta['git']['commit']}"
        + (f" + {len(meta['git']['dirty'])} uncommitted paths" if meta["git"]["dirty"] else "")
        + f", {meta['wall_s']:.0f} s)",
        "",
        f"Batch {cfg.batch}; DPM-Solver++ {cfg.steps} steps; SMC: DDPM trailing {cfg.smc_steps} steps, "
        f"temper {cfg.smc_temper:g}, twist {cfg.smc_twist}, "
        f"min({cfg.batch}, {cfg.smc_particles}/K) populations.",
        "",
        "## SW2 to the true tilted target: method / importance resampling at the method's cost",
        "",
        "target = draws of the reference (the noise floor); † = SNIS reference with ESS below "
        f"{cfg.min_ref_ess:g} (unreliable); skip = the method refuses this d.",
        "",
        "| d | model | energy | β | " + " | ".join(methods) + " |",
        "|---" * (4 + len(methods)) + "|",
    ]
    for d, kind, name, beta in settings:
        ref_ok = index[(d, kind, name, beta, "target")]["ref_reliable"]
        cells = [_cell(index.get((d, kind, name, beta, m))) for m in methods]
        lines.append(
            f"| {d} | {kind} | {name}{'' if ref_ok else ' †'} | {beta:g} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "## Energy gap closed (1 = the target's mean energy), max |x| and cost",
        "",
        "Gap: (E_unguided - E_method)/(E_unguided - E_target); cost per output relative to unguided "
        "(time× / passes×); rs = the equal-cost resampling (pool, its ESS, its gap).",
        "",
        "| d | model | energy | β | method | status | gap | max abs | ref max abs | finite | time× | passes× "
        "| rs pool | rs ESS | rs gap | log Ẑ - log Z |",
        "|---" * 16 + "|",
    ]
    for d, kind, name, beta in settings:
        for m in methods[1:]:
            r = index.get((d, kind, name, beta, m))
            if r is None:
                continue
            pool = f"{r['rs_pool']}" + (" (cut)" if r.get("rs_capped") else "") if "rs_pool" in r else "–"
            cells = [d, kind, name, f"{beta:g}", m, r["status"], _f(r["gap_closed"], "+.2f")]
            cells += [_f(r["max_abs"], ".1f"), _f(r["ref_max_abs"], ".1f"), _f(r["finite_frac"], ".2f")]
            cells += [_f(r.get("time_ratio"), ".1f"), _f(r.get("pass_ratio"), ".1f"), pool]
            cells += [_f(r.get("rs_ess"), ".0f"), _f(r.get("rs_gap"), "+.2f"), _f(r.get("logz_err"), "+.2f")]
            lines.append(_table_row(cells))
    bars = [r for r in rows if r["method"] == "default" and "bar" in r]
    counted = [r for r in bars if r["bar"]["counted"]]
    passed = [r for r in counted if r["bar"]["pass"]]
    lines += [
        "",
        "## Issue 17's bar for the default",
        "",
        "All samples finite, max |x| ≤ 1.5× the reference's, SW2 ≤ unguided's, energy gap closed ≥ 0.5.",
        "",
        f"Passed on {len(passed)} of {len(counted)} settings with a reliable reference"
        + (
            f" ({len(bars) - len(counted)} left out: unreliable reference)"
            if len(bars) > len(counted)
            else ""
        )
        + ".",
        "",
        "| d | model | energy | β | finite | range | SW2 | gap | pass |",
        "|---" * 9 + "|",
    ]
    yes = lambda v: "yes" if v else "no"  # noqa: E731
    for r in bars:
        b = r["bar"]
        cells = [r["d"], r["model"], r["energy"] + ("" if b["counted"] else " †"), f"{r['beta']:g}"]
        cells += [yes(b[key]) for key in ("finite", "range", "sw2", "gap")] + [f"**{yes(b['pass'])}**"]
        lines.append(_table_row(cells))
    errors = [r for r in rows if r.get("error") and r["status"] != "skipped"]
    skipped = sorted({(r["method"], r["d"]) for r in rows if r["status"] == "skipped"})
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{m} at d = {d}" for m, d in skipped) + "."]
    if errors:
        lines += ["", "Errors (first of each kind):", ""]
        seen = set()
        for r in errors:
            key = (r["method"], r["error"][:60])
            if key in seen:
                continue
            seen.add(key)
            lines.append(
                f"- {r['method']} (d = {r['d']}, {r['model']}, {r['energy']} β = {r['beta']:g}): {r['error']}"
            )
    lines += [
        "",
        "## References",
        "",
        "| d | energy | β | kind | ESS | log Z | ± | E_target | max abs | reliable |",
        "|---" * 10 + "|",
    ]
    for ref in references:
        cells = [ref["d"], ref["energy"], f"{ref['beta']:g}", ref["kind"], f"{ref['ess']:.0f}/{ref['n']}"]
        cells += [f"{ref['log_z']:.3f}", f"{ref['log_z_se']:.3f}", f"{ref['mean_energy']:.3f}"]
        cells += [f"{ref['max_abs']:.1f}", yes(ref["reliable"])]
        lines.append(_table_row(cells))
    return "\n".join(lines)


def plot(rows: list[dict], cfg: Config, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = ["unguided", *cfg.methods, *[f"smc_K{k}" for k in cfg.smc_k]]
    panels = [(kind, i) for kind in cfg.models for i in cfg.beta_index]
    fig, axes = plt.subplots(
        len(panels), len(cfg.energies), figsize=(4 * len(cfg.energies), 3.2 * len(panels)), squeeze=False
    )
    colours = plt.get_cmap("tab10")
    for p, (kind, i) in enumerate(panels):
        for e, name in enumerate(cfg.energies):
            ax = axes[p][e]
            beta = BETAS[name][i]
            panel = [r for r in rows if r["model"] == kind and r["energy"] == name and r["beta"] == beta]
            base = [r["sw2"] for r in panel if r["method"] == "unguided" and math.isfinite(r["sw2"])]
            top = 20 * max(base) if base else math.inf  # diverged samplers sit on the top edge (▲)
            for j, method in enumerate(["target", *methods]):
                pts = sorted(
                    (r["d"], r["sw2"], r.get("rs_sw2"))
                    for r in rows
                    if r["model"] == kind
                    and r["energy"] == name
                    and r["beta"] == beta
                    and r["method"] == method
                )
                pts = [(q[0], min(q[1], top), q[2]) for q in pts if math.isfinite(q[1])]
                if not pts:
                    continue
                off = [q for q in pts if q[1] >= top]
                colour = "grey" if method == "target" else "black" if method == "unguided" else colours(j)
                style = ":" if method == "target" else "-"
                ax.plot(
                    [q[0] for q in pts],
                    [q[1] for q in pts],
                    style,
                    marker="o",
                    ms=3,
                    color=colour,
                    label=method,
                )
                if off:
                    ax.plot([q[0] for q in off], [q[1] for q in off], "^", ms=7, color=colour)
                rs = [(q[0], min(q[2], top)) for q in pts if q[2] is not None and math.isfinite(q[2])]
                if rs and method not in ("target", "unguided"):
                    ax.plot(
                        [q[0] for q in rs],
                        [q[1] for q in rs],
                        "--",
                        marker="x",
                        ms=3,
                        color=colour,
                        alpha=0.7,
                    )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{name}, β = {beta:g}, {kind} model", fontsize=9)
            ax.set_xlabel("d")
            if e == 0:
                ax.set_ylabel("SW2 to the target")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle(
        "SW2 against d: solid the method, dashed importance resampling at its cost "
        "(▲: off the chart, above 20× unguided's)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format="png")
    atomic_write(path, buffer.getvalue())
    plt.close(fig)


if __name__ == "__main__":
    main()
