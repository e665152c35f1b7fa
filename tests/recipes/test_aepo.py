"""The AEPO recipe end to end on a tiny data set, its CLI, and resuming an interrupted run."""

import json

import numpy as np
import pytest

import recipes.aepo as aepo
from adapters import IQL
from recipes.aepo import AEPOConfig, format_scores, parse_args, run

from .conftest import TINY


def _tiny_config(run_dir, **overrides) -> AEPOConfig:
    config = parse_args(
        [
            "--dataset",
            TINY,
            "--run-dir",
            str(run_dir),
            "--threads",
            "1",
            "--no-progress",
            "--critic-steps",
            "200",
            "--behaviour-steps",
            "200",
            "--energy-steps",
            "50",
            "--checkpoint-every",
            "100",
            "--batch-size",
            "64",
            "--eval-episodes",
            "1",
            "--num-candidates",
            "4",
            "--inference-steps",
            "5",
            "--no-ablations",
            "--iql.hidden",
            "32",
            "--behaviour.hidden",
            "32",
            "--energy-hidden",
            "32",
            "--variance-samples",
            "256",
        ]
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def test_end_to_end_tiny(tiny_dataset, tmp_path):
    results = run(_tiny_config(tmp_path / "run"))
    assert set(results["scores"]) == {"aepo", "behaviour", "iql_awr"}
    refs = results["reference_scores"]
    for entry in results["scores"].values():
        (ret,) = entry["returns"]
        assert -200 * 16.3 <= ret <= 0  # Pendulum's reward is in [−16.3, 0] per step, 200 steps
        assert entry["score_mean"] == pytest.approx(
            100 * (ret - refs["random"]) / (refs["expert"] - refs["random"])
        )
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "results.json", "learning_curves.png", "state.json", "critic.safetensors"} <= files
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["critic_steps"] == 200 and saved["iql"]["hidden"] == 32
    assert "IQL policy (AWR)" in format_scores(results)


def test_interrupted_run_resumes_without_redoing_finished_phases(tiny_dataset, tmp_path, monkeypatch):
    config = _tiny_config(tmp_path / "run")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    evaluate = aepo.evaluate
    monkeypatch.setattr(aepo, "evaluate", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(config)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert {"critic", "behaviour", "variance", "energy"} <= set(state["phases"])

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished phase was redone")

    monkeypatch.setattr(aepo, "evaluate", evaluate)
    monkeypatch.setattr(IQL, "update", forbidden)
    monkeypatch.setattr(aepo, "estimate_variance_table", forbidden)
    monkeypatch.setattr(aepo, "regression_loss", forbidden)
    results = run(config)
    assert np.isfinite(results["scores"]["aepo"]["return_mean"])


def test_resuming_with_another_configuration_is_refused(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(aepo, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(RuntimeError, match="stop"):  # writes config.json, then stops
        run(_tiny_config(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"different configuration \(fields \['beta'\]\)"):
        run(_tiny_config(tmp_path / "run", beta=7.0))


def test_invalid_choices_fail_before_any_work(tmp_path):
    for field, value in [("critic", "sac"), ("reduce", "max"), ("variance", "bogus")]:
        with pytest.raises(ValueError, match=f"{field} must be one of"):
            run(_tiny_config(tmp_path / field, **{field: value}))
    config = _tiny_config(tmp_path / "s")
    config.behaviour.sampler = "heun"
    with pytest.raises(ValueError, match=r"behaviour\.sampler must be one of"):
        run(config)
    assert not (tmp_path / "critic").exists()


def test_cli_parses_nested_fields_and_flags():
    config = parse_args(
        ["--critic", "cql", "--iql.expectile", "0.9", "--no-rescale", "--behaviour.sampler", "ddim"]
    )
    assert config.critic == "cql" and config.iql.expectile == 0.9
    assert config.rescale is False and config.behaviour.sampler == "ddim"
    assert parse_args([]) == AEPOConfig()


def test_missing_dataset_and_env_mismatch_are_clear_errors(tiny_dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="minari download"):
        run(_tiny_config(tmp_path / "a", dataset="mujoco/hopper/medium-v0"))
    with pytest.raises(ValueError, match="observation_space mismatch"):
        run(_tiny_config(tmp_path / "b", env="MountainCarContinuous-v0"))
