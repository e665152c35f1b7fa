"""AEPO for offline RL, end to end: ``python -m energy_guidance.recipes.aepo --help``.

Phases (the training ones through :func:`energy_guidance.training.train`, checkpointed in the
run folder, see :mod:`energy_guidance.recipes.runfolder`; a finished phase is loaded, never redone):

1. critic     a :class:`.trainers.TrainableCritic` from :data:`.trainers.CRITICS` (IQL by default,
              or CQL) on the data set's transitions
2. behaviour  ε_θ(a_t, t, s), the diffusion behaviour policy μ(a | s) (:mod:`.behaviour`)
3. variance   the posterior-variance table of ε_θ on the data's actions (``estimate_variance_table``)
4. energy     the intermediate-energy network E_Θ(s, a_t, t), regressed on the closed form at the
              expansion point x̄ = the clean data action (``closed_form_batches``), with the
              energy E(a | s) = −(reduce_i Q_i(s, a) − b(s)) / q_scale; Adam with torch's
              ``CosineAnnealingLR``
5. eval       episodes in the data set's environment for each policy, normalised scores; cached
              per evaluation settings, so changing only those re-evaluates a finished run

Guided sampling draws a ~ μ(a | s)·exp(−β·E(a | s)) with the amortised guidance and DPM-Solver++
(15 steps); AEPO's guidance rescale is on for actions of dimension ≥ 2 (``--rescale auto``, see
docs/rl.md). Action selection: AEPO draws ``num_candidates`` guided actions per state and takes the
one with the highest Q (reduced over the critic's heads). The paper's text was not available to
us; this is the selection rule of the methods it builds on and compares with (SfBC, QGPO, IDQL).
The paper-faithful single guided sample per state is reported beside it (``guided_single``).

Presets per task family (``--preset``, chosen from the data set by default; :data:`PRESETS`),
``--device auto|cpu|cuda``, ``torchrun`` for several training processes (:func:`run`), and the
compared methods (``--compare``, :mod:`energy_guidance.recipes.comparisons`) are described in docs/rl.md.

β is measured in units of ``q_scale``: the mean over data states (a fixed random 2,048 of them) of
the standard deviation of Q(s, a) over uniformly random actions, so that β = 1 tilts μ by e per
typical Q spread. The critic's state-only baseline b(s) (IQL: V(s); CQL: Q(s, π(s))) changes
neither the target policy nor the guidance gradient; it removes the between-state spread of Q
from the regression targets.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import math
import os
import sys
import time
import typing
from dataclasses import asdict, dataclass, field
from typing import Literal

try:  # the [rl] extra
    import gymnasium as gym
    import minari  # noqa: F401  # recipes/data.py's; checked here to name the extra
    import tyro
except ModuleNotFoundError as missing:  # exercised in a subprocess (tests/faults)
    _hint = (
        f"the AEPO recipe needs the [rl] extra (module {missing.name!r} is missing): "
        "pip install 'energy-guidance[rl]'"
    )
    if __name__ == "__main__":  # python -m energy_guidance.recipes.aepo: one line, no traceback
        print(f"error: {_hint}", file=sys.stderr)
        raise SystemExit(2) from None
    raise ModuleNotFoundError(_hint, name=missing.name) from None

import numpy as np
import torch
from torch import Tensor
from torch.optim.lr_scheduler import CosineAnnealingLR

from energy_guidance import (
    AnalyticEnergyGuidance,
    GaussianQuadrature,
    IntermediateEnergyNet,
    distributed,
    sample,
    smc_sample,
)
from energy_guidance.adapters import Reduction, critic_energy, reduce_critic
from energy_guidance.amortized import calibrate, closed_form_batches, regression_loss
from energy_guidance.baselines import dps_guidance
from energy_guidance.classifier import classifier_batch_loss, classifier_batches
from energy_guidance.posterior import VARIANCES
from energy_guidance.training import gradient_step, train
from energy_guidance.variance import VarianceTable, estimate_variance_table

from . import cli
from .behaviour import (
    BehaviourConfig,
    NoiseMLP,
    diffusion_loss,
    sampling_scheduler,
    smc_scheduler,
    training_scheduler,
)
from .comparisons import COMPARISONS, Comparison, quadrature_rule, train_cql, train_qgpo
from .cql import CQLConfig
from .data import (
    DEFAULT_DATASET,
    ActionScaler,
    check_dataset,
    load_dataset,
    load_transitions,
    reference_scores,
)
from .evaluation import evaluate, normalized_score
from .iql import IQLConfig
from .plots import learning_curves
from .runfolder import ConfigMismatch, RunFolder, RunFolderBusy, Settings
from .trainers import CRITICS, TrainableCritic
from .transitions import Transitions

logger = logging.getLogger(__name__)

CriticName = Literal[tuple(CRITICS)]  # type: ignore[valid-type]  # the registry's names
Variance = Literal[tuple(VARIANCES)]  # type: ignore[valid-type]
Device = Literal["auto", "cpu", "cuda"]
Rescale = Literal["auto", "on", "off"]
Preset = Literal["auto", "default", "locomotion-cpu", "locomotion-gpu"]


@dataclass
class AEPOConfig:
    """AEPO (analytic energy-guided policy optimisation) on a Minari data set.

    Evaluation settings (marked "evaluation") may change on a finished run: the trained models
    are reused and only the evaluation is redone. Any other change needs a new --run-dir.
    """

    dataset: str = DEFAULT_DATASET  # a Minari id present under MINARI_DATASETS_PATH
    preset: Preset = "auto"  # budgets and settings per task family (PRESETS); auto: by data set, device
    env: str = ""  # evaluation environment id; "" = the data set's own (recover_environment)
    device: Device = "auto"  # where every network and tensor lives; auto: cuda when available
    run_dir: str = "runs/aepo"  # checkpoints, config.json, results.json, learning_curves.png
    seed: int = 0  # seeds the networks, batches and samples (not the data set)
    threads: int = 1  # torch.set_num_threads; 1 is robust when other jobs share the 2 cores
    progress: bool = True  # tqdm progress bars
    batch_size: int = 256  # for the critic, the behaviour policy and the energy network
    # IQL's reward normalisation for locomotion: "returns" multiplies rewards by
    # 1000 / (max − min episode return of the data set); "none" leaves them as they are
    reward_normalization: Literal["none", "returns"] = "none"
    checkpoint_every: int = 1000  # steps between periodic checkpoints of a training phase
    # 1. critic: CRITICS[critic], configured by the field of the same name (critic_settings)
    critic: CriticName = "iql"  # the offline-RL critic (and its own policy)
    critic_steps: int = 10_000  # gradient steps of the critic (and its own policy)
    iql: IQLConfig = field(default_factory=IQLConfig)
    cql: CQLConfig = field(default_factory=CQLConfig)
    reduce: Reduction = "min"  # over the critic's Q heads, in the energy and the candidate selection
    # 2. behaviour policy
    behaviour_steps: int = 10_000  # gradient steps of the noise model
    behaviour: BehaviourConfig = field(default_factory=BehaviourConfig)
    # 3-4. guidance
    beta: float = 3.0  # inverse temperature, in units of q_scale (module docstring)
    variance: Variance = "data_var"  # posterior-variance estimator of the closed-form targets
    expansion: Literal["data", "posterior_mean"] = "data"  # the targets' expansion point: x0 or x̂0
    variance_samples: int = 4096  # data points (random subset) for the variance table
    energy_steps: int = 10_000  # gradient steps of the intermediate-energy network
    energy_hidden: int = 64  # its width (3 layers); 64 keeps amortized sampling near unguided cost
    energy_lr: float = 1e-3  # its Adam learning rate, decayed to 0 on a cosine
    # how it learns E_t: "closed_form" regresses the paper's targets (variance, expansion);
    # "classifier" the logit of a classifier of advantage-weighted data actions against the data
    # (energy_guidance.classifier: exact targets, no behaviour-model calls; better on the MuJoCo
    # sets, far worse on the embedded Pendulum set: docs/benchmarks.md)
    energy_loss: Literal["closed_form", "classifier"] = "closed_form"
    qgpo_states: int = 20_000  # --compare qgpo: data states (random subset) with support samples
    qgpo_support: int = 16  # --compare qgpo: behaviour samples per state (QGPO's M)
    cql_steps: int = 0  # --compare cql: gradient steps of the CQL critic; 0: critic_steps
    # 5. evaluation
    inference_steps: int = 15  # evaluation: sampler steps per action
    rescale: Rescale = "auto"  # evaluation: AEPO's guidance rescale; auto: on for action dim >= 2
    guidance_scale: float = 1.0  # evaluation: multiplies the guidance term; 1 is the exact target
    num_candidates: int = 16  # evaluation: guided actions per state; the best by Q is taken
    eval_episodes: int = 10  # evaluation: episodes per policy
    eval_seed: int = 10_000  # evaluation: episode i is reset with eval_seed + i
    ablations: bool = True  # evaluation: also guided/1 candidate and unguided/best-of-N by Q
    smc: bool = True  # evaluation: also SMC selection, K = num_candidates particles per state
    # evaluation: with smc, also SMC with the twist tempered by this power p (smc_sample(temper=p));
    # 0: none. The policy's name carries p, so its cached evaluation is p's own.
    smc_temper: float = 3.0
    # evaluation: also the methods AEPO is compared with on the same data and budgets
    # (energy_guidance.recipes.comparisons): QGPO's contrastive energy, DPS-style guidance, CQL's actor
    compare: tuple[Comparison, ...] = ()


# Settings that change only the evaluation (dotted paths into AEPOConfig) and those that change
# nothing computed; every other field is a training setting. `ablations` only selects which
# policies are evaluated, so it is not part of an evaluation's cache key.
EVALUATION_FIELDS = (
    "inference_steps",
    "rescale",
    "guidance_scale",
    "num_candidates",
    "eval_episodes",
    "eval_seed",
    "ablations",
    "smc",
    "smc_temper",
    "compare",
    "behaviour.sampler",
    "behaviour.clip_sample",
)
RUNTIME_FIELDS = ("run_dir", "threads", "progress", "checkpoint_every", "device", "preset")


# Settings per task family, applied by the command line before its own flags (which override
# them). "default" is AEPOConfig as written: sized for the embedded Pendulum set on this CPU.
# Locomotion (MuJoCo HalfCheetah, Hopper, Walker2d, Ant): IQL's reward normalisation; "-cpu" fits
# one data set (all phases, 10 episodes per policy) in about 15 minutes on a 2-core CPU, "-gpu" is
# sized for a GPU: IQL's published 1M critic steps (the AEPO paper's own budgets were not
# available to us, docs/rl.md).
PRESETS: dict[str, dict[str, typing.Any]] = {
    "default": {},
    "locomotion-cpu": {
        "reward_normalization": "returns",
        "critic_steps": 20_000,
        "behaviour_steps": 20_000,
        "energy_steps": 10_000,
        "cql_steps": 3_000,  # a CQL step costs ~10 IQL steps here (Q on 30 sampled actions per state)
        "eval_episodes": 10,
    },
    "locomotion-gpu": {
        "reward_normalization": "returns",
        "critic_steps": 1_000_000,
        "behaviour_steps": 500_000,
        "energy_steps": 200_000,
        "variance_samples": 65_536,
        "checkpoint_every": 10_000,
        "eval_episodes": 10,
        "threads": 4,
    },
}
LOCOMOTION = ("halfcheetah", "hopper", "walker2d", "ant")


def resolve_device(device: str) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; ``"cuda"`` without CUDA is an error. Under
    torchrun each process gets ``cuda:LOCAL_RANK``."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but torch sees no CUDA device (torch.cuda.is_available() is False)")
    return distributed.resolve_device(device)


def resolve_preset(preset: str, dataset: str, device: str) -> str:
    """``"auto"``: ``locomotion-gpu`` / ``-cpu`` (by device) for a MuJoCo locomotion data set id,
    ``default`` otherwise; any other name is returned as it is."""
    if preset != "auto":
        return preset
    if any(name in dataset.lower() for name in LOCOMOTION):
        return "locomotion-gpu" if resolve_device(device).type == "cuda" else "locomotion-cpu"
    return "default"


# ---------------------------------------------------------------------------------------------
# Configuration: command line, checks, and its training / evaluation / runtime split


def parse_args(argv: list[str] | None = None) -> AEPOConfig:
    """The command line (``sys.argv[1:]`` when ``argv`` is None) as an :class:`AEPOConfig`, by tyro.

    The preset (``--preset``, by default chosen from ``--dataset`` and ``--device``) sets the
    defaults; every flag given overrides them. A config built in code gets no preset.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    first = argparse.ArgumentParser(add_help=False)
    for flag, default in (("--preset", "auto"), ("--dataset", DEFAULT_DATASET), ("--device", "auto")):
        first.add_argument(flag, default=default)
    known, _ = first.parse_known_args(argv)
    preset = resolve_preset(known.preset, known.dataset, known.device)
    if preset not in PRESETS:
        cli.fail(f"preset must be one of {('auto', *PRESETS)}, got {preset!r} (--preset)")
    default = dataclasses.replace(AEPOConfig(), **PRESETS[preset], preset=preset)
    return tyro.cli(
        AEPOConfig,
        args=argv,
        default=default,
        prog="python -m energy_guidance.recipes.aepo",
        description=f"{AEPOConfig.__doc__}\n{cli.LOGGING_HELP}",
    )


class ConfigError(cli.UserError):
    """An invalid setting; the message names the field (and its flag), the value and what is allowed."""


INF = math.inf
# The allowed range of every numeric setting: dotted field -> (lowest, highest), both ends included
# unless the field is in LOWER_OPEN / UPPER_OPEN. Integers must be integers, floats finite numbers.
AT_LEAST_ONE = (
    "checkpoint_every", "critic_steps", "behaviour_steps", "energy_steps", "energy_hidden",
    "qgpo_states", "num_candidates", "eval_episodes", "iql.hidden", "iql.depth", "cql.num_samples",
    "cql.hidden", "cql.depth", "behaviour.hidden", "behaviour.depth",
    "inference_steps",  # and at most behaviour.num_train_timesteps (validate)
)  # fmt: skip
# cql_steps 0: critic_steps; smc_temper 0: no tempered SMC
NON_NEGATIVE = ("beta", "cql_steps", "guidance_scale", "smc_temper", "iql.awr_temperature", "cql.cql_alpha")
POSITIVE = (
    "energy_lr",
    "iql.lr",
    "iql.max_weight",
    "cql.temperature",
    "cql.critic_lr",
    "cql.actor_lr",
    "behaviour.lr",
)
FRACTIONS = ("iql.discount", "iql.expectile", "iql.polyak", "cql.discount", "cql.polyak")
LIMITS: dict[str, tuple[float, float]] = {
    **dict.fromkeys(AT_LEAST_ONE, (1, INF)),
    **dict.fromkeys(NON_NEGATIVE + POSITIVE, (0, INF)),
    **dict.fromkeys(FRACTIONS, (0, 1)),
    "seed": (0, 2**32 - 1),
    "eval_seed": (0, 2**31 - 1),
    "threads": (1, 1024),
    "batch_size": (2, INF),  # the energy network's calibration takes a standard deviation over a batch
    "variance_samples": (2, INF),  # a variance needs two points
    "qgpo_support": (2, INF),  # CEP contrasts M samples
    "behaviour.time_dim": (2, INF),  # a sine and a cosine
    "behaviour.num_train_timesteps": (2, INF),
}
# Rates, scales and temperatures are positive; a Polyak rate too; IQL's expectile lies in (0, 1).
LOWER_OPEN = {*POSITIVE, "iql.expectile", "iql.polyak", "cql.polyak"}
UPPER_OPEN = {"iql.expectile"}


def _bad(dotted: str, what: str, value: typing.Any) -> cli.UserError:
    return cli.bad_value(dotted, what, value, ConfigError)


def _check_fields(config: typing.Any, cls: type, prefix: str = "") -> None:
    """Types of every field of a (nested) config dataclass, its choices, and the ranges of :data:`LIMITS`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        dotted, hint, value = f"{prefix}{f.name}", hints[f.name], getattr(config, f.name)
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, hint):
                raise _bad(dotted, f"a {hint.__name__}", value)
            _check_fields(value, hint, f"{dotted}.")
            continue
        if typing.get_origin(hint) is Literal:
            allowed = typing.get_args(hint)
            if dotted != "critic" and (not isinstance(value, str) or value not in allowed):
                raise _bad(dotted, f"one of {allowed}", value)
        elif hint is bool and not isinstance(value, bool):
            raise _bad(dotted, "True or False", value)
        elif hint is str and not isinstance(value, str):
            raise _bad(dotted, "a string", value)
        elif hint is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise _bad(dotted, "an integer", value)
        elif hint is float and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        ):
            raise _bad(dotted, "a finite number", value)
        if dotted in LIMITS:
            low, high = LIMITS[dotted]
            cli.check_range(
                dotted,
                value,
                low,
                high,
                integer=hint is int,
                lower_open=dotted in LOWER_OPEN,
                upper_open=dotted in UPPER_OPEN,
                error=ConfigError,
            )


def validate(config: AEPOConfig) -> None:
    """Reject invalid settings before any work and before anything is written: every field's type,
    range (:data:`LIMITS`) and choices, and their combinations. :class:`ConfigError` names the
    field, its flag, the value and what is allowed. (The command line checks types and choices
    too; a config built in code is checked here.)"""
    if not isinstance(config, AEPOConfig):
        raise ConfigError(f"config must be an AEPOConfig, got {type(config).__name__}")
    if not isinstance(config.critic, str) or config.critic not in CRITICS:  # the live registry
        raise _bad("critic", f"one of {tuple(CRITICS)}", config.critic)
    if not isinstance(config.compare, tuple) or not all(isinstance(n, str) for n in config.compare):
        raise _bad("compare", f"a tuple of names from {COMPARISONS}", config.compare)
    unknown = [name for name in config.compare if name not in COMPARISONS]
    if unknown:
        raise ConfigError(f"compare takes names from {COMPARISONS}, got {unknown} (--compare)")
    _check_fields(config, AEPOConfig)
    try:
        critic_settings(config)
    except TypeError as error:
        raise ConfigError(str(error)) from None
    if not config.dataset:
        raise _bad("dataset", "a Minari data set id", config.dataset)
    if not config.run_dir:
        raise _bad("run_dir", "a folder", config.run_dir)
    if os.path.exists(config.run_dir) and not os.path.isdir(config.run_dir):
        raise _bad("run_dir", "a folder (it is a file)", config.run_dir)
    steps = config.behaviour.num_train_timesteps
    if config.inference_steps > steps:
        raise ConfigError(
            f"inference_steps must be at most behaviour.num_train_timesteps = {steps} (the behaviour "
            f"model's training steps), got {config.inference_steps} (--inference-steps)"
        )
    resolve_device(config.device)  # "cuda" without CUDA fails here, before any work


def critic_settings(config: AEPOConfig):
    """The selected critic's settings: the field named like it in the registry, or its defaults
    when AEPOConfig has no such field (a critic registered without command-line options)."""
    cls = CRITICS[config.critic]
    settings = getattr(config, config.critic, None)
    if settings is None:
        return cls.Config()
    if not isinstance(settings, cls.Config):
        raise TypeError(f"AEPOConfig.{config.critic} must be a {cls.Config.__name__}, got {settings!r}")
    return settings


def split_settings(config: AEPOConfig) -> dict[str, Settings]:
    """``{"training", "evaluation", "runtime"}`` settings of ``config`` (nested dicts). Only the
    selected critic's section is kept: the others change nothing."""
    training = asdict(config)
    for name in CRITICS:
        training.pop(name, None)
    training[config.critic] = asdict(critic_settings(config))
    groups: dict[str, Settings] = {"evaluation": {}, "runtime": {}}
    for group, names in (("evaluation", EVALUATION_FIELDS), ("runtime", RUNTIME_FIELDS)):
        for dotted in names:
            *path, leaf = dotted.split(".")
            source, target = training, groups[group]
            for part in path:
                source, target = source[part], target.setdefault(part, {})
            target[leaf] = source.pop(leaf)
    return {"training": training, **groups}


def evaluation_key(evaluation: Settings) -> Settings:
    """What an evaluation's returns depend on, beyond the training: its settings but `ablations`
    `smc`, `smc_temper` and `compare`, which only select which policies are evaluated (a tempered
    SMC policy's name carries its power)."""
    return {k: v for k, v in evaluation.items() if k not in ("ablations", "smc", "smc_temper", "compare")}


# ---------------------------------------------------------------------------------------------
# The recipe


@dataclass
class Normalizer:
    """Observation standardisation measured on the data set (on the run's device)."""

    mean: Tensor
    std: Tensor

    def __call__(self, obs) -> Tensor:
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.mean.device)
        return (obs - self.mean) / self.std


def reward_scale(returns: np.ndarray) -> float:
    """IQL's reward normalisation for locomotion: 1000 / (max − min episode return of the data).

    It makes the scale of Q, hence the meaning of IQL's AWR temperature, the same on every data
    set; the guidance is unaffected (β is in units of Q's spread, see the module docstring)."""
    spread = float(np.max(returns) - np.min(returns))
    if not spread > 0:
        raise ValueError("reward normalisation 'returns' needs episodes of different returns")
    return 1000.0 / spread


@dataclass
class Inputs:
    """The validated inputs of a run: the data (normalised) and the evaluation environment."""

    data: Transitions
    make_env: typing.Callable[[], gym.Env]
    env_id: str
    refs: tuple[float, float] | None
    scaler: ActionScaler
    normalizer: Normalizer
    reward_scale: float  # the rewards of ``data`` are the data set's times this
    dataset_score: float | None  # the data set's mean episode return, normalised (None: no refs)


class InputError(cli.UserError):
    """The data set and the environment do not fit each other or the recipe."""


def load_inputs(config: AEPOConfig, device: torch.device | str = "cpu") -> Inputs:
    """Load the data set and the environment, check that they match (clear errors otherwise: an
    :class:`InputError` for a data set and environment that do not fit), put the data on ``device``."""
    try:
        return _load_inputs(config, device)
    except (ValueError, TypeError, gym.error.Error) as error:
        if isinstance(error, cli.UserError):
            raise
        env = config.env or "its own environment"
        raise InputError(f"data set {config.dataset!r} with {env}: {error}") from error


def _load_inputs(config: AEPOConfig, device: torch.device | str) -> Inputs:
    dataset = load_dataset(config.dataset)
    returns = np.array([float(np.sum(e.rewards)) for e in dataset.iterate_episodes()])

    def make_env() -> gym.Env:
        return gym.make(config.env) if config.env else dataset.recover_environment()

    env = make_env()
    data = load_transitions(dataset, env)  # checks shapes against env and finiteness
    data = Transitions(*(getattr(data, f.name).to(device) for f in dataclasses.fields(data)))
    normalizer = Normalizer(data.observations.mean(0), data.observations.std(0).clamp_min(1e-3))
    scale = reward_scale(returns) if config.reward_normalization == "returns" else 1.0
    data = Transitions(
        normalizer(data.observations),
        data.actions,
        data.rewards * scale,
        normalizer(data.next_observations),
        data.terminals,
    )
    env_id = env.spec.id if env.spec else str(env)
    env.close()
    scaler = ActionScaler.from_space(env.action_space)
    refs = reference_scores(dataset)
    dataset_score = None if refs is None else float(normalized_score(returns, *refs).mean())
    return Inputs(data, make_env, env_id, refs, scaler, normalizer, scale, dataset_score)


@torch.no_grad()
def measure_q_scale(
    critic: TrainableCritic,
    states: Tensor,
    act_dim: int,
    reduce: str,
    num_actions: int = 64,
    max_states: int = 2048,
) -> float:
    """mean_s std_{a ~ U[-1,1]^d} Q(s, a): the typical spread of Q over actions at one state.

    The mean is over a fixed random subset of at most ``max_states`` of ``states`` (the same on
    every run and process): data sets are stored episode by episode, and their first states can be
    untypical (on HalfCheetah medium-replay, whose first episodes are near-random, the first 2,048
    give half the spread of a random 2,048).
    """
    g = torch.Generator().manual_seed(0)
    if len(states) > max_states:
        states = states[torch.randperm(len(states), generator=g)[:max_states].to(states.device)]
    s = states.repeat_interleave(num_actions, dim=0)
    a = (torch.rand((len(s), act_dim), generator=g) * 2 - 1).to(s)
    q = reduce_critic(critic.q_values(s, a), len(s), reduce).reshape(len(states), num_actions)
    return max(float(q.std(dim=1).mean()), 1e-6)


class Policies:
    """The evaluated policies, all mapping raw observations (B, k) to environment actions (B, d).

    Every diffusion policy draws ``candidates`` actions per state (guided or not) with the
    sampling scheduler (which clips x̂0 itself, see :func:`.behaviour.sampling_scheduler`);
    with several candidates the one with the highest Q is taken.
    """

    def __init__(
        self,
        config,
        critic,
        model,
        scheduler,
        network,
        energy,
        normalizer,
        scaler,
        act_dim,
        generator,
        qgpo_network=None,
        cql_critic=None,
        variance_table=None,
    ):
        self.config, self.critic, self.model, self.scheduler = config, critic, model, scheduler
        self.energy, self.normalizer, self.scaler = energy, normalizer, scaler
        self.act_dim, self.generator, self.cql_critic = act_dim, generator, cql_critic
        self.rescale = resolve_rescale(config.rescale, act_dim)
        common = {
            "rescale": self.rescale,
            "scale": config.guidance_scale,
            "allow_clipping": config.behaviour.clip_sample,  # actions live in [-1, 1]: clipping is meant
        }
        self.guidance = AnalyticEnergyGuidance(scheduler, model, estimator=network, **common)
        self.smc_scheduler = smc_scheduler(config.behaviour, scheduler)
        self.compared = {}  # --compare: name -> guidance
        if qgpo_network is not None:
            self.compared["qgpo"] = AnalyticEnergyGuidance(scheduler, model, estimator=qgpo_network, **common)
        if "dps" in config.compare:
            self.compared["dps"] = dps_guidance(scheduler, model, energy, config.beta, **common)
        if "quadrature" in config.compare:
            quadrature = GaussianQuadrature(
                energy, config.beta, config.variance, variance_table, rule=quadrature_rule(act_dim)
            )
            self.compared["quadrature"] = AnalyticEnergyGuidance(
                scheduler, model, estimator=quadrature, **common
            )

    def smc(
        self,
        obs: np.ndarray,
        select: str,
        temper: float = 0.0,
        guidance: AnalyticEnergyGuidance | None = None,
    ) -> np.ndarray:
        """One action per state from SMC with K = ``num_candidates`` particles (the network's E_t as
        the twist, the guided DPM-Solver++ SDE step as the proposal, β·E(a | s) at the end):
        ``select="draw"`` draws it from the final weighted particles, ``"best_weight"`` takes the
        highest-weight particle. The model is evaluated K times per state and step, as for
        best-of-K (plus the network's cheap twist). ``temper``: p of the tempered twist (0: none);
        ``guidance``: another twist and proposal (its scheduler is replaced by SMC's)."""
        states = self.normalizer(obs)
        result = smc_sample(
            self.smc_scheduler,
            (guidance or self.guidance).replace(scheduler=self.smc_scheduler),
            (len(obs), self.act_dim),
            num_particles=self.config.num_candidates,
            cond=states,
            num_inference_steps=self.config.inference_steps,
            generator=self.generator,
            resample=select == "draw",
            energy=self.energy,
            temper=temper,
        )
        actions = result.samples
        if select == "best_weight":
            actions = actions[torch.arange(len(obs), device=actions.device), result.log_weights.argmax(dim=1)]
        return self.scaler.from_unit(actions.detach().clamp(-1, 1).double().cpu().numpy())

    def diffusion(
        self, obs: np.ndarray, guidance: AnalyticEnergyGuidance | None, candidates: int
    ) -> np.ndarray:
        """``candidates`` samples per state (guided by ``guidance``, or not), the best by Q."""
        states = self.normalizer(obs).repeat_interleave(candidates, dim=0)
        with torch.no_grad():
            actions = sample(
                self.scheduler,
                self.model if guidance is None else guidance,
                (len(states), self.act_dim),
                cond=states,
                num_inference_steps=self.config.inference_steps,
                generator=self.generator,
            ).clamp(-1, 1)
            if candidates > 1:
                q = reduce_critic(self.critic.q_values(states, actions), len(states), self.config.reduce)
                best = q.reshape(len(obs), candidates).argmax(dim=1)
                rows = torch.arange(len(obs), device=best.device)
                actions = actions.reshape(len(obs), candidates, -1)[rows, best]
        return self.scaler.from_unit(actions.double().cpu().numpy())

    def critic_policy(self, obs: np.ndarray, critic: TrainableCritic | None = None) -> np.ndarray:
        with torch.no_grad():
            actions = (critic or self.critic).act(self.normalizer(obs))
        return self.scaler.from_unit(actions.double().cpu().numpy())

    def evaluated(self) -> dict:
        """name -> policy: AEPO (best of N by Q, and the paper's single guided sample), the
        behaviour policy, the critic's own policy, and the ablations."""
        n, guidance = self.config.num_candidates, self.guidance
        flipped = guidance.replace(rescale=False if self.rescale else "paper")  # AEPO's rescale, or none
        policies = {
            "aepo": lambda o: self.diffusion(o, guidance, n),
            "guided_single": lambda o: self.diffusion(o, guidance, 1),
            "behaviour": lambda o: self.diffusion(o, None, 1),
            self.critic.policy_name: self.critic_policy,
        }
        if self.config.ablations:
            policies |= {
                f"guided_single_rescale_{'off' if self.rescale else 'on'}": lambda o: self.diffusion(
                    o, flipped, 1
                ),
                "unguided_best_of_n": lambda o: self.diffusion(o, None, n),
            }
        for name, compared in self.compared.items():
            policies[name] = lambda o, g=compared: self.diffusion(o, g, n)
        if self.cql_critic is not None:
            policies[self.cql_critic.policy_name] = lambda o: self.critic_policy(o, self.cql_critic)
        if self.config.smc:
            policies |= {
                "smc_draw": lambda o: self.smc(o, "draw"),
                "smc_best_weight": lambda o: self.smc(o, "best_weight"),
            }
            if self.config.smc_temper:
                policies[tempered_smc_name(self.config.smc_temper)] = lambda o: self.smc(
                    o, "draw", self.config.smc_temper
                )
            if "quadrature" in self.compared:  # training-free SMC: the quadrature as twist and proposal
                policies[quadrature_smc_name(self.config.smc_temper)] = lambda o: self.smc(
                    o, "draw", self.config.smc_temper, self.compared["quadrature"]
                )
        return policies


TEMPERED_SMC = "smc_draw_temper"  # + the power: the name of SMC with a tempered twist (a draw)
QUADRATURE_SMC = "smc_quadrature_draw_temper"  # + the power: --smc --compare quadrature, its SMC


def tempered_smc_name(power: float) -> str:
    """The policy name of SMC with the twist tempered by ``power`` (a weighted draw)."""
    return f"{TEMPERED_SMC}{power:g}"


def quadrature_smc_name(power: float) -> str:
    """The policy name of SMC with the Gaussian quadrature as twist and proposal, tempered by ``power``."""
    return f"{QUADRATURE_SMC}{power:g}"


def resolve_rescale(rescale: str, act_dim: int) -> str | bool:
    """AEPO's guidance rescale ε̃ ← ε̃·‖ε̂‖/‖ε̃‖, as ``AnalyticEnergyGuidance(rescale=...)`` takes it:
    ``"paper"`` where it is on, ``False`` where it is off (``True`` would cap the guidance term at
    ‖ε̂‖ instead, the library's own rescale). ``"auto"`` turns it on for actions of dimension ≥ 2
    (in 1-D it can only flip the guidance's sign to the unguided score's, docs/rl.md)."""
    return "paper" if rescale == "on" or (rescale == "auto" and act_dim >= 2) else False


def run(config: AEPOConfig) -> dict | None:
    """Run (or resume, or re-evaluate) AEPO with ``config``; returns what it writes to ``results.json``.

    The run folder is locked for the whole run; its ``config.json`` is written once the data set
    and the environment have loaded and matched.

    Under ``torchrun --nproc-per-node N`` (:mod:`energy_guidance.distributed`) the training phases
    run on N processes, each on ``batch_size / N`` examples with gradients averaged: the same
    steps as one process on the whole batch. Rank 0 locks the folder, builds what is cached
    (data set, variance table, QGPO's support) before the others load it, writes every file and
    evaluates; the other ranks return None once training is done.
    """
    validate(config)
    check_dataset(config.dataset)  # a missing data set fails before the run folder is made
    started = time.perf_counter()
    torch.set_num_threads(config.threads)
    with distributed.session(resolve_device(config.device)) as device:
        folder = RunFolder(config.run_dir)
        with folder.lock() if distributed.is_main() else contextlib.nullcontext():
            with distributed.main_first():  # rank 0 builds a missing data set, then the others load it
                inputs = load_inputs(config, device)
            settings = split_settings(config)
            if distributed.is_main():
                defaults = split_settings(dataclasses.replace(AEPOConfig(), critic=config.critic))
                folder.adopt(**settings, defaults=defaults["training"])
            distributed.barrier()
            return _run(config, folder, inputs, settings, started, device)


def _run(
    config: AEPOConfig,
    folder: RunFolder,
    inputs: Inputs,
    settings: dict,
    started: float,
    device: torch.device,
) -> dict:
    """The phases on ``device``; every generator stays on the CPU (its draws are moved), so a run
    draws the same random numbers on any device."""
    data = inputs.data
    obs_dim, act_dim = data.obs_dim, data.act_dim
    batch = distributed.local_batch_size(config.batch_size)  # per process; the whole batch on one

    def generator(seed: int) -> torch.Generator:  # per process under torchrun (the seed itself on one)
        return torch.Generator().manual_seed(distributed.rank_seed(seed))

    def phase(name, update, steps, **state):
        return train(
            update,
            steps,
            checkpoint_dir=folder.checkpoints,
            name=name,
            checkpoint_every=config.checkpoint_every,
            progress=config.progress,
            **state,
        )

    # 1. Critic.
    torch.manual_seed(config.seed)
    critic = CRITICS[config.critic](obs_dim, act_dim, critic_settings(config)).to(device)
    g = generator(config.seed)
    critic_history = phase(
        "critic",
        lambda step: critic.update(data.sample(batch, g), g),
        config.critic_steps,
        modules={"critic": critic},
        optimizers=critic.optimizers,
        generator=g,
    )

    # 2. Behaviour policy.
    torch.manual_seed(config.seed + 1)
    b = config.behaviour
    model = NoiseMLP(act_dim, obs_dim, b.hidden, b.depth, b.time_dim).to(device)
    train_sched = training_scheduler(b)
    optimizer = torch.optim.Adam(model.parameters(), lr=b.lr)
    g = generator(config.seed + 1)

    def behaviour_update(step: int) -> dict[str, float]:
        drawn = data.sample(batch, g)
        loss = diffusion_loss(model, train_sched, drawn.actions, drawn.observations, g)
        return {"diffusion_loss": gradient_step(optimizer, loss)}

    behaviour_history = phase(
        "behaviour",
        behaviour_update,
        config.behaviour_steps,
        modules={"model": model},
        optimizers={"model": optimizer},
        generator=g,
    )
    model.eval().requires_grad_(False)
    critic.eval().requires_grad_(False)

    # 3. Posterior-variance table.
    table_path = folder.path / "variance_table.safetensors"
    with distributed.main_first():
        if distributed.is_main() and (folder.finished("variance") is None or not table_path.exists()):
            t0 = time.perf_counter()
            g = torch.Generator().manual_seed(config.seed + 2)
            subset = torch.randperm(len(data), generator=g)[: config.variance_samples].to(device)
            table = estimate_variance_table(
                train_sched, model, data.actions[subset], data.observations[subset], generator=g
            )
            table.save(str(table_path))
            folder.finish("variance", seconds=time.perf_counter() - t0)
    table = VarianceTable.load(str(table_path))  # a damaged file raises an error naming it

    # 4. Intermediate-energy network on closed-form targets (x̄ = the data action), or as a classifier.
    torch.manual_seed(config.seed + 3)
    network = IntermediateEnergyNet(act_dim, obs_dim, hidden=config.energy_hidden, beta=config.beta).to(
        device
    )
    q_scale = measure_q_scale(critic, data.observations, act_dim, config.reduce)  # deterministic
    energy = critic_energy(critic.q_values, config.reduce, q_scale, critic.baseline)
    g = generator(config.seed + 7)  # the training batches (seed + 4 is the evaluation's)
    if config.energy_loss == "classifier":
        # energy = -(Q - V)/q_scale: the weights exp(-β·E) are advantage weights, even over states
        actions, states = data.actions, data.observations
        draw, scale = classifier_batches(
            train_sched, energy, actions, states, beta=config.beta, batch_size=batch, generator=g
        )
        network.target_mean.fill_(0.0)  # the same on any number of processes (the whole data set's)
        network.target_scale.fill_(scale)

        def energy_loss() -> Tensor:
            return classifier_batch_loss(network, draw())

    else:
        targets = functools.partial(
            closed_form_batches,
            train_sched,
            model,
            energy,
            data.actions,
            data.observations,
            beta=config.beta,
            variance=config.variance,
            variance_table=table,
            expansion=config.expansion,
        )
        # The output scale from global batches of a fixed stream: the same on any number of
        # processes (the loss is in its units); a resumed run restores it from its checkpoint.
        fixed = torch.Generator().manual_seed(config.seed + 3)
        calibrate(network, targets(batch_size=config.batch_size, generator=fixed))
        draw = targets(batch_size=batch, generator=g)

        def energy_loss() -> Tensor:
            return regression_loss(network, draw())

    optimizer = torch.optim.Adam(network.parameters(), lr=config.energy_lr)
    schedule = CosineAnnealingLR(optimizer, T_max=max(config.energy_steps, 1))
    energy_history = phase(
        "energy",
        lambda step: {"energy_loss": gradient_step(optimizer, energy_loss())},
        config.energy_steps,
        modules={"network": network},
        optimizers={"network": optimizer},
        lr_schedulers={"network": schedule},
        generator=g,
    )
    network.eval().requires_grad_(False)

    # What --compare trains (once), then 5. evaluation (rank 0), cached per evaluation settings.
    scheduler = sampling_scheduler(b, train_sched)
    qgpo_network = cql_critic = None
    if "qgpo" in config.compare:
        qgpo_network = train_qgpo(config, folder, data, model, train_sched, scheduler, energy)
    if "cql" in config.compare and config.critic != "cql":
        cql_critic = train_cql(config, phase, data)
    if not distributed.is_main():
        return None
    generator = torch.Generator().manual_seed(config.seed + 4)
    policies = Policies(
        config,
        critic,
        model,
        scheduler,
        network,
        energy,
        inputs.normalizer,
        inputs.scaler,
        act_dim,
        generator,
        qgpo_network,
        cql_critic,
        table,
    )
    key = evaluation_key(settings["evaluation"])
    scores, eval_seconds = {}, {}
    for name, policy in policies.evaluated().items():
        record = folder.evaluation(key, name)
        if record is None:
            t0 = time.perf_counter()
            generator.manual_seed(config.seed + 4)  # each policy's samples independent of the others
            returns = evaluate(
                policy,
                inputs.make_env,
                config.eval_episodes,
                config.eval_seed,
                desc=name,
                progress=config.progress,
            )
            record = {"returns": returns.tolist(), "seconds": time.perf_counter() - t0}
            folder.record_evaluation(key, name, record)
        returns = np.asarray(record["returns"])
        entry = {
            "return_mean": float(returns.mean()),
            "return_std": float(returns.std()),
            "returns": returns.tolist(),
        }
        if inputs.refs is not None:
            norm = normalized_score(returns, *inputs.refs)
            entry |= {"score_mean": float(norm.mean()), "score_std": float(norm.std())}
        scores[name] = entry
        eval_seconds[f"eval_{name}"] = record["seconds"]

    phases = {name: folder.phase_seconds(name) for name in ("critic", "behaviour")}
    phases["variance"] = folder.finished("variance")["seconds"]
    phases["energy"] = folder.phase_seconds("energy")
    if qgpo_network is not None:
        phases["qgpo_support"] = folder.finished("qgpo_support")["seconds"]
        phases["qgpo"] = folder.phase_seconds("qgpo")
    if cql_critic is not None:
        phases["critic_cql"] = folder.phase_seconds("critic_cql")
    results = {
        "dataset": config.dataset,
        "env": inputs.env_id,
        "reference_scores": None
        if inputs.refs is None
        else {"random": inputs.refs[0], "expert": inputs.refs[1]},
        "dataset_score": inputs.dataset_score,  # the data set's mean return, normalised
        "reward_scale": inputs.reward_scale,
        "q_scale": q_scale,
        "scores": scores,
        "phase_seconds": phases | eval_seconds,
        "this_invocation_seconds": time.perf_counter() - started,
        "config": asdict(config),
    }
    folder.write_json("results.json", results)
    folder.write_bytes(
        "learning_curves.png",
        learning_curves(
            {"critic": critic_history, "behaviour": behaviour_history, "energy": energy_history},
            scores,
            inputs.dataset_score,
            {name: label(name) for name in scores},
        ),
    )
    return results


LABELS = {
    "aepo": "AEPO (guided, best of N by Q)",
    "behaviour": "diffusion BC (behaviour policy, unguided)",
    "guided_single": "AEPO, 1 guided sample (the paper's policy)",
    "guided_single_rescale_on": "ablation: guided, 1 sample, rescale on",
    "guided_single_rescale_off": "ablation: guided, 1 sample, rescale off",
    "unguided_best_of_n": "IDQL-style: unguided, best of N by Q",
    "smc_draw": "SMC, N particles: a weighted draw",
    "smc_best_weight": "SMC, N particles: highest weight",
    "qgpo": "QGPO (CEP energy, best of N by Q)",
    "dps": "DPS-style guidance (best of N by Q)",
    "quadrature": "Gaussian-quadrature guidance (best of N by Q)",
}


def label(name: str) -> str:
    """A policy's name in printed tables (a critic's own policy: its ``policy_label``)."""
    labels = LABELS | {cls.policy_name: cls.policy_label for cls in CRITICS.values()}
    if name.startswith(TEMPERED_SMC):
        return f"SMC, N particles, twist tempered (p = {name.removeprefix(TEMPERED_SMC)}): a draw"
    if name.startswith(QUADRATURE_SMC):
        return f"SMC, N particles, quadrature twist (p = {name.removeprefix(QUADRATURE_SMC)}): a draw"
    return labels.get(name, name)


def format_scores(results: dict) -> str:
    lines = [f"{results['dataset']} in {results['env']}, {results['config']['eval_episodes']} episodes each:"]
    width = max(len(label(name)) for name in results["scores"])
    for name, entry in results["scores"].items():
        text = label(name).ljust(width)
        if "score_mean" in entry:
            lines.append(
                f"  {text} normalised score {entry['score_mean']:6.1f} ± {entry['score_std']:4.1f}"
                f"   (return {entry['return_mean']:8.1f})"
            )
        else:
            lines.append(f"  {text} return {entry['return_mean']:8.1f} ± {entry['return_std']:.1f}")
    seconds = results["this_invocation_seconds"]
    lines.append(f"run folder: {results['config']['run_dir']}; this invocation {seconds:.0f} s")
    return "\n".join(lines)


PROG = "energy_guidance.recipes.aepo"


def main(argv: list[str] | None = None) -> None:
    """The command line: one-line errors (exit 2) for user errors, a one-line resume command on
    SIGINT/SIGTERM (exit 130/143), ``--log-level`` / ``-q`` (:mod:`energy_guidance.recipes.cli`)."""

    def body(rest: list[str]) -> None:
        results = run(parse_args(rest))
        if results is not None:  # None: a torchrun process other than rank 0
            print(format_scores(results))

    cli.command(PROG, argv, body, (RunFolderBusy, ConfigMismatch), resumable=True)


if __name__ == "__main__":
    main()
