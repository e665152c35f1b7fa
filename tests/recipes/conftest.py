"""The recipe's tiny test presets; the fixtures that use them (a tiny data set, a finished tiny
run) are in tests/recipes/fixtures.py, shared with tests/faults through tests/conftest.py."""

from pathlib import Path

import torch

from energy_guidance.checkpoints import checkpoint_steps, load_tensors
from energy_guidance.recipes.config import AEPOConfig, parse_args

TINY = "test/pendulum/tiny-v0"
PHASES = ("critic", "behaviour", "energy")  # the training phases


def tiny_args(run_dir, *extra: str) -> list[str]:
    """The command line of :func:`tiny_config`."""
    return [
        *("--dataset", TINY, "--run-dir", str(run_dir), "--threads", "1", "--no-progress"),
        *("--device", "cpu"),
        *("--critic-steps", "200", "--behaviour-steps", "200", "--energy-steps", "50"),
        *("--checkpoint-every", "100", "--batch-size", "64", "--eval-episodes", "1"),
        *("--num-candidates", "4", "--inference-steps", "5", "--no-ablations", "--no-smc"),
        *("--iql.hidden", "32", "--cql.hidden", "32", "--behaviour.hidden", "32"),
        *("--energy-hidden", "32", "--variance-samples", "256"),
        *extra,
    ]


def tiny_config(run_dir, *extra: str, **overrides) -> AEPOConfig:
    """The recipe on TINY in seconds: 200 critic and behaviour steps, 50 energy steps,
    checkpoints every 100 steps, one evaluation episode, no ablations; ``extra`` are more flags."""
    config = parse_args(tiny_args(run_dir, *extra))
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def final_weights(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Each training phase's weights at its final checkpoint."""
    weights = {}
    for phase in PHASES:
        step = checkpoint_steps(folder / "checkpoints", phase)[0]
        weights[phase] = load_tensors(folder / "checkpoints" / f"{phase}-{step}.safetensors")[0]
    return weights


def assert_same_weights(a: dict, b: dict) -> None:
    for phase in PHASES:
        assert a[phase].keys() == b[phase].keys()
        for key in a[phase]:
            assert torch.equal(a[phase][key], b[phase][key]), (phase, key)
