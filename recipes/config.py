"""The AEPO recipe's settings: :class:`AEPOConfig` (one field per command-line flag), the presets
per task family, the command line (:func:`parse_args`), the checks of every setting
(:data:`LIMITS`, :func:`validate`, :class:`ConfigError`), and the split of a config into the
training, evaluation and runtime settings that a run folder keeps apart (:func:`split_settings`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import typing
from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

import torch
import tyro

from energy_guidance import distributed
from energy_guidance.adapters import Reduction
from energy_guidance.posterior import VARIANCES

from . import cli
from .behaviour import BehaviourConfig
from .cql import CQLConfig
from .data import DEFAULT_DATASET
from .iql import IQLConfig
from .runfolder import Settings
from .trainers import CRITICS

if typing.TYPE_CHECKING:  # the registries' names are known only when the program runs
    CriticName = str
    Variance = str
else:  # choices for tyro (listed by --help) and for validate
    CriticName = Literal[tuple(CRITICS)]
    Variance = Literal[tuple(VARIANCES)]
Device = Literal["auto", "cpu", "cuda"]
Rescale = Literal["auto", "on", "off"]
Preset = Literal["auto", "default", "locomotion-cpu", "locomotion-cpu-long", "locomotion-gpu"]
# the methods --compare evaluates beside AEPO (energy_guidance.recipes.comparisons)
Comparison = Literal["qgpo", "dps", "cql", "quadrature"]
COMPARISONS: tuple[str, ...] = get_args(Comparison)


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
    # what the critic's networks read: the "standardised" observations the behaviour model reads,
    # or the data set's "raw" ones (as d3rlpy's IQL does; the locomotion presets). Either can make
    # Q a far worse ranker of the behaviour model's candidates: raw on the embedded Pendulum set,
    # standardised on hopper/medium (docs/rl.md)
    critic_observations: Literal["raw", "standardised"] = "standardised"
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
# Locomotion (MuJoCo HalfCheetah, Hopper, Walker2d, Ant): IQL's reward normalisation, the critic
# on raw observations (its candidates' ranking on hopper/medium: docs/benchmarks.md);
# "-cpu-long" (the CPU's default) trains to where IQL's policy passes the data on hopper/medium
# (100k steps, about an hour per data set on a 2-core CPU), "-cpu" is a quick look sized to
# finish one data set within 15 minutes, below the data there (both: docs/benchmarks.md); "-gpu"
# for a GPU: IQL's published 1M critic steps (the AEPO paper's own budgets were not available to
# us, docs/rl.md).
PRESETS: dict[str, dict[str, typing.Any]] = {
    "default": {},
    "locomotion-cpu": {
        "reward_normalization": "returns",
        "critic_observations": "raw",
        "critic_steps": 20_000,
        "behaviour_steps": 20_000,
        "energy_steps": 10_000,
        "cql_steps": 3_000,  # a CQL step costs several IQL steps (Q on sampled actions per state)
        "eval_episodes": 10,
    },
    "locomotion-cpu-long": {
        "reward_normalization": "returns",
        "critic_observations": "raw",
        "critic_steps": 100_000,
        "behaviour_steps": 100_000,
        "energy_steps": 10_000,
        "cql_steps": 15_000,
        "eval_episodes": 10,
        # best of 64 beat best of 16 by 10 points on hopper/medium; 128 scored less (benchmarks.md)
        "num_candidates": 64,
    },
    "locomotion-gpu": {
        "reward_normalization": "returns",
        "critic_observations": "raw",
        "critic_steps": 1_000_000,
        "behaviour_steps": 500_000,
        "energy_steps": 200_000,
        "variance_samples": 65_536,
        "checkpoint_every": 10_000,
        "eval_episodes": 10,
        "num_candidates": 64,
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
    """``"auto"``: ``locomotion-gpu`` / ``locomotion-cpu-long`` (by device) for a MuJoCo locomotion
    data set id, ``default`` otherwise; any other name is returned as it is."""
    if preset != "auto":
        return preset
    if any(name in dataset.lower() for name in LOCOMOTION):
        return "locomotion-gpu" if resolve_device(device).type == "cuda" else "locomotion-cpu-long"
    return "default"


def parse_args(argv: list[str] | None = None) -> AEPOConfig:
    """The command line (``sys.argv[1:]`` when ``argv`` is None) as an :class:`AEPOConfig`, by tyro.

    The preset (``--preset``, by default chosen from ``--dataset`` and ``--device``) sets the
    defaults; every flag given overrides them. A config built in code gets no preset.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    first = argparse.ArgumentParser(add_help=False)
    for flag, value in (("--preset", "auto"), ("--dataset", DEFAULT_DATASET), ("--device", "auto")):
        first.add_argument(flag, default=value)
    known, _ = first.parse_known_args(argv)
    preset = resolve_preset(known.preset, known.dataset, known.device)
    if preset not in PRESETS:
        cli.fail(f"preset must be one of {('auto', *PRESETS)}, got {preset!r} (--preset)")
    default = dataclasses.replace(AEPOConfig(), **PRESETS[preset], preset=typing.cast(Preset, preset))
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
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
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


def training_defaults(config: AEPOConfig) -> Settings:
    """The recipe's default training settings for ``config``'s critic: what a run folder made
    before a field existed is taken to have used (:meth:`.runfolder.RunFolder.adopt`)."""
    return split_settings(dataclasses.replace(AEPOConfig(), critic=config.critic))["training"]


def evaluation_key(evaluation: Settings) -> Settings:
    """What an evaluation's returns depend on, beyond the training: its settings but `ablations`
    `smc`, `smc_temper` and `compare`, which only select which policies are evaluated (a tempered
    SMC policy's name carries its power)."""
    return {k: v for k, v in evaluation.items() if k not in ("ablations", "smc", "smc_temper", "compare")}
