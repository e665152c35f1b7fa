"""AEPO for offline RL, end to end: ``python -m recipes.aepo --help``.

Phases (each checkpointed; a finished phase is never redone, see :mod:`recipes.checkpoint`):

1. critic     IQL (default) or CQL on the data set's transitions (:mod:`adapters`)
2. behaviour  ε_θ(a_t, t, s), the diffusion behaviour policy μ(a | s) (:mod:`recipes.behaviour`)
3. variance   the posterior-variance table of ε_θ on the data's actions (``estimate_variance_table``)
4. energy     the intermediate-energy network E_Θ(s, a_t, t), regressed on the closed form at the
              expansion point x̄ = the clean data action (``closed_form_batches``), with the
              energy E(a | s) = −(min_i Q_i(s, a) − b(s)) / q_scale
5. eval       episodes in the data set's environment for each policy, normalised scores

Guided sampling draws a ~ μ(a | s)·exp(−β·E(a | s)) with the amortised guidance and DPM-Solver++
(15 steps); AEPO's guidance rescale is available (``--rescale``) but off by default, see
docs/rl.md. Action selection: AEPO draws ``num_candidates`` guided actions per state and takes the
one with the highest Q (min over the twin heads). The paper's text was not available to us; this
is the selection rule of the methods it builds on and compares with (SfBC, QGPO, IDQL).
``num_candidates = 1`` gives plain guided sampling (reported as an ablation).

β is measured in units of ``q_scale``: the mean over data states of the standard deviation of
Q(s, a) over uniformly random actions, so that β = 1 tilts μ by e per typical Q spread. The
state-only baseline b(s) (IQL: V(s); CQL: Q(s, π(s))) changes neither the target policy nor
the guidance gradient; it removes the between-state spread of Q from the regression targets.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from adapters import (
    CQL,
    IQL,
    REDUCTIONS,
    CQLConfig,
    IQLConfig,
    Transitions,
    critic_energy,
    reduce_critic,
)
from adapters.networks import optimizer_step
from energy_guidance import (
    VARIANCE_METHODS,
    AnalyticEnergyGuidance,
    IntermediateEnergyNet,
    VarianceTable,
    calibrate,
    closed_form_batches,
    cosine_learning_rate,
    estimate_variance_table,
    regression_loss,
    sample,
)

from .behaviour import (
    SAMPLERS,
    BehaviourConfig,
    NoiseMLP,
    clip_x0,
    diffusion_loss,
    sampling_scheduler,
    training_scheduler,
)
from .checkpoint import RunDir, train_phase, write_json
from .cli import parse_config
from .data import (
    DEFAULT_DATASET,
    ActionScaler,
    load_dataset,
    load_transitions,
    normalized_score,
    reference_scores,
)
from .evaluation import evaluate

CRITICS = ("iql", "cql")
# Fields that do not change what a run computes; they may differ when a run is resumed.
RUNTIME_FIELDS = ("run_dir", "threads", "progress")


@dataclass
class AEPOConfig:
    dataset: str = DEFAULT_DATASET  # a Minari id present under MINARI_DATASETS_PATH
    env: str = ""  # evaluation environment id; "" = the data set's own (recover_environment)
    run_dir: str = "runs/aepo"  # checkpoints, config.json, results.json, learning_curves.png
    seed: int = 0  # seeds the networks, batches and samples (not the data set)
    threads: int = 1  # torch.set_num_threads; 1 is robust when other jobs share the 2 cores
    progress: bool = True  # tqdm progress bars
    batch_size: int = 256  # for the critic, the behaviour policy and the energy network
    checkpoint_every: int = 1000  # steps between periodic checkpoints of a training phase
    # 1. critic
    critic: str = "iql"  # "iql" or "cql"
    critic_steps: int = 10_000  # gradient steps of the critic (and its own policy)
    iql: IQLConfig = field(default_factory=IQLConfig)
    cql: CQLConfig = field(default_factory=CQLConfig)
    reduce: str = "min"  # over the twin Q heads, in the energy and the candidate selection
    # 2. behaviour policy
    behaviour_steps: int = 10_000  # gradient steps of the noise model
    behaviour: BehaviourConfig = field(default_factory=BehaviourConfig)
    inference_steps: int = 15  # sampler steps per action
    # 3-4. guidance
    beta: float = 3.0  # inverse temperature, in units of q_scale (module docstring)
    variance: str = "data_var"  # posterior-variance estimator of the closed-form targets
    expansion: str = "data"  # expansion point x̄ of the targets: "data" (x0) or "posterior_mean" (x̂0)
    variance_samples: int = 4096  # data points (random subset) for the variance table
    energy_steps: int = 10_000  # gradient steps of the intermediate-energy network
    energy_hidden: int = 256  # its width
    energy_lr: float = 1e-3  # its Adam learning rate, decayed to 0 on a cosine
    rescale: bool = False  # AEPO's guidance rescale; off: for 1-D actions it is a sign flip (docs/rl.md)
    guidance_scale: float = 1.0  # multiplies the guidance term; 1 is the exact target
    # 5. evaluation
    num_candidates: int = 16  # guided actions per state; the best by Q is taken
    eval_episodes: int = 10
    eval_seed: int = 10_000  # episode i is reset with eval_seed + i
    ablations: bool = True  # also evaluate guided/1 candidate and unguided/best-of-N by Q


# ---------------------------------------------------------------------------------------------
# Configuration <-> JSON and the command line


def parse_args(argv: list[str] | None = None) -> AEPOConfig:
    return parse_config(
        AEPOConfig,
        argv,
        prog="python -m recipes.aepo",
        description="AEPO (analytic energy-guided policy optimisation) on a Minari data set.",
    )


def validate(config: AEPOConfig) -> None:
    choices = {
        "critic": (config.critic, CRITICS),
        "reduce": (config.reduce, REDUCTIONS),
        "variance": (config.variance, VARIANCE_METHODS),
        "expansion": (config.expansion, ("data", "posterior_mean")),
        "behaviour.sampler": (config.behaviour.sampler, tuple(SAMPLERS)),
    }
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    if config.num_candidates < 1 or config.eval_episodes < 1:
        raise ValueError("num_candidates and eval_episodes must be >= 1")
    if config.beta < 0:
        raise ValueError(f"beta must be >= 0, got {config.beta}")


def _check_resumable(run: RunDir, config: AEPOConfig) -> None:
    """Save ``config.json``, or check that a resumed run was started with the same configuration."""
    path = run.path / "config.json"
    current = asdict(config)
    if path.exists():
        saved = json.loads(path.read_text())
        differ = [
            k
            for k in sorted(set(saved) | set(current))
            if k not in RUNTIME_FIELDS and saved.get(k) != current.get(k)
        ]
        if differ:
            raise ValueError(
                f"{run.path} holds a run with a different configuration (fields {differ}); "
                "resume it with the same settings or choose another --run-dir"
            )
    write_json(path, current)


# ---------------------------------------------------------------------------------------------
# The recipe


@dataclass
class Normalizer:
    """Observation standardisation measured on the data set."""

    mean: Tensor
    std: Tensor

    def __call__(self, obs) -> Tensor:
        return (torch.as_tensor(np.asarray(obs), dtype=torch.float32) - self.mean) / self.std


def make_critic(config: AEPOConfig, obs_dim: int, act_dim: int) -> IQL | CQL:
    if config.critic == "iql":
        return IQL(obs_dim, act_dim, config.iql)
    return CQL(obs_dim, act_dim, config.cql)


@torch.no_grad()
def measure_q_scale(
    critic: IQL | CQL, states: Tensor, act_dim: int, reduce: str, num_actions: int = 64
) -> float:
    """mean_s std_{a ~ U[-1,1]^d} Q(s, a): the typical spread of Q over actions at one state."""
    g = torch.Generator().manual_seed(0)
    s = states.repeat_interleave(num_actions, dim=0)
    a = torch.rand((len(s), act_dim), generator=g) * 2 - 1
    q = reduce_critic(critic.q_target(s, a), len(s), reduce).reshape(len(states), num_actions)
    return max(float(q.std(dim=1).mean()), 1e-6)


def state_baseline(critic: IQL | CQL, reduce: str):
    """b(s) for the energy: IQL's V(s); for CQL, Q at its actor's action, reduce_K Q_K(s, π(s))."""
    if isinstance(critic, IQL):
        return critic.v

    def baseline(states: Tensor) -> Tensor:
        return reduce_critic(critic.q_target(states, critic.actor.act(states)), len(states), reduce)

    return baseline


class Policies:
    """The evaluated policies, all mapping raw observations (B, k) to environment actions (B, d).

    Every diffusion policy draws ``candidates`` actions per state (guided or not) with the
    sampling scheduler; with several candidates the one with the highest Q is taken.
    """

    def __init__(self, config, critic, model, scheduler, network, normalizer, scaler, act_dim, generator):
        self.config, self.critic, self.scheduler = config, critic, scheduler
        self.normalizer, self.scaler = normalizer, scaler
        self.act_dim, self.generator = act_dim, generator
        wrap = (lambda f: clip_x0(f, scheduler)) if config.behaviour.clip_sample else (lambda f: f)
        self.unguided = wrap(lambda x, t, c: model(x, t, c))
        self.guided = {}  # keyed by rescale on/off
        for rescale in (True, False):
            guidance = AnalyticEnergyGuidance(
                scheduler,
                model,
                None,
                config.beta,
                rescale=rescale,
                network=network,
                scale=config.guidance_scale,
            )
            self.guided[rescale] = wrap(lambda x, t, c, g=guidance: g.guided_model_output(x, t, c))

    def diffusion(
        self, obs: np.ndarray, guided: bool, candidates: int, rescale: bool | None = None
    ) -> np.ndarray:
        model_fn = (
            self.guided[self.config.rescale if rescale is None else rescale] if guided else self.unguided
        )
        states = self.normalizer(obs).repeat_interleave(candidates, dim=0)
        with torch.no_grad():
            actions = sample(
                self.scheduler,
                model_fn,
                (len(states), self.act_dim),
                cond=states,
                num_inference_steps=self.config.inference_steps,
                generator=self.generator,
            ).clamp(-1, 1)
            if candidates > 1:
                q = reduce_critic(self.critic.q_target(states, actions), len(states), self.config.reduce)
                best = q.reshape(len(obs), candidates).argmax(dim=1)
                actions = actions.reshape(len(obs), candidates, -1)[torch.arange(len(obs)), best]
        return self.scaler.from_unit(actions.double().numpy())

    def critic_policy(self, obs: np.ndarray) -> np.ndarray:
        return self.scaler.from_unit(self.critic.act(self.normalizer(obs)).double().numpy())

    def evaluated(self) -> dict:
        """name -> policy: AEPO, the behaviour policy, the critic's own policy, and the ablations."""
        n, rescale = self.config.num_candidates, self.config.rescale
        policies = {
            "aepo": lambda o: self.diffusion(o, True, n),
            "behaviour": lambda o: self.diffusion(o, False, 1),
            ("iql_awr" if self.config.critic == "iql" else "cql_actor"): self.critic_policy,
        }
        if self.config.ablations:
            policies |= {
                "guided_single": lambda o: self.diffusion(o, True, 1),
                f"guided_single_rescale_{'off' if rescale else 'on'}": lambda o: self.diffusion(
                    o, True, 1, not rescale
                ),
                "unguided_best_of_n": lambda o: self.diffusion(o, False, n),
            }
        return policies


def run(config: AEPOConfig) -> dict:
    """Run (or resume) AEPO with ``config``; returns the results written to ``results.json``."""
    validate(config)
    started = time.perf_counter()
    torch.set_num_threads(config.threads)
    run_dir = RunDir(config.run_dir)
    _check_resumable(run_dir, config)

    dataset = load_dataset(config.dataset)

    def make_env() -> gym.Env:
        return gym.make(config.env) if config.env else dataset.recover_environment()

    env = make_env()
    data = load_transitions(dataset, env)  # checks shapes against env and finiteness
    refs = reference_scores(dataset)
    scaler = ActionScaler.from_space(env.action_space)
    normalizer = Normalizer(data.observations.mean(0), data.observations.std(0).clamp_min(1e-3))
    data = Transitions(
        normalizer(data.observations),
        data.actions,
        data.rewards,
        normalizer(data.next_observations),
        data.terminals,
    )
    obs_dim, act_dim = data.obs_dim, data.act_dim
    progress = config.progress

    # 1. Critic.
    torch.manual_seed(config.seed)
    critic = make_critic(config, obs_dim, act_dim)
    g = torch.Generator().manual_seed(config.seed)
    phase = partial(train_phase, run_dir, checkpoint_every=config.checkpoint_every, progress=progress)
    critic_history = phase(
        "critic",
        lambda step: critic.update(data.sample(config.batch_size, g), g),
        steps=config.critic_steps,
        modules={"critic": critic},
        optimizers=critic.optimizers,
        generator=g,
    )

    # 2. Behaviour policy.
    torch.manual_seed(config.seed + 1)
    model = NoiseMLP(
        act_dim, obs_dim, config.behaviour.hidden, config.behaviour.depth, config.behaviour.time_dim
    )
    train_sched = training_scheduler(config.behaviour)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.behaviour.lr)
    g = torch.Generator().manual_seed(config.seed + 1)

    def behaviour_update(step: int) -> dict[str, float]:
        batch = data.sample(config.batch_size, g)
        loss = diffusion_loss(model, train_sched, batch.actions, batch.observations, g)
        optimizer_step(optimizer, loss)
        return {"diffusion_loss": loss.item()}

    behaviour_history = phase(
        "behaviour",
        behaviour_update,
        steps=config.behaviour_steps,
        modules={"model": model},
        optimizers={"model": optimizer},
        generator=g,
    )
    model.eval().requires_grad_(False)
    critic.eval().requires_grad_(False)

    # 3. Posterior-variance table.
    table_path = run_dir.path / "variance_table.safetensors"
    if not run_dir.done("variance"):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(config.seed + 2)
        subset = torch.randperm(len(data), generator=g)[: config.variance_samples]
        table = estimate_variance_table(
            train_sched, model, data.actions[subset], data.observations[subset], generator=g
        )
        table.save(str(table_path))
        run_dir.finish("variance", seconds=time.perf_counter() - t0)
    table = VarianceTable.load(str(table_path))

    # 4. Intermediate-energy network on closed-form targets (x̄ = the data action).
    torch.manual_seed(config.seed + 3)
    network = IntermediateEnergyNet(act_dim, obs_dim, hidden=config.energy_hidden, beta=config.beta)
    q_scale = measure_q_scale(critic, data.observations[:2048], act_dim, config.reduce)  # deterministic
    energy = critic_energy(critic.q_target, config.reduce, q_scale, state_baseline(critic, config.reduce))
    g = torch.Generator().manual_seed(config.seed + 3)
    draw = closed_form_batches(
        train_sched,
        model,
        energy,
        data.actions,
        data.observations,
        beta=config.beta,
        variance=config.variance,
        variance_table=table,
        expansion=config.expansion,
        batch_size=config.batch_size,
        generator=g,
    )
    if not run_dir.done("energy"):
        calibrate(network, draw)  # buffers; a resumed run overwrites them from its checkpoint
    optimizer = torch.optim.Adam(network.parameters(), lr=config.energy_lr)

    def energy_update(step: int) -> dict[str, float]:
        for group in optimizer.param_groups:
            group["lr"] = cosine_learning_rate(step, config.energy_steps, config.energy_lr)
        loss = regression_loss(network, draw())
        optimizer_step(optimizer, loss)
        return {"energy_loss": loss.item()}

    energy_history = phase(
        "energy",
        energy_update,
        steps=config.energy_steps,
        modules={"network": network},
        optimizers={"network": optimizer},
        generator=g,
    )
    network.eval().requires_grad_(False)

    # 5. Evaluation.
    scheduler = sampling_scheduler(config.behaviour, train_sched)
    generator = torch.Generator().manual_seed(config.seed + 4)
    policies = Policies(config, critic, model, scheduler, network, normalizer, scaler, act_dim, generator)
    scores = {}
    for name, policy in policies.evaluated().items():
        phase = f"eval_{name}"
        if not run_dir.done(phase):
            t0 = time.perf_counter()
            generator.manual_seed(config.seed + 4)  # each policy's samples independent of the others
            returns = evaluate(
                policy, make_env, config.eval_episodes, config.eval_seed, desc=name, progress=progress
            )
            run_dir.finish(phase, seconds=time.perf_counter() - t0, returns=returns.tolist())
        returns = np.asarray(run_dir.info(phase)["returns"])
        entry = {
            "return_mean": float(returns.mean()),
            "return_std": float(returns.std()),
            "returns": returns.tolist(),
        }
        if refs is not None:
            norm = normalized_score(returns, *refs)
            entry |= {"score_mean": float(norm.mean()), "score_std": float(norm.std())}
        scores[name] = entry

    phases = {name: info.get("seconds") for name, info in run_dir.state["phases"].items()}
    results = {
        "dataset": config.dataset,
        "env": env.spec.id if env.spec else str(env),
        "reference_scores": None if refs is None else {"random": refs[0], "expert": refs[1]},
        "q_scale": q_scale,
        "scores": scores,
        "phase_seconds": phases,
        "this_invocation_seconds": time.perf_counter() - started,
        "config": asdict(config),
    }
    write_json(run_dir.path / "results.json", results)
    plot_learning_curves(
        run_dir.path / "learning_curves.png",
        {"critic": critic_history, "behaviour": behaviour_history, "energy": energy_history},
        scores,
    )
    return results


def plot_learning_curves(path: Path, histories: dict[str, dict], scores: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(histories) + 1, figsize=(4.2 * (len(histories) + 1), 3.4))
    for ax, (phase, history) in zip(axes, histories.items(), strict=False):
        for key, values in history.items():
            if key != "step" and len(values) == len(history["step"]):
                ax.plot(history["step"], values, label=key)
        if all(v > 0 for k, vs in history.items() if k != "step" for v in vs):
            ax.set_yscale("log")
        ax.set(title=phase, xlabel="step")
        ax.legend(fontsize=7)
    ax = axes[-1]
    names = list(scores)
    key = "score" if all("score_mean" in s for s in scores.values()) else "return"
    ax.bar(names, [scores[n][f"{key}_mean"] for n in names], yerr=[scores[n][f"{key}_std"] for n in names])
    ax.set(title="normalised score" if key == "score" else "return")
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


LABELS = {
    "aepo": "AEPO (guided, best of N by Q)",
    "behaviour": "behaviour policy (unguided diffusion)",
    "iql_awr": "IQL policy (AWR)",
    "cql_actor": "CQL policy (SAC actor)",
    "guided_single": "ablation: guided, 1 sample",
    "guided_single_rescale_on": "ablation: guided, 1 sample, rescale on",
    "guided_single_rescale_off": "ablation: guided, 1 sample, rescale off",
    "unguided_best_of_n": "ablation: unguided, best of N by Q",
}


def format_scores(results: dict) -> str:
    lines = [f"{results['dataset']} in {results['env']}, {results['config']['eval_episodes']} episodes each:"]
    for name, entry in results["scores"].items():
        label = LABELS.get(name, name)
        if "score_mean" in entry:
            lines.append(
                f"  {label:40s} normalised score {entry['score_mean']:6.1f} ± {entry['score_std']:4.1f}"
                f"   (return {entry['return_mean']:8.1f})"
            )
        else:
            lines.append(f"  {label:40s} return {entry['return_mean']:8.1f} ± {entry['return_std']:.1f}")
    seconds = results["this_invocation_seconds"]
    lines.append(f"run folder: {results['config']['run_dir']}; this invocation {seconds:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    results = run(parse_args(argv))
    print(format_scores(results))


if __name__ == "__main__":
    main()
