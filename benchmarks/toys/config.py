"""The benchmark's settings (``python -m benchmarks.toys --help``) and the quick sizes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Literal

import tyro

from energy_guidance.recipes.toys2d import DATASETS, DatasetName

from .methods import LEARNED_MODEL_METHODS, LEARNED_TWISTS, METHODS, TWISTS, choices

Part = Literal["exact", "learned"]
# The CLI's choices are the registry's names.
MethodName = Literal[tuple(METHODS)]  # type: ignore[valid-type]
LearnedModelMethod = Literal[LEARNED_MODEL_METHODS]  # type: ignore[valid-type]
TwistName = Literal[tuple(TWISTS)]  # type: ignore[valid-type]
LearnedTwist = Literal[LEARNED_TWISTS]  # type: ignore[valid-type]
SMCProtocol = Literal["budget", "populations"]
PART2_TWISTS = ("dps", "cf2_dv", "dps_t")  # the learned model's SMC twists by default


def _help(text: str, registry: dict, names: tuple[str, ...] | None = None) -> tyro.conf.arg:
    return tyro.conf.arg(help=f"{text} ({choices(registry, names)})")


@dataclass
class Config:
    """Guidance estimators and SMC against exact targets on QGPO's six 2-D toy data sets."""

    datasets: tuple[DatasetName, ...] = DATASETS  # which toy data sets
    betas: tuple[float, ...] = (3.0, 10.0, 20.0)  # inverse temperatures
    parts: tuple[Part, ...] = ("exact", "learned")  # exact noise model, then a learned MLP model
    methods: Annotated[tuple[MethodName, ...], _help("part 1 samplers", METHODS)] = tuple(METHODS)
    twists: Annotated[tuple[TwistName, ...], _help("part 1 SMC twists", TWISTS)] = tuple(TWISTS)
    learned_methods: Annotated[
        tuple[LearnedModelMethod, ...], _help("part 2 samplers", METHODS, LEARNED_MODEL_METHODS)
    ] = LEARNED_MODEL_METHODS
    learned_twists: Annotated[
        tuple[LearnedTwist, ...], _help("part 2 SMC twists", TWISTS, LEARNED_TWISTS)
    ] = PART2_TWISTS
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


QUICK = dict(  # --quick's sizes
    num_data=200, num_samples=200, floor_repeats=3, num_inference_steps=10, train_seconds=0.3,
    pilot_steps=20, support_pool=128, smc_k=(4, 16), smc_particles=64, model_steps=100, target_pool=1000,
)  # fmt: skip


def configure(argv=None) -> Config:
    cfg = tyro.cli(Config, args=argv, prog="python -m benchmarks.toys")
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
