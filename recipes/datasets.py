"""D4RL-style MuJoCo locomotion data sets, built locally from stable-baselines3 SAC agents.

    python -m energy_guidance.recipes.datasets build energy-guidance/hopper/medium-v0 [more ids] \
        [--agent.medium-steps ...]
    python -m energy_guidance.recipes.datasets list   # every id, whether built, where agents are cached
    python -m energy_guidance.recipes.datasets build --help  # the ids (choices) and every budget

Ids ``energy-guidance/<env>/<level>-v0`` with env ``halfcheetah`` (HalfCheetah-v5), ``hopper``
(Hopper-v5) or ``walker2d`` (Walker2d-v5), and level, following D4RL (Fu et al. 2020):

``random``
    ``steps`` transitions of a uniform random policy.
``medium``
    ``steps`` transitions of the *medium* SAC agent, stochastic actions (as D4RL). SAC trains,
    evaluating its stochastic policy every ``eval_every`` steps, until the evaluation reaches
    ``medium_score`` (default 33: a third of D4RL's expert) or ``medium_steps``, whichever comes
    first; the agent at that point is checkpointed as the medium agent.
``medium-replay``
    That agent's replay buffer up to the medium point: every transition SAC collected while
    learning (the first ``learning_starts`` with uniform random actions), split into episodes;
    the episode running at the medium point ends there, marked truncated.
``expert``
    ``steps`` transitions of the *expert* agent, stochastic actions: SAC continued from the medium
    point to ``expert_steps`` in all, the agent with the best evaluation from the medium point on.
``medium-expert``
    The medium and expert data sets' episodes together (``minari.combine_datasets``; both are
    built, and kept, first).

Every data set stores D4RL's reference returns (``d4rl/infos.py``: REF_MIN_SCORE, a uniform random
policy; REF_MAX_SCORE, D4RL's expert) as ``ref_min_score`` / ``ref_max_score``, so normalised
scores are comparable with D4RL's; the metadata also records the behaviour agent's SAC steps and
normalised evaluation score (``agent_steps``, ``agent_score``).

Caching. Agents are cached under ``agents_dir`` (default ``<MINARI_DATASETS_PATH>/../agents``,
i.e. ``~/.minari/agents``) in ``<env>/sac-<hash of the agent settings but expert_steps>/``:
``medium.zip`` (SB3's ``save``), ``medium_replay.npz`` (the replay buffer's used part),
``medium.json``, and for each expert budget ``expert-<steps>.zip`` (the best agent),
``final-<steps>.zip`` and ``expert-<steps>.json``. A JSON file, written last, marks a finished
stage; everything is written to a temporary name and renamed. An interrupted medium stage restarts
from scratch, an interrupted expert stage from the medium checkpoint (its replay buffer restored).
Data sets already present under ``MINARI_DATASETS_PATH`` are loaded, not rebuilt (``--force``
rebuilds); a data set is written into a staging folder beside the storage root and moved into
place in one rename, so a half-written data set is never loadable.

Cost: training the SAC agents dominates a build (one gradient step per environment step), so a
build's time grows with the agents' SAC steps. SAC's speed on this project's machine, the agents'
scores and the measured build times are in docs/benchmarks.md ("MuJoCo data sets built on this
machine"). At these budgets the "expert" stays well short of D4RL's expert (normalised 100, an
agent trained for millions of steps); the score it reached is stored with the data set
(``agent_score``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
import typing
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import minari
import numpy as np
import torch
import tyro
from minari.data_collector import EpisodeBuffer
from tqdm.auto import tqdm

from energy_guidance.checkpoints import atomic_write, write_json
from energy_guidance.progress import progress_bar
from energy_guidance.training import Interrupted, deferred_signals

from . import cli
from .evaluation import normalized_score

NAMESPACE = "energy-guidance"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Locomotion:
    """A gymnasium MuJoCo task and D4RL's reference returns for it (d4rl/infos.py)."""

    env_id: str
    ref_min: float  # REF_MIN_SCORE: mean return of a uniform random policy
    ref_max: float  # REF_MAX_SCORE: mean return of D4RL's expert


ENVS: dict[str, Locomotion] = {
    "halfcheetah": Locomotion("HalfCheetah-v5", -280.178953, 12135.0),
    "hopper": Locomotion("Hopper-v5", -20.272305, 3234.3),
    "walker2d": Locomotion("Walker2d-v5", 1.629008, 4592.3),
}
LEVELS = ("random", "medium", "medium-replay", "medium-expert", "expert")
DATASET_IDS = tuple(f"{NAMESPACE}/{env}/{level}-v0" for env in ENVS for level in LEVELS)
if typing.TYPE_CHECKING:  # the ids are built when the program runs
    DatasetId = str
else:  # the choices listed by --help
    DatasetId = Literal[DATASET_IDS]

# Environment seeds of the collected episodes: one disjoint block per level (and data seed).
_SEED_BLOCK = {"random": 1, "medium": 2, "expert": 3}


@dataclass
class AgentConfig:
    """The SAC behaviour agent: stable-baselines3's defaults unless named here."""

    medium_score: float = 33.0  # normalised evaluation score that makes the agent "medium"
    medium_steps: int = 200_000  # SAC steps allowed to reach it; otherwise the agent at this step
    expert_steps: int = 300_000  # SAC steps in all; the best-evaluated agent is the expert
    eval_every: int = 10_000  # SAC steps between evaluations
    eval_episodes: int = 5  # episodes of the stochastic policy per evaluation
    # Hidden layers of actor and critics: smaller than SB3's default (256, 256), for CPU time
    # (their speeds: docs/benchmarks.md, "MuJoCo data sets built on this machine")
    net_arch: tuple[int, ...] = (64, 64)
    learning_starts: int = 100  # uniform random steps before learning (SB3's default)
    train_freq: int = 1  # environment steps between updates (SB3's default)
    gradient_steps: int = 1  # gradient steps per update (SB3's default)
    seed: int = 0

    def tag(self) -> str:
        """The agent's folder name: a hash of every setting that shapes the medium agent."""
        settings = {k: v for k, v in asdict(self).items() if k != "expert_steps"}
        digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
        return f"sac-{digest}"


def datasets_root() -> Path:
    return Path(os.environ.get("MINARI_DATASETS_PATH", Path.home() / ".minari" / "datasets"))


def agents_root(agents_dir: Path | str | None = None) -> Path:
    """``agents_dir``, or ``<MINARI_DATASETS_PATH>/../agents`` (``~/.minari/agents``)."""
    return Path(agents_dir) if agents_dir is not None else datasets_root().parent / "agents"


def parse_id(dataset_id: str) -> tuple[str, str]:
    """(env, level) of an id ``[namespace/]<env>/<level>-v<k>``, checked against ENVS and LEVELS."""
    match = re.fullmatch(r"(?:[^/]+/)?([^/]+)/([^/]+?)-v\d+", dataset_id)
    if match is None:
        raise ValueError(f"{dataset_id!r} is not of the form [namespace/]<env>/<level>-v<k>")
    return check_env_level(*match.groups())


def check_env_level(env: str, level: str) -> tuple[str, str]:
    if env not in ENVS:
        raise ValueError(f"unknown environment {env!r}; choose one of {', '.join(ENVS)}")
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; choose one of {', '.join(LEVELS)}")
    return env, level


def _sac():
    try:
        from stable_baselines3 import SAC
    except ImportError as error:
        raise ImportError(
            "the behaviour agents need stable-baselines3: pip install 'energy-guidance[mujoco]'"
        ) from error
    return SAC


# ---------------------------------------------------------------------------------------------
# Behaviour agents


def _save_model(model, path: Path) -> None:
    """SB3's ``model.save`` (a zip file), written atomically."""
    buffer = io.BytesIO()
    model.save(buffer)
    atomic_write(path, buffer.getvalue())


def _save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)  # numeric arrays only
    atomic_write(path, buffer.getvalue())


def evaluate(model, env: str, episodes: int, seed: int) -> tuple[float, float]:
    """(mean return, normalised score) of ``episodes`` episodes of the stochastic policy."""
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    eval_env = Monitor(gym.make(ENVS[env].env_id))
    eval_env.reset(seed=seed)
    returns, _ = evaluate_policy(
        model, eval_env, n_eval_episodes=episodes, deterministic=False, return_episode_rewards=True
    )
    eval_env.close()
    mean = float(np.mean(returns))
    return mean, float(normalized_score(mean, ENVS[env].ref_min, ENVS[env].ref_max))


def _progress_callback(bar: tqdm):
    from stable_baselines3.common.callbacks import BaseCallback

    class Progress(BaseCallback):
        def _on_step(self) -> bool:
            bar.update(1)
            return True

    return Progress()


def _replay_arrays(model) -> dict[str, np.ndarray]:
    """The used part of a single-environment SB3 replay buffer (actions as stored: in [-1, 1])."""
    buffer = model.replay_buffer
    if buffer.full:
        raise RuntimeError("the replay buffer wrapped around before the medium point; raise buffer_size")
    n = buffer.pos
    names = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
    return {name: np.array(getattr(buffer, name)[:n, 0]) for name in names}


def _restore_replay(model, arrays: dict[str, np.ndarray]) -> None:
    """Refill a freshly loaded agent's replay buffer through SB3's own ``ReplayBuffer.add``."""
    for i in range(len(arrays["rewards"])):
        model.replay_buffer.add(
            arrays["observations"][i][None],
            arrays["next_observations"][i][None],
            arrays["actions"][i][None],
            arrays["rewards"][i][None],
            arrays["dones"][i][None],
            [{"TimeLimit.truncated": bool(arrays["timeouts"][i])}],
        )


def train_agent(
    env: str,
    config: AgentConfig | None = None,
    agents_dir: Path | str | None = None,
    *,
    until: Literal["medium", "expert"] = "expert",
    progress: bool = True,
) -> Path:
    """Train the SAC behaviour agent of ``env`` up to ``until`` (or find it cached); its folder.

    The medium stage trains from scratch until the evaluation reaches ``medium_score`` or
    ``medium_steps`` steps have run, and saves ``medium.zip``, ``medium_replay.npz`` and
    ``medium.json``; the expert stage continues (in the same process, or from the medium
    checkpoint with its replay buffer restored) to ``expert_steps`` and saves the best-evaluated
    agent as ``expert-<expert_steps>.zip`` with ``expert-<expert_steps>.json``.
    """
    config = config or AgentConfig()
    check_env_level(env, "medium")
    folder = agents_root(agents_dir) / env / config.tag()
    medium_json, expert_json = folder / "medium.json", folder / f"expert-{config.expert_steps}.json"
    if medium_json.exists() and (until == "medium" or expert_json.exists()):
        return folder
    SAC = _sac()
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", {"env": ENVS[env].env_id, **asdict(config)})
    train_env = gym.make(ENVS[env].env_id)
    target = config.medium_steps if until == "medium" else max(config.medium_steps, config.expert_steps)
    bar = progress_bar(total=target, desc=f"SAC {env}", unit="step", progress=progress, mininterval=1.0)
    callback = _progress_callback(bar)
    history: list[dict] = []
    eval_seed = 10**7 + config.seed  # evaluation episodes: seeds disjoint from the data's

    def learn_and_evaluate(model, steps: int) -> float:
        model.learn(steps, reset_num_timesteps=False, callback=callback)
        mean, score = evaluate(model, env, config.eval_episodes, eval_seed + len(history))
        history.append({"step": int(model.num_timesteps), "return": mean, "score": score})
        bar.set_postfix(score=f"{score:.1f}")
        return score

    start = time.perf_counter()
    if medium_json.exists():
        model = SAC.load(folder / "medium.zip", env=train_env, device="cpu")
        _restore_replay(model, dict(np.load(folder / "medium_replay.npz")))
        medium = json.loads(medium_json.read_text())
        history = list(medium["history"])
        bar.update(model.num_timesteps)
    else:
        model = SAC(
            "MlpPolicy",
            train_env,
            learning_starts=config.learning_starts,
            train_freq=config.train_freq,
            gradient_steps=config.gradient_steps,
            policy_kwargs={"net_arch": list(config.net_arch)},
            seed=config.seed,
            device="cpu",
            verbose=0,
        )
        score = -np.inf
        while model.num_timesteps < config.medium_steps and score < config.medium_score:
            steps = min(config.eval_every, config.medium_steps - model.num_timesteps)
            score = learn_and_evaluate(model, steps)
        _save_model(model, folder / "medium.zip")
        _save_arrays(folder / "medium_replay.npz", _replay_arrays(model))
        medium = {
            "steps": int(model.num_timesteps),
            "return": history[-1]["return"],
            "score": history[-1]["score"],
            "reached": bool(score >= config.medium_score),
            "seconds": time.perf_counter() - start,
            "history": history,
        }
        write_json(medium_json, medium)
        if not medium["reached"]:
            logger.warning(
                "SAC on %s reached normalised score %.1f < medium_score %s in %d steps; that agent "
                "is the medium one",
                env,
                score,
                config.medium_score,
                config.medium_steps,
            )
    if until == "expert":
        best = {k: medium[k] for k in ("steps", "return", "score")}
        _save_model(model, folder / f"expert-{config.expert_steps}.zip")
        while model.num_timesteps < config.expert_steps:
            steps = min(config.eval_every, config.expert_steps - model.num_timesteps)
            learn_and_evaluate(model, steps)
            if history[-1]["score"] > best["score"]:
                best = {k: history[-1][k] for k in ("return", "score")} | {"steps": history[-1]["step"]}
                _save_model(model, folder / f"expert-{config.expert_steps}.zip")
        _save_model(model, folder / f"final-{config.expert_steps}.zip")
        write_json(
            expert_json,
            best
            | {"final_steps": int(model.num_timesteps), "history": history}
            | {"seconds_after_medium": time.perf_counter() - start},
        )
    bar.close()
    train_env.close()
    return folder


# ---------------------------------------------------------------------------------------------
# Episodes


def rollout(
    env: str,
    act: Callable[[np.ndarray], np.ndarray],
    steps: int,
    seed: int,
    *,
    desc: str = "",
    progress: bool = True,
) -> tuple[list[EpisodeBuffer], np.ndarray]:
    """Episodes of ``act`` totalling exactly ``steps`` transitions (the last one truncated there);
    also the returns of the episodes that ended on their own (terminated or the time limit)."""
    gym_env = gym.make(ENVS[env].env_id)
    gym_env.action_space.seed(seed)
    buffers: list[EpisodeBuffer] = []
    returns: list[float] = []
    total = 0
    with progress_bar(total=steps, desc=desc, unit="step", progress=progress, mininterval=1.0) as bar:
        while total < steps:
            obs, _ = gym_env.reset(seed=seed + len(buffers))
            observations, actions, rewards, terms, truncs = [obs], [], [], [], []
            done = False
            while not done:
                action = np.asarray(act(obs), dtype=gym_env.action_space.dtype)
                obs, reward, terminated, truncated, _ = gym_env.step(action)
                total += 1
                ended = terminated or truncated
                observations.append(obs)
                actions.append(action)
                rewards.append(float(reward))
                terms.append(bool(terminated))
                truncs.append(bool(truncated) or (not ended and total == steps))
                done = terms[-1] or truncs[-1]
            bar.update(len(rewards))
            buffers.append(
                EpisodeBuffer(
                    id=len(buffers),
                    seed=seed + len(buffers),
                    observations=np.stack(observations),
                    actions=np.stack(actions),
                    rewards=rewards,
                    terminations=terms,
                    truncations=truncs,
                )
            )
            if ended:
                returns.append(sum(rewards))
    gym_env.close()
    return buffers, np.asarray(returns)


def replay_episodes(arrays: dict[str, np.ndarray], unscale: Callable[[np.ndarray], np.ndarray]):
    """A replay buffer's transitions (in the order SAC collected them) as EpisodeBuffers.

    An episode ends at each ``done``: terminated unless it was a time-limit ``timeout``. A last
    episode cut off by the end of the buffer is marked truncated. ``unscale`` maps the buffer's
    [-1, 1] actions to the environment's box (SB3's ``policy.unscale_action``).
    """
    dones = arrays["dones"].astype(bool)
    timeouts = arrays["timeouts"].astype(bool)
    ends: list[int] = np.flatnonzero(dones).tolist()
    n = len(dones)
    if not ends or ends[-1] != n - 1:
        ends.append(n - 1)
    buffers, start = [], 0
    for i, end in enumerate(ends):
        sl = slice(start, end + 1)
        truncs = timeouts[sl] | (np.arange(start, end + 1) == n - 1) & ~dones[sl]
        buffers.append(
            EpisodeBuffer(
                id=i,
                observations=np.concatenate(
                    [arrays["observations"][sl], arrays["next_observations"][end][None]]
                ),
                actions=unscale(arrays["actions"][sl]),
                rewards=arrays["rewards"][sl].astype(np.float64).tolist(),
                terminations=(dones[sl] & ~timeouts[sl]).tolist(),
                truncations=truncs.tolist(),
            )
        )
        start = end + 1
    return buffers


# ---------------------------------------------------------------------------------------------
# Writing data sets


def _remove_stale_staging(root: Path) -> None:
    """Remove the staging folders beside ``root`` left by builds that were killed (kill -9, a
    crash): each folder's name carries its process id, and a folder whose process is gone is
    stale. Folders of running builds (this machine's live processes) are kept."""
    for folder in root.parent.glob(f".{root.name}-staging-*-*"):
        pid = folder.name.removeprefix(f".{root.name}-staging-").split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        logger.info("removing %s, the staging folder of a build that did not finish", folder)
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextlib.contextmanager
def _staging(root: Path) -> Iterator[Path]:
    """Point Minari at a fresh folder beside the storage ``root`` for the duration of the block
    (named with this process's id, so that a later build can tell it stale if this one is killed)."""
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(root)
    stage = Path(tempfile.mkdtemp(prefix=f".{root.name}-staging-{os.getpid()}-", dir=root.parent))
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(stage)
    try:
        yield stage
    finally:
        if previous is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous
        shutil.rmtree(stage, ignore_errors=True)


def _write(
    dataset_id: str,
    env: str,
    make: Callable[[], minari.MinariDataset],
    metadata: dict[str, Any],
) -> minari.MinariDataset:
    """``make()`` the data set in a staging folder, add the reference scores and ``metadata``,
    then move it into the storage root in one rename: a half-written set is never loadable."""
    refs = {"ref_min_score": ENVS[env].ref_min, "ref_max_score": ENVS[env].ref_max}
    return stage_dataset(dataset_id, make, {**refs, **metadata})


def stage_dataset(
    dataset_id: str, make: Callable[[], minari.MinariDataset], metadata: dict[str, Any] | None = None
) -> minari.MinariDataset:
    """``make()`` a data set in a staging folder (with ``metadata`` added), then move it into the
    storage root in one rename, replacing one of the same id: an interrupted or killed build never
    leaves a half-written set that loads (kill -9: a hidden staging folder beside the root, which
    the next build removes). SIGINT and SIGTERM wait for the set to be in place (it is written in
    seconds), then stop the program (:class:`~energy_guidance.training.Interrupted`)."""
    root = datasets_root()
    with deferred_signals() as received:
        dataset = _stage(root, dataset_id, make, metadata)
    if received:
        raise Interrupted(received[0])
    return dataset


def _stage(
    root: Path, dataset_id: str, make: Callable[[], minari.MinariDataset], metadata: dict[str, Any] | None
) -> minari.MinariDataset:
    with _staging(root) as stage, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is set to None", category=UserWarning)
        dataset = make()
        if metadata:
            dataset.storage.update_metadata(metadata)
        dest = root / dataset_id
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():  # only with force: the old one goes first
            shutil.rmtree(dest)
        os.replace(stage / dataset_id, dest)
        for namespace in list(Path(dataset_id).parents)[:-1]:  # as Minari would have left them
            src, dst = (
                stage / namespace / "namespace_metadata.json",
                root / namespace / "namespace_metadata.json",
            )
            if src.exists() and not dst.exists():
                shutil.copyfile(src, dst)
    return minari.load_dataset(dataset_id)


def _from_buffers(dataset_id: str, env: str, buffers: list[EpisodeBuffer], algorithm: str, description: str):
    def make():
        return minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=buffers,
            env=ENVS[env].env_id,
            algorithm_name=algorithm,
            ref_min_score=ENVS[env].ref_min,
            ref_max_score=ENVS[env].ref_max,
            description=description,
        )

    return make


def _sibling(dataset_id: str, level: str) -> str:
    head, tail = dataset_id.rsplit("/", 1)
    return f"{head}/{level}-{tail.rsplit('-', 1)[1]}"


def build_dataset(
    dataset_id: str,
    *,
    env: str | None = None,
    level: str | None = None,
    steps: int = 100_000,
    agent: AgentConfig | None = None,
    agents_dir: Path | str | None = None,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
) -> minari.MinariDataset:
    """Build the data set ``dataset_id`` (or load it when present and not ``force``).

    ``env`` and ``level`` default to those named by the id (``[namespace/]<env>/<level>-v<k>``),
    so a set may be stored under any id, e.g. ``mujoco/hopper/medium-v0``. ``steps``: transitions
    of a random, medium or expert set (D4RL: 1,000,000); ``agent``: the SAC budgets; ``seed``: the
    data's environment seeds (the agent has its own, ``agent.seed``).
    """
    if env is None or level is None:
        parsed = parse_id(dataset_id)
        env, level = env or parsed[0], level or parsed[1]
    env, level = check_env_level(env, level)
    agent = agent or AgentConfig()
    if not force:
        with contextlib.suppress(FileNotFoundError):
            return minari.load_dataset(dataset_id)
    info = ENVS[env]
    base_seed = 10**4 * seed
    refs = f"reference returns D4RL's (random {info.ref_min}, expert {info.ref_max})"

    if level == "random":
        space = gym.make(info.env_id).action_space
        if not isinstance(space, gym.spaces.Box):
            raise TypeError(f"{info.env_id}: a continuous (Box) action space was expected, got {space}")
        rng = np.random.default_rng(base_seed)
        buffers, _ = rollout(
            env,
            lambda obs: rng.uniform(space.low, space.high),
            steps,
            base_seed + 10**6 * _SEED_BLOCK["random"],
            desc=f"{env} random",
            progress=progress,
        )
        make = _from_buffers(
            dataset_id,
            env,
            buffers,
            "uniform random actions",
            f"{info.env_id}, {steps} transitions of a uniform random policy; {refs}.",
        )
        return _write(dataset_id, env, make, {})

    if level == "medium-expert":
        build = functools.partial(
            build_dataset,
            env=env,
            steps=steps,
            agent=agent,
            agents_dir=agents_dir,
            seed=seed,
            progress=progress,
        )
        parts = [build(_sibling(dataset_id, lvl)) for lvl in ("medium", "expert")]
        meta = [p.storage.metadata for p in parts]

        def combine():
            (datasets_root() / dataset_id).parent.mkdir(parents=True, exist_ok=True)  # Minari doesn't
            combined = minari.combine_datasets(parts, dataset_id)
            combined.storage.update_metadata(
                {
                    "algorithm_name": f"{meta[0]['algorithm_name']} + {meta[1]['algorithm_name']}",
                    "description": f"{info.env_id}: the episodes of {parts[0].spec.dataset_id} "
                    f"then those of {parts[1].spec.dataset_id}; {refs}.",
                }
            )
            return combined

        return _write(
            dataset_id,
            env,
            combine,
            {key: [m[key] for m in meta] for key in ("agent_steps", "agent_score")},
        )

    stage: Literal["medium", "expert"] = "expert" if level == "expert" else "medium"
    folder = train_agent(env, agent, agents_dir, until=stage, progress=progress)
    name = "medium" if stage == "medium" else f"expert-{agent.expert_steps}"
    record = json.loads((folder / f"{name}.json").read_text())
    model = _sac().load(folder / f"{name}.zip", device="cpu")
    algorithm = (
        f"stable-baselines3 SAC (net {'-'.join(map(str, agent.net_arch))}), {stage} agent after "
        f"{record['steps']} steps, evaluation score {record['score']:.1f}"
    )
    metadata = {"agent_steps": int(record["steps"]), "agent_score": float(record["score"])}
    if level == "medium-replay":
        buffers = replay_episodes(dict(np.load(folder / "medium_replay.npz")), model.policy.unscale_action)
        make = _from_buffers(
            dataset_id,
            env,
            buffers,
            f"replay buffer of {algorithm}",
            f"{info.env_id}: the replay buffer of a SAC agent up to the point it reached its medium "
            f"score ({record['steps']} transitions, the first {agent.learning_starts} uniform "
            f"random); {refs}.",
        )
        return _write(dataset_id, env, make, metadata)

    buffers, _ = rollout(
        env,
        lambda obs: model.predict(obs, deterministic=False)[0],
        steps,
        base_seed + 10**6 * _SEED_BLOCK[level],
        desc=f"{env} {level}",
        progress=progress,
    )
    make = _from_buffers(
        dataset_id,
        env,
        buffers,
        f"{algorithm}, stochastic actions",
        f"{info.env_id}, {steps} transitions of the {stage} SAC agent with stochastic actions; {refs}.",
    )
    return _write(dataset_id, env, make, metadata)


# ---------------------------------------------------------------------------------------------
# Command line


@dataclass
class Build:
    """Build (or load, when present) D4RL-style MuJoCo data sets, one after the other."""

    ids: tyro.conf.Positional[tuple[DatasetId, ...]]
    steps: int = 100_000  # transitions of each random / medium / expert set (D4RL: 1,000,000)
    agent: AgentConfig = field(default_factory=AgentConfig)
    agents_dir: Path | None = None  # default: <MINARI_DATASETS_PATH>/../agents
    seed: int = 0  # the data's environment seeds (the agent has --agent.seed)
    threads: int = 1  # torch threads
    force: bool = False  # rebuild data sets already present (cached agents are still reused)
    progress: bool = True  # tqdm progress bars


@dataclass
class ListIds:
    """List the ids this module builds and whether each is present under MINARI_DATASETS_PATH."""


def summary(dataset: minari.MinariDataset) -> str:
    meta = dataset.storage.metadata
    returns = [float(np.sum(ep.rewards)) for ep in dataset.iterate_episodes()]
    scores = normalized_score(np.asarray(returns), meta["ref_min_score"], meta["ref_max_score"])
    agent = (
        f", agent steps {meta['agent_steps']} score {meta['agent_score']}" if "agent_steps" in meta else ""
    )
    return (
        f"{dataset.spec.dataset_id}: {dataset.total_episodes} episodes, {dataset.total_steps} steps, "
        f"episode normalised return {scores.mean():.1f} "
        f"(min {scores.min():.1f}, max {scores.max():.1f}){agent}"
    )


def main(argv: list[str] | None = None) -> None:
    """The command line (one-line errors, ``--log-level`` / ``-q``: :mod:`.cli`); an interrupted
    build is resumed by the same command (the SAC agents' checkpoints and finished sets are kept)."""
    cli.command("energy_guidance.recipes.datasets", argv, _main, resumable=True)


def _main(argv: list[str]) -> None:
    command = tyro.extras.subcommand_cli_from_dict(
        {"build": Build, "list": ListIds},
        args=argv,
        prog="python -m energy_guidance.recipes.datasets",
        description=f"Build or list the D4RL-style MuJoCo data sets. {cli.LOGGING_HELP}",
    )
    if isinstance(command, ListIds):
        for dataset_id in DATASET_IDS:
            present = (datasets_root() / dataset_id).exists()
            print(f"{dataset_id:45s} {'present' if present else '-'}")
        print(f"data sets under {datasets_root()}, agents under {agents_root()}")
        return
    cli.check_range("steps", command.steps, 1, integer=True)
    cli.check_range("threads", command.threads, 1, 1024, integer=True)
    cli.check_range("seed", command.seed, 0, 2**32 - 1, integer=True)
    torch.set_num_threads(command.threads)
    for dataset_id in command.ids:
        start = time.perf_counter()
        dataset = build_dataset(
            dataset_id,
            steps=command.steps,
            agent=replace(command.agent),
            agents_dir=command.agents_dir,
            seed=command.seed,
            force=command.force,
            progress=command.progress,
        )
        print(f"{summary(dataset)}; {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
