"""recipes/datasets.py at tiny budgets: a Hopper SAC agent of 200 + 200 steps, 150-step data sets."""

import json
import logging
import os

import gymnasium as gym
import minari
import numpy as np
import pytest
import torch

from energy_guidance.recipes import data, datasets, evaluation
from energy_guidance.recipes.datasets import AgentConfig, build_dataset, train_agent

# Tiny agents never reach the medium score; the agent at medium_steps is then the medium one.
pytestmark = pytest.mark.filterwarnings("ignore:SAC on hopper reached normalised score")

HOPPER_REFS = (-20.272305, 3234.3)  # d4rl/infos.py REF_MIN_SCORE / REF_MAX_SCORE['hopper-*']
STEPS = 150
AGENT = AgentConfig(
    medium_steps=200,
    expert_steps=400,
    eval_every=100,
    eval_episodes=1,
    learning_starts=50,
    net_arch=(32, 32),
)
TINY = {"steps": STEPS, "agent": AGENT, "progress": False}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sac():
    """SB3's SAC (the optional `mujoco` extra): the tests that train agents skip without it."""
    return pytest.importorskip("stable_baselines3").SAC


@pytest.fixture(scope="module")
def built(tmp_path_factory, sac):
    """Hopper's five levels built once (one agent) under a temporary Minari root."""
    root = tmp_path_factory.mktemp("datasets") / "minari"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(root))
        sets = {
            level: build_dataset(f"energy-guidance/hopper/{level}-v0", **TINY)
            for level in ("medium-expert", "medium-replay", "random")
        }
        sets |= {
            level: minari.load_dataset(f"energy-guidance/hopper/{level}-v0") for level in ("medium", "expert")
        }
        yield root, sets


def episodes(dataset):
    return list(dataset.iterate_episodes())


def agent_folder(root):
    return root.parent / "agents" / "hopper" / AGENT.tag()


@pytest.mark.parametrize("level", ["random", "medium", "expert", "medium-replay", "medium-expert"])
def test_shapes_and_reference_scores(built, level):
    _, sets = built
    dataset = sets[level]
    assert data.reference_scores(dataset) == HOPPER_REFS
    assert dataset.recover_environment().spec.id == "Hopper-v5"
    total = 0
    for episode in episodes(dataset):
        n = len(episode.rewards)
        assert episode.observations.shape == (n + 1, 11)
        assert episode.actions.shape == (n, 3)
        assert np.all(np.abs(episode.actions) <= 1.0)
        # Each episode ends exactly once, at its last step, and never both ways at once.
        ends = episode.terminations | episode.truncations
        assert not ends[:-1].any() and ends[-1] and not (episode.terminations & episode.truncations).any()
        total += n
    assert total == dataset.total_steps
    if level in ("random", "medium", "expert"):
        assert dataset.total_steps == STEPS


def test_agent_stages_and_their_record_in_the_metadata(built):
    root, sets = built
    medium = json.loads((agent_folder(root) / "medium.json").read_text())
    expert = json.loads((agent_folder(root) / f"expert-{AGENT.expert_steps}.json").read_text())
    assert medium["steps"] == AGENT.medium_steps  # a tiny agent never reaches score 33: the cap
    assert not medium["reached"]
    assert medium["steps"] <= expert["steps"] <= expert["final_steps"] == AGENT.expert_steps
    assert expert["score"] == max(h["score"] for h in expert["history"] if h["step"] >= medium["steps"])
    meta = {level: sets[level].storage.metadata for level in sets}
    assert meta["medium"]["agent_steps"] == meta["medium-replay"]["agent_steps"] == medium["steps"]
    assert meta["expert"]["agent_steps"] == expert["steps"]
    assert meta["medium-expert"]["agent_steps"] == [medium["steps"], expert["steps"]]
    assert "agent_steps" not in meta["random"]


def test_medium_expert_is_the_union_of_medium_and_expert(built):
    _, sets = built
    combined = episodes(sets["medium-expert"])
    parts = episodes(sets["medium"]) + episodes(sets["expert"])
    assert len(combined) == len(parts)
    assert sets["medium-expert"].total_steps == sets["medium"].total_steps + sets["expert"].total_steps
    for a, b in zip(combined, parts, strict=True):
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.rewards, b.rewards)
        np.testing.assert_array_equal(a.terminations, b.terminations)
        np.testing.assert_array_equal(a.truncations, b.truncations)


def test_medium_replay_is_the_agents_replay_buffer_up_to_medium(built):
    root, sets = built
    replay = dict(np.load(agent_folder(root) / "medium_replay.npz"))
    eps = episodes(sets["medium-replay"])
    assert sets["medium-replay"].total_steps == len(replay["rewards"]) == AGENT.medium_steps
    # In collection order: each episode's observations are the buffer's, and its last one the
    # buffer's next observation (SB3 stores the true terminal observation, not the reset one).
    np.testing.assert_array_equal(np.concatenate([e.observations[:-1] for e in eps]), replay["observations"])
    np.testing.assert_array_equal(
        np.concatenate([e.observations[1:] for e in eps]), replay["next_observations"]
    )
    np.testing.assert_array_equal(np.concatenate([e.actions for e in eps]), replay["actions"])  # box [-1, 1]
    np.testing.assert_array_equal(np.concatenate([e.rewards for e in eps]), replay["rewards"])
    terminated = np.concatenate([e.terminations for e in eps])
    np.testing.assert_array_equal(terminated, replay["dones"].astype(bool) & ~replay["timeouts"].astype(bool))
    assert terminated.sum() >= 1  # tiny Hopper agents fall


def test_cached_agent_and_data_set_are_not_rebuilt(built, sac, monkeypatch):
    root, sets = built
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    folder = agent_folder(root)
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    def no_training(*args, **kwargs):
        raise AssertionError("SAC.learn called: the cached agent was not reused")

    def no_rollout(*args, **kwargs):
        raise AssertionError("rollout called: the cached data set was not reused")

    monkeypatch.setattr(sac, "learn", no_training)
    # A present data set loads as it is.
    monkeypatch.setattr(datasets, "rollout", no_rollout)
    again = build_dataset("energy-guidance/hopper/medium-v0", **TINY)
    assert again.total_steps == sets["medium"].total_steps
    # Rebuilding it (force) collects new episodes but trains nothing: the agent is cached.
    monkeypatch.undo()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    monkeypatch.setattr(sac, "learn", no_training)
    rebuilt = build_dataset("energy-guidance/hopper/expert-v0", force=True, **TINY)
    for a, b in zip(episodes(rebuilt), episodes(sets["expert"]), strict=True):  # same seeds: same data
        np.testing.assert_array_equal(a.observations, b.observations)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps


def test_expert_stage_resumes_from_the_medium_checkpoint(minari_root, sac, monkeypatch, caplog):
    agents = minari_root.parent / "agents-resume"
    config = AgentConfig(**{**AGENT.__dict__, "expert_steps": 300})
    with caplog.at_level(logging.WARNING, logger="energy_guidance"):
        folder = train_agent("hopper", config, agents, until="medium", progress=False)
    assert "that agent is the medium one" in caplog.text
    assert (folder / "medium.json").exists() and not (folder / "expert-300.json").exists()
    medium_zip = (folder / "medium.zip").stat().st_mtime_ns
    calls = []
    learn = sac.learn

    def counting(self, total_timesteps, **kwargs):
        calls.append((self.num_timesteps, self.replay_buffer.size()))
        return learn(self, total_timesteps, **kwargs)

    monkeypatch.setattr(sac, "learn", counting)
    train_agent("hopper", config, agents, until="expert", progress=False)
    # It went on from step 200 with the 200 transitions of the replay buffer restored.
    assert calls == [(AGENT.medium_steps, AGENT.medium_steps)]
    assert (folder / "medium.zip").stat().st_mtime_ns == medium_zip
    expert = json.loads((folder / "expert-300.json").read_text())
    assert expert["final_steps"] == 300


@pytest.mark.usefixtures("sac")
def test_interrupted_write_leaves_nothing_loadable(minari_root, monkeypatch):
    real = minari.create_dataset_from_buffers

    def write_then_fail(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets.minari, "create_dataset_from_buffers", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        build_dataset("energy-guidance/hopper/random-v0", steps=20, progress=False)
    assert os.environ["MINARI_DATASETS_PATH"] == str(minari_root)
    with pytest.raises(FileNotFoundError):
        minari.load_dataset("energy-guidance/hopper/random-v0")
    assert [p.name for p in minari_root.parent.iterdir() if "staging" in p.name] == []
    monkeypatch.setattr(datasets.minari, "create_dataset_from_buffers", real)
    assert build_dataset("energy-guidance/hopper/random-v0", steps=20, progress=False).total_steps == 20


@pytest.mark.usefixtures("sac")
def test_project_ids_build_on_first_use_through_load_dataset(minari_root, monkeypatch):
    assert "energy-guidance/walker2d/medium-replay-v0" in data.BUILDERS
    monkeypatch.setitem(build_dataset.__kwdefaults__, "steps", 30)
    dataset = data.load_dataset("energy-guidance/walker2d/random-v0")
    assert dataset.total_steps == 30
    assert data.reference_scores(dataset) == (1.629008, 4592.3)
    assert dataset.recover_environment().spec.id == "Walker2d-v5"
    assert (minari_root / "energy-guidance" / "walker2d" / "random-v0").is_dir()


@pytest.mark.usefixtures("sac")
def test_a_set_stored_under_a_real_minari_id_loads_with_its_reference_scores(minari_root):
    """As a downloaded ``mujoco/hopper/medium-v0`` would: it is not one of the project's ids."""
    assert "mujoco/hopper/medium-v0" not in data.BUILDERS
    build_dataset("mujoco/hopper/medium-v0", agents_dir=minari_root.parent / "agents", **TINY)
    dataset = data.load_dataset("mujoco/hopper/medium-v0", build=False)
    env = dataset.recover_environment()
    assert env.spec.id == "Hopper-v5"
    assert data.reference_scores(dataset) == HOPPER_REFS
    transitions = data.load_transitions(dataset, env)
    assert transitions.observations.shape == (STEPS, 11)
    assert transitions.actions.shape == (STEPS, 3)
    assert transitions.rewards.shape == (STEPS,)
    # Hopper's box is [-1, 1]^3, so scaling to [-1, 1] leaves the stored actions as they are.
    stored = np.concatenate([e.actions for e in dataset.iterate_episodes()])
    np.testing.assert_allclose(transitions.actions.numpy(), stored, rtol=0, atol=1e-6)
    returns = [float(np.sum(e.rewards)) for e in dataset.iterate_episodes()]
    np.testing.assert_allclose(
        minari.get_normalized_score(dataset, np.asarray(returns)),
        evaluation.normalized_score(returns, *HOPPER_REFS) / 100,
    )


@pytest.mark.parametrize(
    ("dataset_id", "message"),
    [
        ("energy-guidance/ant/medium-v0", "unknown environment 'ant'"),
        ("energy-guidance/hopper/mediocre-v0", "unknown level 'mediocre'"),
        ("hopper-medium-v2", "not of the form"),
    ],
)
def test_unknown_env_or_level(minari_root, dataset_id, message):
    with pytest.raises(ValueError, match=message):
        build_dataset(dataset_id, progress=False)
    with pytest.raises(ValueError, match="unknown level"):
        build_dataset("x", env="hopper", level="full-replay", progress=False)


def test_command_line_lists_the_ids(capsys):
    with pytest.raises(SystemExit) as exit_:
        datasets.main(["build", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for dataset_id in ("energy-guidance/halfcheetah/medium-replay-v0", "energy-guidance/walker2d/expert-v0"):
        assert dataset_id in out
    with pytest.raises(SystemExit):
        datasets.main(["build", "energy-guidance/ant/medium-v0"])


def test_reference_scores_are_d4rls():
    assert {k: (v.env_id, v.ref_min, v.ref_max) for k, v in datasets.ENVS.items()} == {
        "halfcheetah": ("HalfCheetah-v5", -280.178953, 12135.0),
        "hopper": ("Hopper-v5", -20.272305, 3234.3),
        "walker2d": ("Walker2d-v5", 1.629008, 4592.3),
    }
    assert gym.spec("Walker2d-v5").max_episode_steps == 1000


def test_a_build_removes_the_staging_folders_of_killed_builds_only(minari_root):
    """A staging folder names its process: one whose process is gone (a killed build) is removed
    by the next build; one of a live process (a build running beside it) is kept."""
    import subprocess
    import sys

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(finished.stdout)  # a process that has exited
    stale = minari_root.parent / f".{minari_root.name}-staging-{dead_pid}-abc"
    live = minari_root.parent / f".{minari_root.name}-staging-{os.getppid()}-def"
    for folder in (stale, live):
        (folder / "part").mkdir(parents=True)
    with datasets._staging(minari_root) as stage:
        assert stage.name.startswith(f".{minari_root.name}-staging-{os.getpid()}-")
        assert not stale.exists() and live.exists()
    assert not stage.exists() and live.exists()
