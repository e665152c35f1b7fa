"""amortized.py: closed-form training targets, the intermediate-energy network, its training and
save/load, and amortized guidance on Gaussian data."""

import math

import pytest
import torch

from energy_guidance import (
    AnalyticEnergyGuidance,
    ClosedForm,
    GaussianQuadrature,
    IntermediateEnergyNet,
    sample,
    train_intermediate_energy,
)
from energy_guidance.amortized import (
    closed_form_batches,
    closed_form_targets,
    estimator_batches,
    regression_loss,
)
from energy_guidance.callables import energy_and_grad, energy_grad_hessian
from energy_guidance.schedulers import (
    from_eps_x0,
    noise_level,
    prediction_type,
    to_eps_x0,
    training_timesteps,
)
from energy_guidance.variance import estimate_variance_table

from .gaussian_case import (
    BETA,
    M_DATA,
    M_TARGET,
    STEPS,
    N,
    W,
    Z,
    data_model,
    exact_guidance_term,
    linear_energy,
)
from .schedulers import make_scheduler
from .test_quadrature import gh_bounds

# --- targets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("expansion", ["data", "posterior_mean"])
@pytest.mark.parametrize("name", ["ddpm-eps", "dpm++-v", "flow-euler"])
def test_closed_form_targets_are_exact_for_gaussian_data(name, expansion):
    """Linear E and a Gaussian posterior: the target equals -log E[exp(-β·wᵀx0) | x_t] exactly,
    whichever expansion point (x̄ = x0 or x̄ = x̂0) is used."""
    scheduler = make_scheduler(name)
    q = data_model()
    gen = torch.Generator().manual_seed(0)
    x0 = q.sample(64, generator=gen).double()
    noise = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    t = torch.randint(1, 999, (64,), generator=gen)
    kwargs = {"variance": "jacobian", "energy": linear_energy}
    if expansion == "data":
        energy_bar, grad_bar = energy_and_grad(linear_energy, x0)
        kwargs |= {"energy_bar": energy_bar, "grad_bar": grad_bar}
    x_t, target = closed_form_targets(scheduler, q.noise_model(scheduler), x0, t, noise, BETA, **kwargs)
    alpha, sigma = noise_level(scheduler, t)
    torch.testing.assert_close(x_t, alpha[:, None] * x0 + sigma[:, None] * noise)
    exact = -q.linear_log_potential(x_t, alpha, sigma, W, BETA)
    torch.testing.assert_close(target, exact, rtol=1e-9, atol=1e-9)
    assert not target.requires_grad


@pytest.mark.parametrize("name", ["ddpm-eps", "dpm++-v"])
def test_estimator_targets_are_the_estimators_value_at_the_noised_data(name):
    """``estimator_batches`` with the Gaussian quadrature: x_t = α·x0 + σ·ε for drawn data, and the
    target is the quadrature's E_t there; for linear E and Gaussian data (12 points, Jacobian
    covariance) it is the exact -log E[exp(-β·wᵀx0) | x_t] up to the rule's error, bounded as in
    test_quadrature at the largest |c_i| = β·√v·‖w‖."""
    scheduler = make_scheduler(name)
    q = data_model()
    model = q.noise_model(scheduler)
    data = q.sample(256, generator=torch.Generator().manual_seed(0)).double()
    quadrature = GaussianQuadrature(linear_energy, BETA, "jacobian", points=12)
    draw = estimator_batches(scheduler, model, quadrature, data, batch_size=64, generator=torch.Generator())
    batch = draw()
    assert batch.x_t.shape == (64, 2) and not batch.target.requires_grad
    exact = -q.linear_log_potential(batch.x_t, batch.alpha, batch.sigma, W, BETA)
    v = float(q.variances[0, 0])
    value_bound, _ = gh_bounds(torch.full((2,), BETA * math.sqrt(v) * float(W.norm())), 12)
    assert (batch.target - exact).abs().max() <= value_bound + 1e-9  # + the Jacobian's float64 rounding
    with pytest.raises(TypeError, match="training-free"):
        estimator_batches(scheduler, model, IntermediateEnergyNet(2, beta=BETA), data)


def test_training_on_quadrature_targets_reduces_the_loss_and_checks_beta():
    scheduler = make_scheduler("ddpm-eps")
    q = data_model()
    net = IntermediateEnergyNet(2, hidden=32, depth=2, beta=BETA)
    args = (scheduler, q.noise_model(scheduler), None, q.sample(1024))
    quadrature = GaussianQuadrature(linear_energy, BETA, "jacobian")
    kwargs = {"steps": 200, "batch_size": 128, "progress": False}
    kwargs["generator"] = torch.Generator().manual_seed(0)
    history = train_intermediate_energy(net, *args, targets=quadrature, **kwargs)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    with pytest.raises(ValueError, match="beta"):
        train_intermediate_energy(net, *args, targets=GaussianQuadrature(linear_energy, 2 * BETA), **kwargs)


# --- the network -------------------------------------------------------------------------------


def test_save_load_gives_identical_outputs(tmp_path):
    net = IntermediateEnergyNet(3, cond_dim=2, hidden=32, depth=2, num_frequencies=4, beta=0.7)
    net.target_mean.fill_(1.5)
    net.target_scale.fill_(3.0)
    path = str(tmp_path / "net.safetensors")
    net.save(path)
    loaded = IntermediateEnergyNet.load(path)
    assert loaded.config == net.config and loaded.beta == 0.7
    x_t, cond = torch.randn(10, 3), torch.randn(10, 2)
    alpha = torch.linspace(0.05, 0.95, 10)
    sigma = (1 - alpha**2).sqrt()
    torch.testing.assert_close(loaded(x_t, alpha, sigma, cond), net(x_t, alpha, sigma, cond), rtol=0, atol=0)
    with pytest.raises(ValueError, match="takes cond of 2 features per sample; got None"):
        loaded(x_t, alpha, sigma)
    with pytest.raises(ValueError, match=r"got \(10, 3\)"):
        loaded(x_t, alpha, sigma, torch.randn(10, 3))
    unconditional = IntermediateEnergyNet(3, hidden=8, depth=1)
    with pytest.raises(ValueError, match="cond_dim=0 and would ignore cond"):
        unconditional(x_t, alpha, sigma, cond)


def test_network_input_is_scheduler_independent():
    """The network sees x_t/sqrt(α² + σ²) and λ = log(α²/σ²): a VE input x0 + s·ε (α = 1, σ = s)
    gives the same value as its VP form (α, σ)/sqrt(1 + s²)."""
    net = IntermediateEnergyNet(2, hidden=16, depth=1)
    x_ve = torch.randn(4, 2)
    s = torch.tensor([0.3, 1.0, 5.0, 40.0])
    scale = (1 + s**2).sqrt()
    torch.testing.assert_close(
        net(x_ve, torch.ones(4), s), net(x_ve / scale[:, None], 1 / scale, s / scale), rtol=1e-5, atol=1e-5
    )


def test_training_reduces_the_loss():
    """Regression on closed-form targets: the loss over the last 50 steps is below half of that
    over the first 50 (the targets, normalised to unit scale, start at loss ≈ 1)."""
    scheduler = make_scheduler("ddpm-eps")
    q = data_model()
    net = IntermediateEnergyNet(2, hidden=32, depth=2, beta=BETA)
    history = train_intermediate_energy(
        net,
        scheduler,
        q.noise_model(scheduler),
        linear_energy,
        q.sample(1024),
        variance="jacobian",
        steps=200,
        batch_size=128,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    assert history["step"] == [50, 100, 150, 200]  # means over windows of 50 steps
    assert all(math.isfinite(v) for v in history["loss"])
    assert history["loss"][-1] < 0.5 * history["loss"][0]


def test_training_resumes_from_its_checkpoint_directory(tmp_path):
    """With ``checkpoint_dir``, a finished run is not redone: calling again loads its weights."""
    scheduler = make_scheduler("ddpm-eps")
    q = data_model()
    data = q.sample(256, generator=torch.Generator().manual_seed(1))

    def run(log):
        net = IntermediateEnergyNet(2, hidden=16, depth=1, beta=BETA)
        history = train_intermediate_energy(
            net, scheduler, q.noise_model(scheduler), linear_energy, data, variance=0.1, steps=60,
            batch_size=32, generator=torch.Generator().manual_seed(2), checkpoint_dir=tmp_path,
            progress=False, log=log,
        )  # fmt: skip
        return net, history

    logged = []
    first, history = run(lambda step, means: logged.append(step))
    assert logged == [50, 60]
    again, history_again = run(lambda step, means: pytest.fail("a finished run trained again"))
    assert history_again == history
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_training_a_conditional_network():
    """energy(x0, cond) with a per-sample condition; the network takes cond as an input."""
    scheduler = make_scheduler("ddim-eps")
    q = data_model()
    data = q.sample(512)
    cond = torch.randn(512, 2)
    net = IntermediateEnergyNet(2, cond_dim=2, hidden=32, depth=2, beta=BETA)
    base = q.noise_model(scheduler)
    steps = []
    history = train_intermediate_energy(
        net,
        scheduler,
        lambda x, t, c: base(x, t),  # with cond given, the model is called as model(x_t, t, cond)
        lambda x, c: (x * c).sum(1),
        data,
        cond,
        variance=0.1,
        expansion="posterior_mean",
        steps=300,
        batch_size=64,
        generator=torch.Generator().manual_seed(0),
        progress=False,
        log=lambda step, means: steps.append(step),
    )
    assert steps == [50, 100, 150, 200, 250, 300]
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    with pytest.raises(ValueError, match="expansion must be"):
        train_intermediate_energy(
            net, scheduler, q.noise_model(scheduler), linear_energy, data, expansion="x0"
        )


def test_guidance_rejects_a_network_trained_for_another_beta():
    scheduler = make_scheduler("ddim-eps")
    net = IntermediateEnergyNet(2, beta=2.0)
    with pytest.raises(ValueError, match=r"built for beta=2.0, not beta=1.0"):
        AnalyticEnergyGuidance(scheduler, data_model().noise_model(scheduler), beta=1.0, estimator=net)


# --- amortized guidance ------------------------------------------------------------------------


def run_with_injected_terms(name: str, model, deltas: list[torch.Tensor], n: int, seed: int) -> torch.Tensor:
    """Sample with ε̂ + δ_k at step k (x̂0 moved accordingly, as guidance does) from a fixed seed."""
    scheduler = make_scheduler(name)
    ptype = prediction_type(scheduler)
    step = iter(range(len(deltas)))

    def injected(x, t):
        alpha, sigma = noise_level(scheduler, t)
        a, s = alpha[:, None].to(x), sigma[:, None].to(x)
        eps, x0 = to_eps_x0(model(x, t), x, alpha, sigma, ptype)
        delta = deltas[next(step)].to(x)
        return from_eps_x0(eps + delta, x0 - s / a * delta, alpha, sigma, ptype)

    return sample(
        scheduler,
        injected,
        (n, 2),
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(seed),
        dtype=torch.float64,
    )


@pytest.mark.parametrize("name", ["ddim-eps", "dpm++-v"])
def test_amortized_guidance_after_a_short_training(name):
    """After 400 training steps, amortized guided samples follow N(m - β·v·w, vI) within MC error,
    the scheduler's discretisation error and the network's measured error.

    With the exact Gaussian model every sampler here is affine in the terms δ_k added to ε̂ at
    step k: x_out = x_out(no guidance) + Σ_k C_k·δ_k, where C_k (per coordinate) is measured by
    injecting δ_k = 1 at step k alone. The exact guidance term δ*_k is constant in x_t, so the
    network's error e_k = δ_k - δ*_k moves the sample mean by exactly Σ_k C_k·mean(e_k) relative
    to exact guidance (checked), and by at most B = Σ_k |C_k|·|mean(e_k)|. Exact guidance obeys the
    bound of test_guidance.py (unguided error + 2·5·SE), so amortized guidance obeys it plus B.
    B ≤ 25% of the exact shift S = Σ_k C_k·δ*_k is the requirement on the trained network.
    """
    scheduler = make_scheduler(name)
    q = data_model()
    model = q.noise_model(scheduler)
    net = IntermediateEnergyNet(2, hidden=64, depth=2, beta=BETA)
    train_intermediate_energy(
        net,
        scheduler,
        model,
        linear_energy,
        q.sample(4096),
        variance="jacobian",
        steps=400,
        batch_size=256,
        generator=torch.Generator().manual_seed(1),
        progress=False,
    )
    guidance = AnalyticEnergyGuidance(scheduler, model, beta=BETA, estimator=net.double())
    ptype = prediction_type(scheduler)
    errors, exact_terms = [], []

    def recorded(x, t):
        out = guidance.guided_model_output(x, t)
        alpha, sigma = noise_level(scheduler, t)
        eps_guided, _ = to_eps_x0(out, x, alpha, sigma, ptype)
        eps_plain, _ = to_eps_x0(model(x, t), x, alpha, sigma, ptype)
        exact = exact_guidance_term(alpha[0], sigma[0])
        errors.append((eps_guided - eps_plain - exact).mean(0))
        exact_terms.append(exact)
        return out

    seed, kwargs = 0, {"num_inference_steps": STEPS, "dtype": torch.float64}
    amortized = sample(scheduler, recorded, (N, 2), generator=torch.Generator().manual_seed(seed), **kwargs)
    unguided = sample(
        make_scheduler(name), model, (N, 2), generator=torch.Generator().manual_seed(seed), **kwargs
    )
    paper = ClosedForm(linear_energy, BETA)  # the paper's closed form: exact guidance here
    exact_guided = AnalyticEnergyGuidance(make_scheduler(name), model, estimator=paper).sample(
        (N, 2), generator=torch.Generator().manual_seed(seed), **kwargs
    )
    zero = [torch.zeros(2, dtype=torch.float64)] * STEPS
    base = run_with_injected_terms(name, model, zero, 1, seed=7)
    coeffs = torch.stack(
        [
            (
                run_with_injected_terms(name, model, [*zero[:k], torch.ones(2), *zero[k + 1 :]], 1, seed=7)
                - base
            )[0]
            for k in range(STEPS)
        ]
    )  # (STEPS, 2)
    errors, exact_terms = torch.stack(errors), torch.stack(exact_terms)

    shift = (coeffs * exact_terms).sum(0)
    # Some diffusers steps compute in float32: superposition holds to ~1e-7 relative.
    torch.testing.assert_close(shift, (exact_guided - unguided).mean(0), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(
        (amortized - exact_guided).mean(0), (coeffs * errors).sum(0), rtol=1e-5, atol=1e-7
    )

    network_error = (coeffs.abs() * errors.abs()).sum(0)
    assert (network_error <= 0.25 * shift.abs()).all()
    se = amortized.std(0) / math.sqrt(N)
    tol = (unguided.mean(0) - M_DATA).abs() + 2 * Z * se + network_error
    assert ((amortized.mean(0) - M_TARGET).abs() <= tol).all()
    assert (tol < (M_TARGET - M_DATA).abs() / 2).all()  # and the test tells guided from unguided

    # In amortized mode intermediate_energy is the network itself.
    x_t = torch.randn(5, 2, dtype=torch.float64)
    alpha, sigma = noise_level(scheduler, 500)
    torch.testing.assert_close(guidance.intermediate_energy(x_t, 500), net(x_t, alpha, sigma))


def test_flow_matching_training_never_draws_a_noise_free_level():
    """Flow matching's t = 0 has σ = 0 (log-SNR +∞, σ²/α² = 0): targets, tables and the network
    input stay finite because only training_timesteps (0 < α, 0 < σ) are drawn."""
    scheduler = make_scheduler("flow-euler")
    valid = training_timesteps(scheduler)
    alpha, sigma = noise_level(scheduler, valid)
    assert (alpha > 0).all() and (sigma > 0).all() and len(valid) == scheduler.config.num_train_timesteps - 1
    q = data_model()
    model = q.noise_model(scheduler)
    table = estimate_variance_table(scheduler, model, q.sample(500), num_levels=16)
    for field in ("log_snr", "eps_norm", "data_var", "diagonal"):
        assert torch.isfinite(getattr(table, field)).all()
    draw = closed_form_batches(
        scheduler, model, linear_energy, q.sample(256), beta=BETA, variance="data_var",
        variance_table=table, batch_size=4096, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    batch = draw()
    assert (batch.sigma > 0).all() and torch.isfinite(batch.target).all()
    assert torch.isfinite(regression_loss(IntermediateEnergyNet(2, hidden=8, depth=1, beta=BETA), batch))


@pytest.mark.parametrize("variance", [0.3, "jacobian"])
def test_second_order_targets_of_a_quadratic_energy_do_not_depend_on_the_expansion_point(variance):
    """A quadratic E equals its second-order expansion at any x̄, so the order-2 target from the
    clean sample (x̄ = x0) equals the one from the posterior mean (x̄ = x̂0); at order 1 they differ."""
    scheduler = make_scheduler("ddpm-eps")
    q = data_model()
    model = q.noise_model(scheduler)
    a = torch.tensor([0.5, -1.0], dtype=torch.float64)

    def quadratic(x):
        return 0.5 * 1.5 * (x - a.to(x)).pow(2).sum(1) + x[:, 0]

    x0 = q.sample(64, generator=torch.Generator().manual_seed(0)).double()
    t = torch.randint(50, 950, (64,), generator=torch.Generator().manual_seed(1))
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    value, grad, hessian = energy_grad_hessian(quadratic, x0)
    common = {"cond": None, "variance": variance, "energy": quadratic}
    targets = {}
    for order in (1, 2):
        _, at_mean = closed_form_targets(scheduler, model, x0, t, noise, 3.0, order=order, **common)
        _, at_data = closed_form_targets(
            scheduler, model, x0, t, noise, 3.0, order=order, energy_bar=value, grad_bar=grad,
            hessian_bar=hessian, **common,
        )  # fmt: skip
        targets[order] = (at_mean, at_data)
    torch.testing.assert_close(targets[2][0], targets[2][1], rtol=1e-9, atol=1e-9)
    assert (targets[1][0] - targets[1][1]).abs().max() > 0.1
