"""A run's inputs: IQL's reward normalisation of the data set's rewards."""

import pytest
import torch

from energy_guidance.recipes.inputs import load_inputs, reward_scale

from .conftest import tiny_config


def test_reward_scale_is_iqls_locomotion_normalisation():
    assert reward_scale(torch.tensor([100.0, 300.0, 2100.0]).numpy()) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="different returns"):
        reward_scale(torch.tensor([5.0, 5.0]).numpy())


def test_reward_normalisation_scales_the_training_rewards(tiny_dataset):
    plain = load_inputs(tiny_config("unused"))
    scaled = load_inputs(tiny_config("unused", "--reward-normalization", "returns"))
    assert scaled.reward_scale != 1.0 and plain.reward_scale == 1.0
    torch.testing.assert_close(scaled.data.rewards, plain.data.rewards * scaled.reward_scale)
    assert plain.dataset_score is not None
