"""AEPO for offline RL, end to end: ``python -m energy_guidance.recipes.aepo --help``.

Phases (the training ones through :func:`energy_guidance.training.train`, checkpointed in the
run folder, see :mod:`energy_guidance.recipes.runfolder`; a finished phase is loaded, never redone):

1. critic     (:func:`train_critic`) a :class:`.trainers.TrainableCritic` from
              :data:`.trainers.CRITICS` (IQL by default, or CQL) on the data set's transitions
2. behaviour  (:func:`train_behaviour`) ε_θ(a_t, t, s), the diffusion behaviour policy μ(a | s)
              (:mod:`.behaviour`)
3. variance   (:func:`variance_table`) the posterior-variance table of ε_θ on the data's actions
4. energy     (:func:`train_energy`) the intermediate-energy network E_Θ(s, a_t, t), regressed on
              the closed form at the expansion point x̄ = the clean data action
              (``closed_form_batches``), with the energy E(a | s) = −(reduce_i Q_i(s, a) − b(s)) /
              q_scale; Adam with torch's ``CosineAnnealingLR``
5. eval       (:func:`evaluate_policies`) episodes in the data set's environment for each policy of
              :class:`.policies.Policies`, normalised scores; cached per evaluation settings, so
              changing only those re-evaluates a finished run

:func:`run` calls them in this order; the settings are :class:`.config.AEPOConfig`, the data set
and environment :func:`.inputs.load_inputs`.

Guided sampling draws a ~ μ(a | s)·exp(−β·E(a | s)) with the amortised guidance and DPM-Solver++
(15 steps); AEPO's guidance rescale is on for actions of dimension ≥ 2 (``--rescale auto``, see
docs/rl.md). Action selection: AEPO draws ``num_candidates`` guided actions per state and takes the
one with the highest Q (reduced over the critic's heads). The paper's text was not available to
us; this is the selection rule of the methods it builds on and compares with (SfBC, QGPO, IDQL).
The paper-faithful single guided sample per state is reported beside it (``guided_single``).

Presets per task family (``--preset``, chosen from the data set by default; :data:`.config.PRESETS`),
``--device auto|cpu|cuda``, ``torchrun`` for several training processes (:func:`run`), and the
compared methods (``--compare``, :mod:`energy_guidance.recipes.comparisons`) are described in docs/rl.md.

β is measured in units of ``q_scale``: the mean over data states (a fixed random 2,048 of them) of
the standard deviation of Q(s, a) over uniformly random actions, so that β = 1 tilts μ by e per
typical Q spread. The critic's state-only baseline b(s) (IQL: V(s); CQL: Q(s, π(s))) changes
neither the target policy nor the guidance gradient; it removes the between-state spread of Q
from the regression targets.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

try:  # the [rl] extra
    import gymnasium  # noqa: F401  # recipes/inputs.py's; checked here to name the extra
    import minari  # noqa: F401  # recipes/data.py's
    import tyro  # noqa: F401  # recipes/config.py's
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
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from torch import Tensor
from torch.optim.lr_scheduler import CosineAnnealingLR

from energy_guidance import IntermediateEnergyNet, distributed
from energy_guidance.adapters import Critic, critic_energy, reduce_critic
from energy_guidance.amortized import calibrate, closed_form_batches, regression_loss
from energy_guidance.callables import Energy
from energy_guidance.classifier import classifier_batch_loss, classifier_batches
from energy_guidance.training import History, gradient_step, train
from energy_guidance.variance import VarianceTable, estimate_variance_table

from . import cli
from .behaviour import NoiseMLP, diffusion_loss, sampling_scheduler, training_scheduler
from .comparisons import frozen, new_critic, reading_observations, train_cql, train_qgpo
from .config import (
    AEPOConfig,
    critic_settings,
    evaluation_key,
    parse_args,
    resolve_device,
    split_settings,
    training_defaults,
    validate,
)
from .data import check_dataset
from .evaluation import evaluate, normalized_score
from .inputs import Inputs, Normalizer, load_inputs
from .plots import learning_curves
from .policies import Policies, label
from .runfolder import ConfigMismatch, RunFolder, RunFolderBusy, Settings
from .seeds import Seeds, batch_generator, generator
from .trainers import RecipeCritic
from .transitions import Transitions

Phase = Callable[..., History]  # phase(name, update, steps, **state): train() in the run folder


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
                folder.adopt(**settings, defaults=training_defaults(config))
            distributed.barrier()
            return _run(config, folder, inputs, settings, started)


def _run(
    config: AEPOConfig,
    folder: RunFolder,
    inputs: Inputs,
    settings: dict[str, Settings],
    started: float,
) -> dict | None:
    """The phases, in order, on the device of ``inputs.data``; every generator stays on the CPU
    (its draws are moved), so a run draws the same random numbers on any device."""
    data = inputs.data
    phase: Phase = functools.partial(
        _phase, folder=folder, checkpoint_every=config.checkpoint_every, progress=config.progress
    )
    seeds = Seeds.of(config.seed)  # every random stream of the run (recipes/seeds.py)
    train_sched = training_scheduler(config.behaviour)  # the behaviour model's noise schedule
    # 1-2. The critic and the behaviour policy.
    critic, critic_history = train_critic(config, seeds, phase, data, inputs.normalizer)
    model, behaviour_history = train_behaviour(config, seeds, phase, data, train_sched)
    # 3. The posterior-variance table of the behaviour model.
    table = variance_table(config, seeds, folder, data, model, train_sched)
    # 4. The intermediate-energy network, on the energy measured in units of q_scale.
    q_scale = measure_q_scale(critic, data.observations, data.act_dim, config.reduce)  # deterministic
    energy = critic_energy(critic.q_values, config.reduce, q_scale, critic.baseline)
    network, energy_history = train_energy(config, seeds, phase, data, model, train_sched, energy, table)
    # What --compare trains (once).
    scheduler = sampling_scheduler(config.behaviour, train_sched)
    qgpo_network = cql_critic = None
    if "qgpo" in config.compare:
        qgpo_network = train_qgpo(config, seeds, folder, data, model, train_sched, scheduler, energy)
    if "cql" in config.compare and config.critic != "cql":
        cql_critic = train_cql(config, seeds, phase, data, inputs.normalizer)
    if not distributed.is_main():
        return None
    # 5. Evaluation (rank 0), cached per evaluation settings.
    samples = torch.Generator()  # the policies' samples, seeded before each policy's evaluation
    policies = Policies(
        config,
        critic,
        model,
        scheduler,
        network,
        energy,
        inputs.normalizer,
        inputs.scaler,
        data.act_dim,
        samples,
        qgpo_network,
        cql_critic,
        table,
    )
    scores, eval_seconds = evaluate_policies(config, seeds, folder, inputs, policies, settings["evaluation"])
    # The report: results.json and learning_curves.png.
    phases = {name: folder.phase_seconds(name) for name in ("critic", "behaviour")}
    phases["variance"] = folder.step_seconds("variance")
    phases["energy"] = folder.phase_seconds("energy")
    if qgpo_network is not None:
        phases["qgpo_support"] = folder.step_seconds("qgpo_support")
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


def finished_run(config: AEPOConfig) -> RunFolder:
    """The folder of ``config``'s finished run (``config.run_dir``), for a benchmark that reads its
    phases without training them: SystemExit with a one-line error where it holds no
    ``results.json`` or was made with other training settings (its phases would be trained again)."""
    folder = RunFolder(config.run_dir)
    if not (folder.path / "results.json").exists():
        raise SystemExit(f"error: {folder.path} holds no finished AEPO run (results.json)")
    differ = folder.differing_training(split_settings(config)["training"], training_defaults(config))
    if differ:
        raise SystemExit(
            f"error: {folder.path} was made with other training settings ({differ}): "
            "pass the run's own options after --"
        )
    return folder


def _phase(
    name: str,
    update: Callable[[int], dict[str, float]],
    steps: int,
    *,
    folder: RunFolder,
    checkpoint_every: int,
    progress: bool,
    **state: Any,
) -> History:
    """One training phase through :func:`energy_guidance.training.train`, checkpointed in ``folder``."""
    return train(
        update,
        steps,
        checkpoint_dir=folder.checkpoints,
        name=name,
        checkpoint_every=checkpoint_every,
        progress=progress,
        **state,
    )


def train_critic(
    config: AEPOConfig, seeds: Seeds, phase: Phase, data: Transitions, normalizer: Normalizer
) -> tuple[RecipeCritic, History]:
    """Phase 1: the critic ``CRITICS[config.critic]`` on the data's transitions (frozen after),
    reading raw observations (``normalizer.inverse`` of the data's states) unless
    ``config.critic_observations`` is "standardised"."""
    device = data.observations.device
    batch = distributed.local_batch_size(config.batch_size)  # per process; the whole batch on one
    torch.manual_seed(seeds.critic)
    settings = critic_settings(config)
    module = new_critic(config.critic, data.obs_dim, data.act_dim, settings, device)
    critic = reading_observations(module, config, normalizer)
    g = batch_generator(seeds.critic_batches)
    history = phase(
        "critic",
        lambda step: critic.update(data.sample(batch, g), g),
        config.critic_steps,
        modules={"critic": module},
        optimizers=critic.optimizers,
        generator=g,
    )
    return frozen(critic), history


def train_behaviour(
    config: AEPOConfig, seeds: Seeds, phase: Phase, data: Transitions, train_sched: DDPMScheduler
) -> tuple[NoiseMLP, History]:
    """Phase 2: the behaviour policy ε_θ(a_t, t, s), a diffusion model of the data's actions given
    the states (frozen after)."""
    b = config.behaviour
    batch = distributed.local_batch_size(config.batch_size)
    torch.manual_seed(seeds.behaviour)
    model = NoiseMLP(data.act_dim, data.obs_dim, b.hidden, b.depth, b.time_dim).to(data.observations.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=b.lr)
    g = batch_generator(seeds.behaviour_batches)

    def update(step: int) -> dict[str, float]:
        drawn = data.sample(batch, g)
        loss = diffusion_loss(model, train_sched, drawn.actions, drawn.observations, g)
        return {"diffusion_loss": gradient_step(optimizer, loss)}

    history = phase(
        "behaviour",
        update,
        config.behaviour_steps,
        modules={"model": model},
        optimizers={"model": optimizer},
        generator=g,
    )
    return model.eval().requires_grad_(False), history


def variance_table(
    config: AEPOConfig,
    seeds: Seeds,
    folder: RunFolder,
    data: Transitions,
    model: NoiseMLP,
    train_sched: DDPMScheduler,
) -> VarianceTable:
    """Phase 3: the posterior-variance table of ``model`` on ``variance_samples`` data pairs, built
    once by rank 0 and kept in the run folder."""
    path = folder.path / "variance_table.safetensors"
    with distributed.main_first():
        if distributed.is_main() and (folder.finished("variance") is None or not path.exists()):
            t0 = time.perf_counter()
            g = generator(seeds.variance)
            subset = torch.randperm(len(data), generator=g)[: config.variance_samples]
            subset = subset.to(data.observations.device)
            table = estimate_variance_table(
                train_sched,
                model,
                data.actions[subset],
                data.observations[subset],
                generator=g,
            )
            table.save(str(path))
            folder.finish("variance", seconds=time.perf_counter() - t0)
    return VarianceTable.load(str(path))  # a damaged file raises an error naming it


def train_energy(
    config: AEPOConfig,
    seeds: Seeds,
    phase: Phase,
    data: Transitions,
    model: NoiseMLP,
    train_sched: DDPMScheduler,
    energy: Energy,
    table: VarianceTable,
) -> tuple[IntermediateEnergyNet, History]:
    """Phase 4: the intermediate-energy network E_Θ(s, a_t, t), regressed on the closed-form targets
    at x̄ = the data action (``energy_loss="closed_form"``) or trained as a classifier of
    advantage-weighted data actions against the data (``"classifier"``); frozen after."""
    batch = distributed.local_batch_size(config.batch_size)
    torch.manual_seed(seeds.energy)
    network = IntermediateEnergyNet(data.act_dim, data.obs_dim, hidden=config.energy_hidden, beta=config.beta)
    network = network.to(data.observations.device)
    g = batch_generator(seeds.energy_batches)
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
        fixed = generator(seeds.energy_calibration)
        calibrate(network, targets(batch_size=config.batch_size, generator=fixed))
        draw_targets = targets(batch_size=batch, generator=g)

        def energy_loss() -> Tensor:
            return regression_loss(network, draw_targets())

    optimizer = torch.optim.Adam(network.parameters(), lr=config.energy_lr)
    schedule = CosineAnnealingLR(optimizer, T_max=max(config.energy_steps, 1))
    history = phase(
        "energy",
        lambda step: {"energy_loss": gradient_step(optimizer, energy_loss())},
        config.energy_steps,
        modules={"network": network},
        optimizers={"network": optimizer},
        lr_schedulers={"network": schedule},
        generator=g,
    )
    return network.eval().requires_grad_(False), history


@torch.no_grad()
def measure_q_scale(
    critic: Critic,
    states: Tensor,
    act_dim: int,
    reduce: str,
    num_actions: int = 64,
    max_states: int = 2048,
) -> float:
    """mean_s std_{a ~ U[-1,1]^d} Q(s, a): the typical spread of Q over actions at one state, the
    unit of β (module docstring).

    The mean is over a fixed random subset of at most ``max_states`` of ``states`` (the same on
    every run and process): data sets are stored episode by episode, and their first states can be
    untypical (a replay set's first episodes are near-random; what that did to q_scale on
    HalfCheetah medium-replay: docs/benchmarks.md).
    """
    g = torch.Generator().manual_seed(0)
    if len(states) > max_states:
        states = states[torch.randperm(len(states), generator=g)[:max_states].to(states.device)]
    s = states.repeat_interleave(num_actions, dim=0)
    a = (torch.rand((len(s), act_dim), generator=g) * 2 - 1).to(s)
    q = reduce_critic(critic.q_values(s, a), len(s), reduce).reshape(len(states), num_actions)
    return max(float(q.std(dim=1).mean()), 1e-6)


def evaluate_policies(
    config: AEPOConfig,
    seeds: Seeds,
    folder: RunFolder,
    inputs: Inputs,
    policies: Policies,
    evaluation: Settings,
) -> tuple[dict[str, dict], dict[str, float]]:
    """Phase 5: each policy's returns over ``eval_episodes`` episodes (and normalised scores), cached
    in the run folder per evaluation settings; (scores, seconds per policy)."""
    key = evaluation_key(evaluation)
    scores, seconds = {}, {}
    for name, policy in policies.evaluated().items():
        record = folder.evaluation(key, name)
        if record is None:
            t0 = time.perf_counter()
            # the same seed before each policy: its samples do not depend on which others ran
            policies.generator.manual_seed(seeds.evaluation)
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
        seconds[f"eval_{name}"] = record["seconds"]
    return scores, seconds


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
