"""The recipe's settings: the command line (nested fields, choices in --help), the presets, and
the registry of critics each with its settings field. (Bad values: tests/faults/test_arguments.py.)"""

import pytest

from energy_guidance.recipes.config import PRESETS, AEPOConfig, parse_args


def test_cli_parses_nested_fields_and_flags():
    config = parse_args(
        ["--critic", "cql", "--iql.expectile", "0.9", "--rescale", "off", "--behaviour.sampler", "ddim"]
    )
    assert config.critic == "cql" and config.iql.expectile == 0.9
    assert config.rescale == "off" and config.behaviour.sampler == "ddim"
    assert parse_args([]) == AEPOConfig(preset="default")


def test_help_lists_the_choices_of_every_option(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    for choices in (
        "{iql,cql}",
        "{min,mean}",
        "{eps_norm,data_var,diagonal,jacobian}",
        "{data,posterior_mean}",
        "{dpmsolver++,unipc,ddim,ddpm}",
        "{gaussian,deterministic}",
    ):
        assert choices in text
    with pytest.raises(SystemExit):
        parse_args(["--critic", "sac"])
    assert "invalid choice 'sac'" in capsys.readouterr().err


def test_every_registered_critic_has_its_settings_field():
    from energy_guidance.recipes.trainers import CRITICS

    for name, cls in CRITICS.items():
        assert isinstance(getattr(AEPOConfig(), name), cls.Config)


def test_presets_follow_the_data_set_and_flags_override_them():
    """A locomotion id gets the locomotion preset of the device (IQL's reward normalisation,
    larger budgets); a flag given on the command line wins over the preset."""
    config = parse_args(["--dataset", "mujoco/hopper/medium-v0", "--device", "cpu"])
    assert config.preset == "locomotion-cpu-long" and config.reward_normalization == "returns"
    assert config.critic_steps == PRESETS["locomotion-cpu-long"]["critic_steps"] == 100_000
    assert config.num_candidates == 64 and AEPOConfig().num_candidates == 16
    config = parse_args(["--dataset", "mujoco/hopper/medium-v0", "--device", "cpu", "--critic-steps", "7"])
    assert config.critic_steps == 7 and config.preset == "locomotion-cpu-long"
    config = parse_args(["--dataset", "mujoco/hopper/medium-v0", "--preset", "locomotion-cpu"])
    assert config.critic_steps == 20_000 and config.preset == "locomotion-cpu"
    config = parse_args(["--preset", "locomotion-gpu", "--device", "cpu"])
    assert config.critic_steps == 1_000_000 and config.device == "cpu"
    assert parse_args([]).preset == "default" and parse_args([]).reward_normalization == "none"
    with pytest.raises(SystemExit):
        parse_args(["--preset", "atari"])
