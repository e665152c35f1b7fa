"""d3rlpy's IQL and CQL, trained a few steps on a tiny synthetic data set and saved to a model file,
loaded back as critics whose energies match d3rlpy's own Q values."""

import numpy as np
import pytest
import torch

# d3rlpy is the optional extra energy-guidance[d3rlpy]; the project's venv installs it without its
# gymnasium==1.0.0 pin (scripts/d3rlpy-requirements.txt), so this runs in CI.
d3rlpy = pytest.importorskip(
    "d3rlpy", reason="d3rlpy is not installed (pip install --no-deps -r scripts/d3rlpy-requirements.txt)"
)

from energy_guidance.adapters import Critic, critic_energy, load_d3rlpy  # noqa: E402
from energy_guidance.callables import energy_and_grad  # noqa: E402

OBS_DIM, ACT_DIM, N = 3, 2, 200


def _dataset():
    """200 steps in 4 episodes: observations around (5, -3, 0) with unequal spreads and actions
    in [-2, 2]^2, so that the scalers are far from the identity."""
    rng = np.random.default_rng(0)
    observations = (rng.normal(size=(N, OBS_DIM)) * [1.0, 4.0, 0.5] + [5.0, -3.0, 0.0]).astype(np.float32)
    actions = rng.uniform(-2, 2, size=(N, ACT_DIM)).astype(np.float32)
    rewards = (-np.square(actions).sum(1) + observations[:, 0]).astype(np.float32)
    timeouts = np.zeros(N, dtype=np.float32)
    timeouts[49::50] = 1.0
    return d3rlpy.dataset.MDPDataset(
        observations=observations,
        actions=actions,
        rewards=rewards,
        terminals=np.zeros(N, dtype=np.float32),
        timeouts=timeouts,
    )


def _config(name: str):
    small = d3rlpy.models.VectorEncoderFactory([16, 16])
    scalers = {
        "observation_scaler": d3rlpy.preprocessing.StandardObservationScaler(),
        "action_scaler": d3rlpy.preprocessing.MinMaxActionScaler(),
    }
    if name == "iql":
        return d3rlpy.algos.IQLConfig(
            batch_size=32,
            actor_encoder_factory=small,
            critic_encoder_factory=small,
            value_encoder_factory=small,
            **scalers,
        )
    return d3rlpy.algos.CQLConfig(
        batch_size=32, actor_encoder_factory=small, critic_encoder_factory=small, **scalers
    )


@pytest.fixture(scope="module", params=["iql", "cql"])
def trained(request, tmp_path_factory):
    """(d3rlpy algorithm, path of its saved model file, data set), after 20 training steps."""
    d3rlpy.seed(0)
    dataset = _dataset()
    algo = _config(request.param).create(device="cpu:0")
    algo.fit(
        dataset,
        n_steps=20,
        n_steps_per_epoch=20,
        show_progress=False,
        logger_adapter=d3rlpy.logging.NoopAdapterFactory(),
        save_interval=10**9,
    )
    path = tmp_path_factory.mktemp(request.param) / "model.d3"
    algo.save(str(path))
    return request.param, algo, path


def test_loaded_critic_reproduces_d3rlpys_q_values(trained):
    name, algo, path = trained
    critic = load_d3rlpy(path)
    assert isinstance(critic, Critic)
    rng = np.random.default_rng(1)
    states = (rng.normal(size=(32, OBS_DIM)) * [1.0, 4.0, 0.5] + [5.0, -3.0, 0.0]).astype(np.float32)
    actions = rng.uniform(-2, 2, size=(32, ACT_DIM)).astype(np.float32)
    heads = critic.q_values(torch.from_numpy(states), torch.from_numpy(actions))
    assert heads.shape == (2, 32)  # d3rlpy's twin critics
    # predict_value is d3rlpy's own: the mean over heads, its scalers applied in numpy.
    expected = algo.predict_value(states, actions)
    assert np.allclose(heads.mean(0).detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    baseline = critic.baseline(torch.from_numpy(states))
    assert baseline.shape == (32,) and not baseline.requires_grad and torch.isfinite(baseline).all()
    if name == "cql":  # min over heads of Q at the policy's greedy action (in data units)
        greedy = algo.predict(states)
        assert np.allclose(
            baseline.numpy(),
            critic.q_values(torch.from_numpy(states), torch.from_numpy(greedy)).min(0).values.detach(),
            rtol=1e-5,
            atol=1e-6,
        )


def test_energy_gradient_matches_finite_differences_of_d3rlpys_values(trained):
    """E(a | s) = −(mean_k Q_k(s, a) − b(s)) through the action scaler: its autograd gradient in
    the actions (data units) against central differences of d3rlpy's predict_value."""
    _, algo, path = trained
    energy = critic_energy(load_d3rlpy(path).q_values, reduce="mean")
    rng = np.random.default_rng(2)
    states = (rng.normal(size=(8, OBS_DIM)) * [1.0, 4.0, 0.5] + [5.0, -3.0, 0.0]).astype(np.float32)
    actions = rng.uniform(-1.5, 1.5, size=(8, ACT_DIM)).astype(np.float64)
    value, grad = energy_and_grad(energy, torch.from_numpy(actions), torch.from_numpy(states))
    assert value.shape == (8,) and grad.dtype == torch.float64
    h = 1e-3  # small against the ReLU networks' kinks, large against float32 rounding
    for j in range(ACT_DIM):
        step = np.zeros(ACT_DIM)
        step[j] = h
        up = algo.predict_value(states, (actions + step).astype(np.float32))
        down = algo.predict_value(states, (actions - step).astype(np.float32))
        assert np.allclose(grad[:, j].numpy(), -(up - down) / (2 * h), rtol=1e-2, atol=2e-4)


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no d3rlpy model file"):
        load_d3rlpy(tmp_path / "missing.d3")
    from energy_guidance.adapters import D3rlpyCritic

    with pytest.raises(TypeError, match="expected a d3rlpy Q-learning algorithm"):
        D3rlpyCritic(object())
    with pytest.raises(TypeError, match="discrete actions"):
        D3rlpyCritic(d3rlpy.algos.DiscreteCQLConfig().create(device="cpu:0"))
