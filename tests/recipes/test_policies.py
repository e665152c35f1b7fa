"""The evaluated policies' settings: AEPO's guidance rescale by action dimension, the training-free
policy's guidance. (The policies themselves run in tests/recipes/test_aepo.py's end-to-end runs.)"""

from types import SimpleNamespace

import numpy as np
import torch

from energy_guidance import IntermediateEnergyNet
from energy_guidance.importance import ImportanceTilt
from energy_guidance.posterior import VarianceTable, estimate_variance_table
from energy_guidance.recipes.behaviour import NoiseMLP, sampling_scheduler, training_scheduler
from energy_guidance.recipes.config import AEPOConfig
from energy_guidance.recipes.data import ActionScaler
from energy_guidance.recipes.inputs import Normalizer
from energy_guidance.recipes.policies import TRAINING_FREE, Policies, resolve_rescale


def test_rescale_is_on_for_actions_of_dimension_two_and_more():
    """On is AEPO's rescale, ``rescale="paper"`` (``True`` would cap the guidance term instead)."""
    assert resolve_rescale("auto", 1) is False and resolve_rescale("auto", 2) == "paper"
    assert resolve_rescale("off", 6) is False and resolve_rescale("on", 1) == "paper"


def _policies(config: AEPOConfig) -> tuple[Policies, VarianceTable]:
    """Policies over an untrained behaviour model of 2-D actions given 3-D states, with the linear
    energy E(a | s) = 2·Σ_i a_i (lower toward a = −1), and their variance table (256 random
    actions)."""
    torch.manual_seed(0)
    train_sched = training_scheduler(config.behaviour)
    model = NoiseMLP(2, 3, hidden=32).eval().requires_grad_(False)
    actions, states = torch.rand(256, 2) * 2 - 1, torch.randn(256, 3)
    table = estimate_variance_table(
        train_sched, model, actions, states, generator=torch.Generator().manual_seed(0)
    )
    policies = Policies(
        config,
        SimpleNamespace(policy_name="critic"),  # read only by best of N and the critic's own policy
        model,
        sampling_scheduler(config.behaviour, train_sched),
        IntermediateEnergyNet(2, 3, hidden=16, beta=config.beta),
        lambda a, s: 2 * a.sum(dim=1),
        Normalizer(torch.zeros(3), torch.ones(3)),
        ActionScaler(-np.ones(2), np.ones(2)),
        2,
        torch.Generator().manual_seed(1),
        variance_table=table,
    )
    return policies, table


def test_training_free_policy_is_the_library_default_guidance():
    """One sample of ``AnalyticEnergyGuidance(scheduler, model, energy, beta)`` on the run's table:
    the default estimator, no rescale whatever AEPO's, the evaluation's guidance scale."""
    config = AEPOConfig(rescale="on", guidance_scale=2.0)
    policies, table = _policies(config)
    guidance = policies.training_free
    assert isinstance(guidance.estimator, ImportanceTilt) and guidance.estimator.table is table
    assert guidance.rescale is False and policies.guidance.rescale == "paper"
    assert guidance.beta == config.beta and guidance.scale == 2.0
    assert TRAINING_FREE in policies.evaluated()


def test_training_free_policy_lowers_the_energy():
    """Its actions have a lower energy than the behaviour policy's on the same states, by more than
    three standard errors of the difference of the two means."""
    policies, _ = _policies(AEPOConfig(inference_steps=5))
    obs = np.random.default_rng(0).standard_normal((256, 3))
    evaluated = policies.evaluated()
    guided, unguided = evaluated[TRAINING_FREE](obs), evaluated["behaviour"](obs)
    assert guided.shape == unguided.shape == (256, 2) and np.abs(guided).max() <= 1
    e_guided, e_unguided = 2 * guided.sum(axis=1), 2 * unguided.sum(axis=1)
    standard_error = np.sqrt((e_guided.var() + e_unguided.var()) / len(obs))
    assert e_guided.mean() < e_unguided.mean() - 3 * standard_error
