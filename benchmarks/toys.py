"""Guidance estimators and SMC against exact targets on QGPO's six 2-D toy data sets.

    python benchmarks/toys.py                      # 6 data sets × β ∈ {3, 10, 20}, both parts
    python benchmarks/toys.py --quick              # smoke run: one data set, one β, tiny sizes
    python benchmarks/toys.py --datasets moons --betas 10 --parts exact --train-seconds 10
    python benchmarks/toys.py --parts exact --methods exact --twists dps tw2_dv exact \
        --smc-protocol populations --smc-k 64 --num-samples 500   # the SMC goal, one output per population

Part 1, **exact noise model** (``--parts exact``): the model is the *exact* noise model of an
empirical set of ``num_data`` points (:class:`~energy_guidance.testing.EmpiricalNoiseModel`,
a memorising diffusion model): no learned confound, and an exact target. The tilted target
q·exp(-β·E)/Z of an empirical q is the same points with weights softmax_i(-β·E(x_i)); metrics
compare against that weighted set itself. Samplers (all DDPM, ``num_inference_steps`` steps):

    unguided     the model
    exact        estimator = EmpiricalIntermediateEnergy (the exact E_t): the sampler's own floor
    dps          baselines.dps_guidance: E_t = β·E(x̂0), no variance term (DPS-style)
    cf1_dv       the paper's first-order closed form (1), variance "data_var" (marginal table)
    cf1_jac      (1) with variance "jacobian" (local second-order Tweedie; exact for this model)
    cf2_dv       the second-order closed form (3) (order=2), "data_var"
    cf2_jac      (3) with "jacobian"
    tw1_dv       (1) with the Tweedie gradient (4) (gradient="tweedie"), "data_var"
    tw2_dv       (3) with the Tweedie gradient, "data_var"
    tw1_jac, tw2_jac   (1), (3) with the Tweedie gradient and "jacobian"
    gh3_dv, gh3_jac, gh5_jac, gh25_jac   the quadrature (7) of the Gaussian posterior
                 (GaussianQuadrature), 3, 5 or 25 Gauss-Hermite points per dimension (25: the
                 Gaussian integral itself, to plotting accuracy), "data_var" or "jacobian"
    net_cf1      IntermediateEnergyNet regressed on the paper's targets (order 1, data_var, x̄ = x0)
    net_cf2      ... on the second-order targets (order 2, data_var, x̄ = x0)
    net_cum1     ... on the first cumulant β·E(x̄) + β·gᵀ(x̂0 - x̄) (variance Constant(0.0))
    net_gh3      ... on the quadrature (7)'s E_t at x̂0(x_t) (data_var, 3 points per dimension)
    cep          the same network trained with QGPO's contrastive loss (baselines)
    classifier   the same network trained as a classifier of the noised target (data resampled by
                 softmax(-β·E)) against the noised data, soft labels on a mixture batch: exact
                 targets, no model calls (energy_guidance.classifier)
    smc_<twist>_K<K>   energy_guidance.smc_sample with that guidance as twist and proposal
                       (twists: dps, cf1_dv, cf2_dv, tw2_dv, net_cf2, classifier, exact; a suffix ``_t``
                       tempers it: ``smc_sample(temper=--temper)``, docs/math.md (5))

The learned estimators get **equal training wall time**, ``--train-seconds`` each, everything
they need counted: the variance table for the data_var targets, CEP's support pool. The number
of steps is calibrated from a timed pilot (``train_*(steps=0)`` for the set-up, then
``pilot_steps`` steps, on throw-away copies) so that set-up + steps fit the budget; the run then
uses the full cosine learning-rate schedule over those steps. The achieved steps and seconds are
reported.

SMC has two protocols (``--smc-protocol``):

    budget       (default) an **equal particle budget**: each (twist, K) uses ``smc_particles``
                 particles in B = ``smc_particles``/K populations (``resample=False``), scored on
                 the pooled weighted particles (each population's normalised weights / B): the
                 distribution a ``resample=True`` output is drawn from, with less noise than B
                 single draws, but at K = 64 only 12 populations, collapsed onto few lineages.
    populations  **one output per population**, the contract of ``smc_sample``: ``num_samples``
                 outputs, each the ``resample=True`` draw of its own population of K particles,
                 scored like any sampler's ``num_samples`` samples (same floors, same target).
                 It costs K particles per output; populations are independent, so they run in
                 calls of at most ``smc_chunk`` particles (one generator through the calls).

SMC steps DDPM with ``--smc-spacing`` (default "leading", as every other sampler; "trailing"
is what ``smc_sample``'s docstring recommends) on the same model and estimator.

Reported beside the distances: wall time, the mean and minimum (over steps) ESS/K, the number of
resampling events per population, the error of the mean log Ẑ against the exact
log Z = log mean_i exp(-β·E(x_i)), and the error of the mean label. The SMC goal is counted on
the protocol that ran.

Part 2, **a learned model** (``--parts learned``): a small ε-prediction MLP fitted to the same
data (``energy_guidance.training.fit``); its target is *its own* tilted distribution, a large
pool of its unguided samples weighted by softmax(-β·E) (the ESS of those weights is reported).
The training-free estimators and SMC with ``learned_twists`` run against it; divergence
(non-finite samples) is reported as ``div``.

Metrics: sliced Wasserstein-2 (SW2, 128 fixed directions, quantiles on a 4096-point grid) and
MMD² (sum of Gaussian kernels, bandwidths 0.2, 0.5, 1; unbiased in the samples, exact in the
weighted target). Floors: ``resampled`` is the mean ± s.d. over ``floor_repeats`` sets of
``num_samples`` i.i.d. target draws (the s.d. is the noise of any single score); ``two_draws``
the SW2 between two such independent sets. Outputs (written atomically) in ``out``: results.md,
results.json, toys_beta{β}.png and toys_learned_beta{β}.png (rows = data sets, columns = samplers).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
import tyro
from diffusers import DDPMScheduler
from torch import Tensor, nn

from energy_guidance import (
    AnalyticEnergyGuidance,
    GaussianQuadrature,
    IntermediateEnergyNet,
    sample,
    smc_sample,
    train_intermediate_energy,
)
from energy_guidance.baselines import dps_guidance, draw_support, train_contrastive_energy
from energy_guidance.checkpoints import atomic_write
from energy_guidance.classifier import train_classifier_energy
from energy_guidance.recipes.toys2d import DATASETS, DatasetName, toy_dataset
from energy_guidance.schedulers import add_noise, noise_level, training_timesteps
from energy_guidance.testing import (
    EmpiricalIntermediateEnergy,
    EmpiricalNoiseModel,
    sliced_wasserstein,
)
from energy_guidance.testing.metrics import weighted_quantiles
from energy_guidance.training import fit
from energy_guidance.variance import Constant, estimate_variance_table

Part = Literal["exact", "learned"]
TrainingFree = Literal[
    "dps",
    "cf1_dv",
    "cf1_jac",
    "cf2_dv",
    "cf2_jac",
    "tw1_dv",
    "tw2_dv",
    "tw1_jac",
    "tw2_jac",
    "gh3_dv",
    "gh3_jac",
    "gh5_jac",
    "gh25_jac",
]
Learned = Literal["net_cf1", "net_cf2", "net_cum1", "net_gh3", "cep", "classifier"]
Method = Literal["unguided", "exact", TrainingFree, Learned]  # nested Literals flatten
Twist = Literal[
    "dps",
    "cf1_dv",
    "cf2_dv",
    "tw2_dv",
    "net_cf2",
    "classifier",
    "exact",
    "dps_t",
    "tw2_dv_t",
    "gh3_jac",
    "gh3_jac_t",
]
LearnedTwist = Literal["dps", "cf1_dv", "cf2_dv", "tw2_dv", "dps_t", "tw2_dv_t", "gh3_jac", "gh3_jac_t"]
TEMPERED = "_t"  # a twist's suffix: smc_sample(..., temper=cfg.temper)
SMCProtocol = Literal["budget", "populations"]
METHODS: tuple[str, ...] = get_args(Method)
TRAINING_FREE: tuple[str, ...] = get_args(TrainingFree)
LEARNED: tuple[str, ...] = get_args(Learned)
TWISTS: tuple[str, ...] = get_args(Twist)
# How a sampler that produced non-finite values fails: the library's FloatingPointError, or (second
# order) a linear solve on a non-finite Hessian or covariance.
DIVERGENCE = (FloatingPointError, torch.linalg.LinAlgError)
MAX_STEPS = 100_000  # a bound on the calibrated training steps
LEARNED_MODEL_METHODS: tuple[str, ...] = ("unguided", *TRAINING_FREE)
# The regression targets of the amortized networks: (variance, order) of the closed form at x̄ = x0,
# or (variance, "gh3"): the quadrature (7) at x̂0(x_t) with 3 points per dimension.
TARGETS = {
    "net_cf1": ("data_var", 1),
    "net_cf2": ("data_var", 2),
    "net_cum1": (Constant(0.0), 1),
    "net_gh3": ("data_var", "gh3"),  # the quadrature (7) at x̂0(x_t)
}


@dataclass
class Config:
    """Guidance estimators and SMC against exact targets on QGPO's six 2-D toy data sets."""

    datasets: tuple[DatasetName, ...] = DATASETS  # which toy data sets
    betas: tuple[float, ...] = (3.0, 10.0, 20.0)  # inverse temperatures
    parts: tuple[Part, ...] = ("exact", "learned")  # exact noise model, then a learned MLP model
    methods: tuple[Method, ...] = METHODS  # part 1 samplers
    twists: tuple[Twist, ...] = TWISTS  # part 1 SMC twists (the guidance of that name)
    learned_methods: tuple[Literal["unguided", TrainingFree], ...] = LEARNED_MODEL_METHODS  # part 2
    learned_twists: tuple[LearnedTwist, ...] = ("dps", "cf2_dv", "dps_t")  # part 2 SMC
    floor: float = 1.0  # the second-order forms' smallest eigenvalue of I + βΣ̂H (closed_form.py)
    temper: float = 3.0  # the power p of the tempered twists (suffix _t), docs/math.md (5)
    # DDPM's timestep spacing for SMC (the other samplers keep "leading"); smc.py recommends
    # "trailing": "leading" ends with a stochastic step from t = 20 whose narrow kernel starves weights
    smc_spacing: Literal["leading", "trailing"] = "leading"
    smc_k: tuple[int, ...] = (4, 16, 64)  # particles per population
    # budget: smc_particles per run, scored on the pooled weighted particles; populations:
    # num_samples outputs, each the resampled draw of its own population of K particles
    smc_protocol: SMCProtocol = "budget"
    smc_particles: int = 768  # budget protocol: particles per SMC run (B = smc_particles / K)
    smc_chunk: int = 512  # populations protocol: particles per smc_sample call (larger: more sys time)
    num_data: int = 1000  # points of the empirical behaviour distribution (and the MLP's data)
    num_samples: int = 1000  # samples per sampler
    floor_repeats: int = 10  # i.i.d. target draws for the floors and their spread
    num_inference_steps: int = 50  # DDPM steps (every sampler, SMC included)
    train_seconds: float = 5.0  # wall-time budget of each learned estimator (set-up included)
    pilot_steps: int = 50  # timed steps that calibrate the number of steps to the budget
    batch_size: int = 256  # noised samples per training step (CEP: batch_size / num_support sets)
    num_support: int = 16  # CEP's M
    support_pool: int = 1024  # model samples drawn for CEP (inside its budget)
    hidden: int = 128  # width of the intermediate-energy networks
    model_steps: int = 2000  # part 2: training steps of the ε-prediction MLP
    model_hidden: int = 128  # part 2: its width (3 hidden layers)
    target_pool: int = 10000  # part 2: unguided samples weighted into the learned model's target
    seed: int = 0
    threads: int = 1  # small tensors: 2 threads gain little, and oversubscribe a shared 2-core machine
    quick: bool = False  # smoke run: tiny sizes, 8gaussians, β = 10 (where not given)
    out: str = "outputs/toys"  # results.md, results.json, PNG grids


QUICK = dict(
    num_data=200,
    num_samples=200,
    floor_repeats=3,
    num_inference_steps=10,
    train_seconds=0.3,
    pilot_steps=20,
    support_pool=128,
    smc_k=(4, 16),
    smc_particles=64,
    model_steps=100,
    target_pool=1000,
)


# --- metrics -----------------------------------------------------------------------------------


BANDWIDTHS = (0.2, 0.5, 1.0)  # MMD²: a sum of Gaussian kernels
PROJECTIONS = 128  # SW2: fixed random directions
GRID = 4096  # SW2: quantile levels


def _kernel_times(a: Tensor, b: Tensor, v: Tensor, chunk: int = 512) -> Tensor:
    """k(a, b) @ v (len(a),) in row chunks, k the sum of Gaussian kernels of :data:`BANDWIDTHS`."""
    parts = []
    for i in range(0, len(a), chunk):
        d2 = torch.cdist(a[i : i + chunk], b).pow(2)
        parts.append(sum(torch.exp(-d2 / (2 * h**2)) for h in BANDWIDTHS) @ v)
    return torch.cat(parts)


class Target:
    """A weighted point set (the tilted target) and the distances of samples to it.

    SW2 (:data:`PROJECTIONS` fixed directions, quantiles on :data:`GRID` levels) and MMD² (unbiased
    in the samples, exact in the target) are those of :func:`energy_guidance.testing.sliced_wasserstein`
    and :func:`~energy_guidance.testing.mmd` with ``y_weights`` (the same numbers), with the
    target's terms computed once and kernels in chunks (a learned model's target has 10⁴ points),
    and they also take weighted samples (SMC's particles): then the samples' MMD self term leaves
    out the diagonal and is renormalised by 1 - Σw², the unbiased term for uniform weights.
    """

    def __init__(self, points: Tensor, weights: Tensor) -> None:
        self.points = points.reshape(len(points), -1).double()
        self.weights = weights.double() / weights.sum()
        theta = torch.randn(
            self.points.shape[1],
            PROJECTIONS,
            generator=torch.Generator().manual_seed(1234),
            dtype=torch.float64,
        )
        self.theta = theta / theta.norm(dim=0, keepdim=True)
        self.levels = (torch.arange(GRID, dtype=torch.float64) + 0.5) / GRID
        self.quantiles = weighted_quantiles(self.points @ self.theta, self.weights, self.levels)
        self.self_term = float(self.weights @ _kernel_times(self.points, self.points, self.weights))

    def sw2(self, x: Tensor, weights: Tensor | None = None) -> float:
        qx = weighted_quantiles(x.reshape(len(x), -1).double() @ self.theta, weights, self.levels)
        return float(((qx - self.quantiles) ** 2).mean().sqrt())

    def mmd2(self, x: Tensor, weights: Tensor | None = None) -> float:
        x = x.reshape(len(x), -1).double()
        n = len(x)
        w = (
            torch.full((n,), 1.0 / n, dtype=torch.float64)
            if weights is None
            else weights.double() / weights.sum()
        )
        gram_w = _kernel_times(x, x, w)
        diagonal = len(BANDWIDTHS)  # k(x, x) on the diagonal
        self_x = (w @ gram_w - diagonal * (w**2).sum()) / (1 - (w**2).sum()).clamp_min(1e-12)
        cross = w @ _kernel_times(x, self.points, self.weights)
        return float(self_x + self.self_term - 2 * cross)


def draws_from(x: Tensor, weights: Tensor, n: int = 500) -> Tensor:
    """n draws from the weighted set (x, weights), for the pictures."""
    return x[torch.multinomial(weights, n, replacement=True, generator=torch.Generator().manual_seed(0))]


def kish_ess(weights: Tensor) -> float:
    w = weights.double() / weights.sum()
    return float(1 / (w**2).sum())


# --- the learned estimators at equal wall time -------------------------------------------------


def guidance_error(network, validation: dict) -> float:
    """Relative guidance error Σσ²‖∇E_Θ - ∇E_t‖² / Σσ²‖∇E_t‖² on noised target points."""
    x = validation["x_t"].clone().requires_grad_(True)
    value = network(x, validation["alpha"], validation["sigma"], None)
    (grad,) = torch.autograd.grad(value.sum(), x)
    s2 = validation["sigma"].double()[:, None] ** 2
    diff = (s2 * (grad.double() - validation["grad"]) ** 2).sum()
    return float(diff / (s2 * validation["grad"] ** 2).sum())


def make_validation(scheduler, target: Tensor, weights: Tensor, exact, n: int, gen: torch.Generator) -> dict:
    idx = torch.multinomial(weights.double(), n, replacement=True, generator=gen)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=gen)
    alpha, sigma = (c.float() for c in noise_level(scheduler, t))
    x_t = add_noise(target[idx], torch.randn(n, 2, generator=gen), alpha, sigma)
    x = x_t.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(exact(x, alpha, sigma).sum(), x)
    return {"x_t": x_t, "alpha": alpha, "sigma": sigma, "grad": grad.double()}


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def train_on_budget(
    make_net: Callable[[], nn.Module], train: Callable[[nn.Module, int, int], None], budget: float, pilot: int
) -> tuple[nn.Module, dict]:
    """Train ``make_net()`` with ``train(net, steps, seed)`` for as many steps as fit ``budget`` s.

    A pilot on throw-away networks times the set-up (steps=0) and ``pilot`` steps; the real run
    gets floor((budget - set-up)/seconds-per-step) steps (at least 1) and its full schedule.
    """
    (_, setup_s) = timed(lambda: train(make_net(), 0, 0))
    (_, pilot_s) = timed(lambda: train(make_net(), pilot, 0))
    # at least a fifth of the pilot is its steps: timing noise on a shared machine cannot make a
    # step look free (and the step count explode)
    per_step = max(pilot_s - setup_s, 0.2 * pilot_s) / pilot
    steps = min(max(int((budget - setup_s) / per_step), 1), MAX_STEPS)
    net = make_net()
    (_, train_s) = timed(lambda: train(net, steps, 1))
    return net.eval(), {"steps": steps, "train_s": train_s, "per_step_ms": 1e3 * per_step}


def train_learned(
    method: str, ctx: dict, beta: float, cfg: Config, validation: dict
) -> tuple[IntermediateEnergyNet, dict]:
    """One learned estimator at the equal wall-time budget; its training record."""
    scheduler, model, energy, data = ctx["scheduler"], ctx["model"], ctx["energy"], ctx["data"]

    def make_net() -> IntermediateEnergyNet:
        torch.manual_seed(cfg.seed)
        return IntermediateEnergyNet(2, hidden=cfg.hidden, beta=beta)

    extra_s = 0.0
    if method == "cep":
        support, extra_s = timed(
            lambda: draw_support(
                scheduler,
                model,
                (2,),
                cfg.num_support,
                num_groups=max(cfg.support_pool // cfg.num_support, 1),
                num_inference_steps=cfg.num_inference_steps,
                generator=torch.Generator().manual_seed(cfg.seed + 7),
            )
        )

        def train(net, steps, seed):
            train_contrastive_energy(
                net,
                scheduler,
                energy,
                support,
                steps=steps,
                batch_size=max(cfg.batch_size // cfg.num_support, 1),
                generator=torch.Generator().manual_seed(cfg.seed + seed),
                progress=False,
            )

    elif method == "classifier":

        def train(net, steps, seed):
            train_classifier_energy(
                net,
                scheduler,
                energy,
                data,
                steps=steps,
                batch_size=cfg.batch_size,
                generator=torch.Generator().manual_seed(cfg.seed + seed),
                progress=False,
            )

    else:
        variance, order = TARGETS[method]
        if variance == "data_var":
            extra_s = ctx["table_s"]  # the variance table is part of these targets' cost
        targets = GaussianQuadrature(energy, beta, variance, ctx["table"]) if order == "gh3" else None

        def train(net, steps, seed):
            train_intermediate_energy(
                net,
                scheduler,
                model,
                energy,
                data,
                variance=variance,
                variance_table=ctx["table"],
                order=1 if targets is not None else order,
                targets=targets,
                steps=steps,
                batch_size=cfg.batch_size,
                generator=torch.Generator().manual_seed(cfg.seed + seed),
                progress=False,
            )

    net, record = train_on_budget(make_net, train, cfg.train_seconds - extra_s, cfg.pilot_steps)
    record["train_s"] += extra_s
    record["setup_s"] = extra_s
    record["guidance_err"] = guidance_error(net, validation)
    return net, record


# --- sampling ----------------------------------------------------------------------------------


def draw(ctx: dict, guidance, n: int, cfg: Config) -> tuple[Tensor | None, float]:
    """n samples and seconds; None when the sampler diverged (non-finite values)."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    start = time.perf_counter()
    try:
        x = sample(
            ctx["scheduler"],
            ctx["model"] if guidance is None else guidance,
            (n, 2),
            num_inference_steps=cfg.num_inference_steps,
            generator=g,
        ).detach()
    except DIVERGENCE:  # non-finite values inside the step (x̂0, energy, its Hessian)
        x = None
    seconds = time.perf_counter() - start
    return (x if x is not None and bool(torch.isfinite(x).all()) else None), seconds


def training_free(name: str, ctx: dict, beta: float) -> AnalyticEnergyGuidance:
    scheduler, model, energy, table = ctx["scheduler"], ctx["model"], ctx["energy"], ctx["table"]
    if name == "dps":
        return dps_guidance(scheduler, model, energy, beta)
    variance = {"dv": "data_var", "jac": "jacobian"}[name.split("_")[1]]
    if name.startswith("gh"):  # gh<points>_<variance>: the quadrature (7)
        points = int(name.split("_")[0].removeprefix("gh"))
        estimator = GaussianQuadrature(energy, beta, variance, table, points=points)
        return AnalyticEnergyGuidance(scheduler, model, estimator=estimator)
    return AnalyticEnergyGuidance(
        scheduler,
        model,
        energy,
        beta,
        variance=variance,
        variance_table=table,
        order=int(name[2]),
        gradient="tweedie" if name.startswith("tw") else "autograd",
        floor=ctx["floor"],
    )


def label_of(ctx: dict, x: Tensor) -> Tensor:
    """The smooth label ℓ = -E of each point (float64)."""
    with torch.no_grad():
        return -ctx["energy"](x.double()).double()


def run_smc(
    ctx: dict, guidance, k: int, beta: float, cfg: Config, target: Target, log_z: float, temper: float = 0.0
) -> dict:
    """One SMC run with K particles per population, under ``cfg.smc_protocol`` (``temper``: p of
    the tempered twist, 0 for the guidance as it is).

    budget: B = smc_particles/K populations in one call (``resample=False``), scored on their
    pooled weighted particles. populations: B = num_samples populations in calls of at most
    smc_chunk particles (``resample=True``), scored on their B outputs like any sampler's samples.
    """
    populations = cfg.smc_protocol == "populations"
    b = cfg.num_samples if populations else max(cfg.smc_particles // k, 1)
    per_call = max(cfg.smc_chunk // k, 1) if populations else b
    g = torch.Generator().manual_seed(cfg.seed + 3)
    start = time.perf_counter()
    try:
        results = [
            smc_sample(
                guidance.scheduler,
                guidance,
                (min(per_call, b - i), 2),
                num_particles=k,
                num_inference_steps=cfg.num_inference_steps,
                generator=g,
                resample=populations,
                energy=ctx["energy"],
                beta=beta,
                temper=temper,
            )
            for i in range(0, b, per_call)
        ]
    except DIVERGENCE:  # non-finite weights or values inside a step
        results = []
    seconds = time.perf_counter() - start
    row = {"sample_s": seconds, "populations": b, "K": k}
    if not results or not all(bool(torch.isfinite(r.samples).all()) for r in results):
        return {**row, **score(ctx, None, target), "cloud": None}
    ess = torch.cat([r.ess for r in results], 1) / k  # (steps + 1, B)
    row |= {
        "ess_mean": float(ess.mean()),
        "ess_min": float(ess.min(dim=0).values.mean()),
        "ess_final": float(ess[-1].mean()),
        "resamplings": float(torch.cat([r.resampled for r in results], 1).sum(0).double().mean()),
        "logz_err": float(torch.cat([r.log_normalizer for r in results]).mean()) - log_z,
    }
    if populations:
        x = torch.cat([r.samples for r in results]).float()
        labels = label_of(ctx, x)  # one output per population: the label's spread is the sample's
    else:
        (result,) = results
        x = result.samples.reshape(b * k, 2).float()
        w_pop = result.log_weights.exp()  # (B, K), each row sums to 1
        labels = (w_pop * label_of(ctx, x).reshape(b, k)).sum(1)  # each population's estimate of E_p[ℓ]
    row |= {
        "label_err": abs(float(labels.mean()) - target.label),
        "label_se": float(labels.std() / math.sqrt(len(labels))) if len(labels) > 1 else math.nan,
    }
    if populations:
        return {**row, **score(ctx, x, target), "sample": x}
    w = (w_pop / b).reshape(-1)
    distances = {"sw2": target.sw2(x, w), "mmd2": target.mmd2(x, w)}
    return {**row, **distances, "diverged": False, "label": float(labels.mean()), "cloud": (x, w)}


def smc_guidance(guidance: AnalyticEnergyGuidance, cfg: Config) -> AnalyticEnergyGuidance:
    """The guidance SMC steps with: the same model and estimator on a DDPM scheduler with
    ``cfg.smc_spacing`` (the models here take any training timestep, so only the spacing changes)."""
    if cfg.smc_spacing == "leading":
        return guidance
    spacing = cfg.smc_spacing
    return guidance.replace(
        scheduler=DDPMScheduler(num_train_timesteps=1000, clip_sample=False, timestep_spacing=spacing)
    )


def untempered(twist: str, cfg: Config) -> tuple[str, float]:
    """(the guidance a twist is built from, its tempering power): ``dps_t`` -> ("dps", cfg.temper)."""
    if twist.endswith(TEMPERED):
        return twist.removesuffix(TEMPERED), cfg.temper
    return twist, 0.0


def score(ctx: dict, x: Tensor | None, target: Target) -> dict:
    """Distances to the target, mean label, and the fraction of samples that escaped (beyond twice
    the data's radius): a sampler that blew up without going non-finite."""
    if x is None:
        return {"sw2": math.inf, "mmd2": math.inf, "label": math.nan, "escaped": 1.0, "diverged": True}
    label = float(label_of(ctx, x).mean())
    radius = float(ctx["data"].norm(dim=1).max())
    escaped = float((x.norm(dim=1) > 2 * radius).double().mean())
    distances = {"sw2": target.sw2(x), "mmd2": target.mmd2(x)}
    return {**distances, "label": label, "escaped": escaped, "diverged": False}


def floors(target: Target, cfg: Config) -> tuple[dict, dict]:
    """The ``resampled`` and ``two_draws`` rows: i.i.d. target draws against the target and each other."""
    g = torch.Generator().manual_seed(cfg.seed + 2)
    draws = [
        target.points[
            torch.multinomial(target.weights, cfg.num_samples, replacement=True, generator=g)
        ].float()
        for _ in range(max(cfg.floor_repeats, 2))
    ]
    sw = torch.tensor([target.sw2(x) for x in draws])
    mm = torch.tensor([target.mmd2(x) for x in draws])
    pairs = torch.tensor(
        [
            sliced_wasserstein(draws[i], draws[i + 1], PROJECTIONS, torch.Generator().manual_seed(1234))
            for i in range(0, len(draws) - 1, 2)
        ]
    )
    resampled = {
        "sw2": float(sw.mean()),
        "sw2_sd": float(sw.std()),
        "mmd2": float(mm.mean()),
        "mmd2_sd": float(mm.std()),
        "label": getattr(target, "label", math.nan),
        "sample": draws[0],
    }
    return resampled, {"sw2": float(pairs.mean()), "mmd2": math.nan, "sample": draws[1]}


# --- part 1: the exact noise model -------------------------------------------------------------


def collect(found: dict, part: str, name: str, beta: float, rows: list, samples: dict) -> None:
    """Move each method's result into ``rows`` and its picture into ``samples``; a weighted
    particle cloud is pictured by draws from it."""
    for method, result in found.items():
        shown = result.pop("sample", None)
        cloud = result.pop("cloud", None)
        if cloud is not None:
            shown = draws_from(*cloud)
        samples[(beta, method)] = shown
        rows.append({"part": part, "dataset": name, "beta": beta, "method": method, **result})


def run_exact(name: str, cfg: Config, log) -> tuple[list[dict], dict]:
    """Rows for every β and sampler on the exact noise model of ``name``; samples for the plots."""
    ds = toy_dataset(name)
    gen = torch.Generator().manual_seed(cfg.seed)
    data, _ = ds.sample(cfg.num_data, gen)
    energies = ds.energy(data.double()).float()
    scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    model = EmpiricalNoiseModel(data, scheduler)
    table, table_s = timed(lambda: estimate_variance_table(scheduler, model, data, generator=gen))
    ctx = {
        "scheduler": scheduler,
        "model": model,
        "energy": ds.energy,
        "data": data,
        "table": table,
        "floor": cfg.floor,
    }
    ctx["table_s"] = table_s
    unguided = draw(ctx, None, cfg.num_samples, cfg) if "unguided" in cfg.methods else None
    rows, samples = [], {"data": data}
    for beta in cfg.betas:
        weights = torch.softmax(-beta * energies.double(), dim=0)
        log_z = float(torch.logsumexp(-beta * energies.double(), 0) - math.log(len(data)))
        exact = EmpiricalIntermediateEnergy(data, beta, energies=energies)
        validation = make_validation(scheduler, data, weights, exact, 512, gen)
        target = Target(data, weights)
        target.label = float(weights @ -energies.double())
        found: dict[str, dict] = {}
        resampled, two = floors(target, cfg)
        found["resampled"], found["two_draws"] = resampled, two
        guidances: dict[str, AnalyticEnergyGuidance] = {}
        if unguided is not None:
            x, seconds = unguided
            found["unguided"] = {**score(ctx, x, target), "sample_s": seconds, "sample": x}
        for method in cfg.methods:
            if method == "unguided":
                continue
            record: dict = {}
            if method == "exact":
                guidance = AnalyticEnergyGuidance(scheduler, model, estimator=exact)
            elif method in LEARNED:
                net, record = train_learned(method, ctx, beta, cfg, validation)
                guidance = AnalyticEnergyGuidance(scheduler, model, estimator=net)
            else:
                guidance = training_free(method, ctx, beta)
            guidances[method] = guidance
            x, seconds = draw(ctx, guidance, cfg.num_samples, cfg)
            found[method] = {**score(ctx, x, target), "sample_s": seconds, "sample": x, **record}
        for twist in cfg.twists:
            base, temper = untempered(twist, cfg)
            if base not in guidances:  # a twist whose sampler was not asked for
                if base == "exact":
                    guidances[base] = AnalyticEnergyGuidance(scheduler, model, estimator=exact)
                elif base in LEARNED:  # a network trained for the twist (at the methods' budget)
                    net, _ = train_learned(base, ctx, beta, cfg, validation)
                    guidances[base] = AnalyticEnergyGuidance(scheduler, model, estimator=net)
                else:
                    guidances[base] = training_free(base, ctx, beta)
            for k in cfg.smc_k:
                found[f"smc_{twist}_K{k}"] = run_smc(
                    ctx, smc_guidance(guidances[base], cfg), k, beta, cfg, target, log_z, temper
                )
        collect(found, "exact", name, beta, rows, samples)
        samples[(beta, "target")] = draws_from(data, weights)
        log(
            f"[exact] {name:>12} β={beta:<4g} | "
            + " ".join(f"{m}={r['sw2']:.3f}" for m, r in found.items() if not m.startswith("smc"))
        )
        log(
            f"[exact] {name:>12} β={beta:<4g} | SMC "
            + " ".join(
                f"{m[4:]}={r['sw2']:.3f}({r.get('ess_mean', 0):.2f}, {r['sample_s']:.0f}s)"
                for m, r in found.items()
                if m.startswith("smc")
            )
        )
    return rows, samples


# --- part 2: a learned model -------------------------------------------------------------------


class EpsMLP(nn.Module):
    """ε_θ(x_t, t): an MLP (SiLU) over [x_t, sinusoidal embedding of t]."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, time_dim: int = 32) -> None:
        super().__init__()
        half = time_dim // 2
        self.register_buffer("frequencies", torch.exp(-math.log(10000.0) * torch.arange(half) / half))
        layers: list[nn.Module] = []
        width = dim + time_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x_t: Tensor, t) -> Tensor:
        t = torch.as_tensor(t, device=x_t.device).to(x_t.dtype).reshape(-1).expand(x_t.shape[0])
        phase = t[:, None] * self.frequencies.to(x_t.dtype)
        return self.mlp(torch.cat([x_t, phase.sin(), phase.cos()], dim=1))


def fit_noise_model(data: Tensor, scheduler, cfg: Config) -> tuple[EpsMLP, float]:
    """The usual ε-prediction loss, Adam with a cosine schedule through ``training.fit``."""
    torch.manual_seed(cfg.seed)
    net = EpsMLP(hidden=cfg.model_hidden)
    gen = torch.Generator().manual_seed(cfg.seed + 5)
    valid = training_timesteps(scheduler)

    def loss() -> Tensor:
        idx = torch.randint(0, len(data), (512,), generator=gen)
        t = valid[torch.randint(0, len(valid), (512,), generator=gen)]
        alpha, sigma = (c.float() for c in noise_level(scheduler, t))
        noise = torch.randn(512, 2, generator=gen)
        return (net(add_noise(data[idx], noise, alpha, sigma), t) - noise).pow(2).mean()

    _, seconds = timed(lambda: fit(net, loss, steps=cfg.model_steps, lr=2e-3, progress=False, name="eps_mlp"))
    return net.eval().requires_grad_(False), seconds


def run_learned(name: str, cfg: Config, log) -> tuple[list[dict], dict]:
    """Rows for every β and sampler on a learned model of ``name``, against its own tilted target."""
    ds = toy_dataset(name)
    gen = torch.Generator().manual_seed(cfg.seed)
    data, _ = ds.sample(cfg.num_data, gen)
    scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    model, fit_s = fit_noise_model(data, scheduler, cfg)
    table = estimate_variance_table(scheduler, model, data, generator=gen)
    ctx = {
        "scheduler": scheduler,
        "model": model,
        "energy": ds.energy,
        "data": data,
        "table": table,
        "floor": cfg.floor,
    }
    pool, pool_s = timed(
        lambda: sample(
            scheduler,
            model,
            (cfg.target_pool, 2),
            num_inference_steps=cfg.num_inference_steps,
            generator=torch.Generator().manual_seed(cfg.seed + 11),
        ).detach()
    )
    finite = torch.isfinite(pool).all(1)
    pool = pool[finite]
    pool_energies = ds.energy(pool.double())
    unguided = draw(ctx, None, cfg.num_samples, cfg)
    data_target = Target(data, torch.ones(len(data), dtype=torch.float64))
    sanity = {
        "fit_s": fit_s,
        "pool_s": pool_s,
        "pool_finite": int(finite.sum()),
        "sw2_to_data": data_target.sw2(unguided[0]) if unguided[0] is not None else math.inf,
        "data_floor": floors(data_target, dataclasses.replace(cfg, floor_repeats=4))[0]["sw2"],
    }
    log(
        f"[learned] {name:>12} fitted in {fit_s:.1f} s; unguided SW2 to the data {sanity['sw2_to_data']:.3f} "
        f"(i.i.d. data draws: {sanity['data_floor']:.3f})"
    )
    rows, samples = [{"part": "learned", "dataset": name, "method": "model", **sanity}], {"data": data}
    for beta in cfg.betas:
        weights = torch.softmax(-beta * pool_energies, dim=0)
        log_z = float(torch.logsumexp(-beta * pool_energies, 0) - math.log(len(pool)))
        found: dict[str, dict] = {}
        target = Target(pool, weights)
        target.label = float(weights @ -pool_energies.double())
        resampled, two = floors(target, cfg)
        found["resampled"] = {**resampled, "target_ess": kish_ess(weights)}
        found["two_draws"] = two
        guidances = {}
        for method in cfg.learned_methods:
            if method == "unguided":
                x, seconds = unguided
            else:
                guidances[method] = training_free(method, ctx, beta)
                x, seconds = draw(ctx, guidances[method], cfg.num_samples, cfg)
            found[method] = {**score(ctx, x, target), "sample_s": seconds, "sample": x}
        for twist in cfg.learned_twists:
            base, temper = untempered(twist, cfg)
            guidance = smc_guidance(guidances.get(base) or training_free(base, ctx, beta), cfg)
            for k in cfg.smc_k:
                found[f"smc_{twist}_K{k}"] = run_smc(ctx, guidance, k, beta, cfg, target, log_z, temper)
        collect(found, "learned", name, beta, rows, samples)
        samples[(beta, "target")] = draws_from(pool, weights)
        log(
            f"[learned] {name:>12} β={beta:<4g} target ESS {found['resampled']['target_ess']:.0f} | "
            + " ".join(f"{m}={r['sw2']:.3f}" for m, r in found.items())
        )
    return rows, samples


# --- report ------------------------------------------------------------------------------------


def _fmt(value: float, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "div"
    return f"{value * scale:.3f}"


def _by(rows: list[dict], part: str) -> dict[tuple[str, float], dict[str, dict]]:
    table: dict[tuple[str, float], dict[str, dict]] = {}
    for r in rows:
        if r["part"] == part and "beta" in r:
            table.setdefault((r["dataset"], r["beta"]), {})[r["method"]] = r
    return table


def metric_table(
    rows: list[dict], part: str, methods: list[str], key: str = "sw2", scale: float = 1.0
) -> str:
    """Markdown: one line per (data set, β), ``key`` × ``scale`` per method (floor ± s.d.)."""
    by = _by(rows, part)
    head = "| data set | β | " + " | ".join(methods) + " |"
    lines = [head, "|" + "---|" * (len(methods) + 2)]
    for k in sorted(by, key=lambda k: (DATASETS.index(k[0]), k[1])):
        cells = []
        for m in methods:
            r = by[k].get(m)
            cell = _fmt(r[key], scale) if r is not None and key in r else "–"
            if r is not None and m == "resampled" and key + "_sd" in r:
                cell += f" ± {r[key + '_sd'] * scale:.3f}"
            cells.append(cell)
        lines.append(f"| {k[0]} | {k[1]:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def training_table(rows: list[dict], methods: list[str]) -> str:
    """Steps, seconds and guidance error of each learned estimator per setting."""
    by = _by(rows, "exact")
    head = "| data set | β | " + " | ".join(f"{m}: steps / s / err" for m in methods) + " |"
    lines = [head, "|" + "---|" * (len(methods) + 2)]
    for k in sorted(by, key=lambda k: (DATASETS.index(k[0]), k[1])):
        cells = []
        for m in methods:
            r = by[k].get(m)
            cells.append("–" if r is None else f"{r['steps']} / {r['train_s']:.1f} / {r['guidance_err']:.2f}")
        lines.append(f"| {k[0]} | {k[1]:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def smc_summary(rows: list[dict], part: str) -> str:
    """Per (twist, K), the median over settings: SW2, wall time, ESS, resampling, log Z error."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["part"] == part and r["method"].startswith("smc_"):
            groups.setdefault(r["method"], []).append(r)
    if not groups:
        return ""
    lines = [
        "| SMC run | populations × K | SW2 | s | mean ESS/K | min ESS/K | final ESS/K | "
        "resamplings / population | log Ẑ - log Z | \\|ℓ̄ - ℓ*\\| (s.e.) | diverged |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, rs in groups.items():
        ok = [r for r in rs if not r["diverged"]]

        def mean(key: str, rs=ok) -> str:  # the median: exploded runs would dominate a mean
            values = sorted(r[key] for r in rs)
            return f"{values[len(values) // 2]:.2f}" if values else "–"

        sw = sorted(r["sw2"] for r in rs)
        lines.append(
            f"| {method[4:]} | {rs[0]['populations']} × {rs[0]['K']} | {_fmt(sw[len(sw) // 2])} | "
            f"{mean('sample_s', rs)} | {mean('ess_mean')} | {mean('ess_min')} | {mean('ess_final')} | "
            f"{mean('resamplings')} | {mean('logz_err')} | {mean('label_err')} ({mean('label_se')}) | "
            f"{len(rs) - len(ok)}/{len(rs)} |"
        )
    return "\n".join(lines)


def sampling_times(rows: list[dict], part: str, methods: list[str]) -> str:
    """Mean sampling seconds per method over all settings."""
    cells = []
    for m in methods:
        times = [r["sample_s"] for r in rows if r["part"] == part and r["method"] == m and "sample_s" in r]
        cells.append(f"{sum(times) / len(times):.2f}" if times else "–")
    head = "| mean sampling s | " + " | ".join(methods) + " |"
    return head + "\n|" + "---|" * (len(methods) + 1) + "\n| | " + " | ".join(cells) + " |"


def count(by: dict, better: str, than: str, factor: float = 1.0, slack: str | None = None) -> tuple[int, int]:
    """Settings where ``better``'s SW2 ≤ factor × ``than``'s (+ 2 s.d. of the floor with ``slack``)."""
    hits = total = 0
    for found in by.values():
        if better not in found or than not in found:
            continue
        total += 1
        bound = factor * found[than]["sw2"]
        if slack and slack in found:
            bound += 2 * found[slack]["sw2_sd"]
        hits += found[better]["sw2"] <= bound
    return hits, total


def blew_up(row: dict) -> bool:
    return not row.get("diverged") and row.get("escaped", 0.0) > 0.01


def smc_protocol_text(cfg: Config, k: int | None = None) -> str:
    """How the SMC runs were scored, in words (K = ``k``, or every K)."""
    spacing = "" if cfg.smc_spacing == "leading" else f"; DDPM with {cfg.smc_spacing} spacing"
    if cfg.smc_protocol == "populations":
        outputs = f"{cfg.num_samples} outputs, each from its own {k or 'K'} particles"
        return f"one output per population: {outputs}{spacing}"
    runs = f"{cfg.smc_particles // k} populations × {k}" if k else f"{cfg.smc_particles} particles per run"
    return f"equal particle budget: {runs}, pooled weighted particles{spacing}"


def goals(rows: list[dict], cfg: Config) -> str:
    """Issue 9's measured goals, counted per (data set, β)."""
    lines = []
    by = _by(rows, "exact")

    def line(text: str, better: str, than: str, factor: float = 1.0, noise: bool = False) -> None:
        hits, total = count(by, better, than, factor)
        if not total:
            return
        extra = ""
        if noise:
            soft, _ = count(by, better, than, factor, slack="resampled")
            extra = f" ({soft}/{total} within 2 s.d. of the floor's noise)"
        lines.append(f"- {text}: {hits}/{total}{extra}")

    for second in ("cf2_dv", "cf2_jac", "tw2_dv", "tw2_jac"):
        line(f"second-order `{second}` SW2 ≤ DPS-style", second, "dps", noise=True)
    for quadrature in ("gh3_dv", "gh3_jac", "gh5_jac"):
        line(f"quadrature `{quadrature}` SW2 ≤ DPS-style", quadrature, "dps", noise=True)
    for second, first in (("cf2_dv", "cf1_dv"), ("cf2_jac", "cf1_jac"), ("tw2_dv", "tw1_dv")):
        line(f"`{second}` ≤ its first-order form `{first}`", second, first)
    k = max(cfg.smc_k) if cfg.smc_k else None
    for twist in cfg.twists:
        text = f"SMC `{twist}` twist, K = {k} ({smc_protocol_text(cfg, k)}): SW2 ≤ 1.5 × exact guidance's"
        line(text, f"smc_{twist}_K{k}", "exact", 1.5, noise=True)
    for net in ("net_cf2", "net_cf1", "net_cum1", "net_gh3", "classifier"):
        line(f"`{net}` SW2 ≤ CEP's at equal training wall time", net, "cep", noise=True)
    learned = _by(rows, "learned")
    for second in ("cf2_dv", "cf2_jac", "tw2_dv", "gh3_dv", "gh3_jac", "gh5_jac"):
        hits, total = count(learned, second, "dps")
        if total:
            lines.append(f"- learned model: `{second}` SW2 ≤ DPS-style: {hits}/{total}")
    for text, bad in (
        ("diverged (non-finite samples)", lambda r: r.get("diverged")),
        ("blew up (finite, but > 1 % of samples beyond twice the data's radius)", blew_up),
    ):
        found = sorted({(r["part"], r["method"]) for r in rows if bad(r)})
        parts = []
        for part, method in found:
            n = sum(1 for r in rows if r["part"] == part and r["method"] == method and bad(r))
            parts.append(f"{part}/{method} on {n}")
        lines.append(f"- {text}: " + (", ".join(parts) if parts else "none"))
    return "\n".join(lines)


def plot_grid(path: Path, per_dataset: dict, beta: float, columns: list[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_dataset)
    cols = ["data", "target", *columns]
    size = (1.3 * len(cols), 1.3 * len(names))
    fig, axes = plt.subplots(len(names), len(cols), figsize=size, squeeze=False)
    for i, name in enumerate(names):
        samples = per_dataset[name]
        panels = {"data": samples["data"], "target": samples.get((beta, "target"))}
        panels |= {m: samples.get((beta, m)) for m in columns}
        lim = float(samples["data"].abs().max()) * 1.1
        for j, col in enumerate(cols):
            ax = axes[i, j]
            x = panels[col]
            if x is not None:
                x = x[:1000]
                ax.scatter(x[:, 0], x[:, 1], s=0.5, alpha=0.5, c="C0" if col in ("data", "target") else "C1")
            elif (beta, col) in samples:
                ax.text(0.5, 0.5, "diverged", ha="center", va="center", transform=ax.transAxes, fontsize=7)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col.replace("smc_", "smc ").replace("_K", " K"), fontsize=6)
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle(f"{title}, β = {beta:g}", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=90, format="png")
    atomic_write(path, buffer.getvalue())
    plt.close(fig)


def configure(argv=None) -> Config:
    cfg = tyro.cli(Config, args=argv, prog="python benchmarks/toys.py")
    if cfg.quick:  # the quick sizes replace the defaults, not values given on the command line
        defaults = Config()
        quick = {**QUICK, "datasets": ("8gaussians",), "betas": (10.0,)}
        changes = {k: v for k, v in quick.items() if getattr(cfg, k) == getattr(defaults, k)}
        cfg = dataclasses.replace(cfg, **changes)
    if any(k < 1 for k in cfg.smc_k):
        raise SystemExit("--smc-k values must be >= 1")
    if cfg.smc_protocol == "budget" and any(cfg.smc_particles < k for k in cfg.smc_k):
        raise SystemExit(f"--smc-k values must be <= --smc-particles={cfg.smc_particles}")
    if cfg.pilot_steps < 1:
        raise SystemExit("--pilot-steps must be >= 1")
    return cfg


def main(argv=None) -> dict:
    cfg = configure(argv)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows: list[dict] = []
    walls: dict[str, float] = {}
    plots: dict[str, dict] = {"exact": {}, "learned": {}}
    log = lambda s: print(s, flush=True)  # noqa: E731
    for part, run in (("exact", run_exact), ("learned", run_learned)):
        if part not in cfg.parts:
            continue
        began = time.perf_counter()
        for name in cfg.datasets:
            r, samples = run(name, cfg, log)
            rows += r
            plots[part][name] = samples
        walls[part] = time.perf_counter() - began
    for beta in cfg.betas:
        if plots["exact"]:
            smc = [f"smc_{t}_K{max(cfg.smc_k)}" for t in cfg.twists] if cfg.smc_k else []
            plot_grid(
                out / f"toys_beta{beta:g}.png",
                plots["exact"],
                beta,
                [m for m in cfg.methods] + smc,
                "exact noise model (target = data re-weighted by exp(-βE))",
            )
        if plots["learned"]:
            smc = [f"smc_{t}_K{max(cfg.smc_k)}" for t in cfg.learned_twists] if cfg.smc_k else []
            plot_grid(
                out / f"toys_learned_beta{beta:g}.png",
                plots["learned"],
                beta,
                list(cfg.learned_methods) + smc,
                "learned MLP model (target = its own samples re-weighted by exp(-βE))",
            )
    wall = time.perf_counter() - start
    report = render(rows, cfg, walls, wall)
    print(report)
    atomic_write(out / "results.md", (report + "\n").encode())
    result = {"config": asdict(cfg), "rows": rows, "wall_s": wall, "part_wall_s": walls}
    atomic_write(out / "results.json", json.dumps(result, indent=1, default=float).encode())
    return result


def render(rows: list[dict], cfg: Config, walls: dict, wall: float) -> str:
    sections = []
    exact_rows = [r for r in rows if r["part"] == "exact"]
    if exact_rows:
        base = ["resampled", "two_draws", *cfg.methods]
        smc = [f"smc_{t}_K{k}" for t in cfg.twists for k in cfg.smc_k]
        sections += [
            "## Part 1: exact noise model\n",
            f"SW2 to the exact target (lower is better; {cfg.num_samples} samples per sampler)\n",
            metric_table(rows, "exact", base),
            "\nMMD² × 10³ to the exact target\n",
            metric_table(rows, "exact", [m for m in base if m != "two_draws"], "mmd2", 1e3),
            f"\nSMC ({smc_protocol_text(cfg)}), SW2 beside exact guidance's\n",
            metric_table(rows, "exact", ["resampled", "exact", *smc]),
            "\nSMC runs, medians over the settings\n",
            smc_summary(rows, "exact"),
        ]
        learned = [m for m in cfg.methods if m in LEARNED]
        if learned:
            sections += [
                f"\nLearned estimators at equal training wall time ({cfg.train_seconds:g} s each, set-up "
                "included): steps, seconds, relative guidance error\n",
                training_table(rows, learned),
            ]
        sections += ["\nWall time\n", sampling_times(rows, "exact", list(cfg.methods))]
    learned_rows = [r for r in rows if r["part"] == "learned"]
    if learned_rows:
        models = [r for r in learned_rows if r["method"] == "model"]
        smc = [f"smc_{t}_K{k}" for t in cfg.learned_twists for k in cfg.smc_k]
        sanity = "\n".join(
            f"- {r['dataset']}: fitted in {r['fit_s']:.1f} s, unguided SW2 to the data "
            f"{r['sw2_to_data']:.3f} "
            f"(i.i.d. data draws {r['data_floor']:.3f}); {r['pool_finite']} finite target-pool samples"
            for r in models
        )
        by = _by(rows, "learned")
        ess = "\n".join(
            f"- {k[0]} β={k[1]:g}: {by[k]['resampled']['target_ess']:.0f}"
            for k in sorted(by, key=lambda k: (DATASETS.index(k[0]), k[1]))
        )
        sections += [
            "\n## Part 2: learned MLP noise model\n",
            sanity,
            f"\nESS of the learned model's target (of {cfg.target_pool} weighted samples)\n",
            ess,
            "\nSW2 to the learned model's own tilted target\n",
            metric_table(rows, "learned", ["resampled", "two_draws", *cfg.learned_methods, *smc]),
            "\nMMD² × 10³\n",
            metric_table(rows, "learned", ["resampled", *cfg.learned_methods, *smc], "mmd2", 1e3),
            "\nSMC runs, medians over the settings\n",
            smc_summary(rows, "learned"),
            "\nWall time\n",
            sampling_times(rows, "learned", list(cfg.learned_methods)),
        ]
    sections += ["\n## Goals (issue 9)\n", goals(rows, cfg)]
    parts = ", ".join(f"{p} {s:.0f} s" for p, s in walls.items())
    sections.append(
        f"\nwall time {wall:.0f} s ({parts}), {cfg.threads} thread(s), torch {torch.__version__}, "
        f"{platform.machine()}, {time.strftime('%Y-%m-%d')}"
    )
    return "\n".join(sections)


if __name__ == "__main__":
    main()
