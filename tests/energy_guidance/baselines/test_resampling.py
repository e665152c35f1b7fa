"""baselines/resampling.py: importance resampling of unguided samples, its ESS and its budget."""

import math

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from energy_guidance import sample
from energy_guidance.baselines import (
    Cost,
    CountingModel,
    Resampled,
    effective_sample_size,
    equal_cost_pool,
    importance_resampling,
    resample,
)
from energy_guidance.baselines import resampling as resampling_module
from energy_guidance.testing import GaussianMixture

Z = 5.0


def test_resampled_mean_matches_the_tilted_mixture():
    """Two modes, the exact noise model, DPM-Solver++ with 25 steps, E(x) = wᵀx: the target
    q·exp(-β·wᵀx)/Z is the closed-form mixture ``tilted(w, β)``.

    Standard error of the resampled mean x̄ = (1/n)·Σ_k x_{I_k}, I_k ~ w i.i.d. given the pool:
    by the law of total variance Var(x̄) = E[Var(x̄ | pool)] + Var(E[x̄ | pool]). The first term
    is the weighted pool variance over n, ≈ sd²/n (sd: the target's, closed form); the second is
    the variance of the self-normalised importance estimate Σ_i w_i·x_i of the target mean,
    ≈ sd²/ESS (Kish's approximation, ESS = 1/Σw²). So SE = sd·√(1/n + 1/ESS), between
    sd/√min(n, ESS) and √2 times that. DPM-Solver++'s own discretisation bias is well inside
    the tolerance with the exact model (DDPM with 50 strided steps is not: its pool is biased).
    """
    data = GaussianMixture(
        torch.ones(2), torch.tensor([[-2.0, 0.0], [2.0, 0.5]]), torch.tensor([[0.25, 0.5], [0.25, 0.5]])
    )
    w, beta, n = torch.tensor([-1.0, 0.5], dtype=torch.float64), 1.0, 2000
    target = data.tilted(w, beta)
    scheduler = DPMSolverMultistepScheduler()
    result = importance_resampling(
        scheduler,
        data.noise_model(scheduler),
        (n, 2),
        lambda x: x @ w.to(x),
        beta,
        pool=10_000,  # three chunks of at most 4096
        generator=torch.Generator().manual_seed(0),
    )
    assert result.samples.shape == (n, 2) and result.log_weights.shape == (10_000,)
    assert 0.2 < float(result.ess_fraction) < 0.6  # two modes, one kept: about a third is left
    se = target.covariance().diagonal().sqrt() * math.sqrt(1 / n + 1 / float(result.ess))
    error = (result.samples.double().mean(0) - target.mean()).abs()
    assert (error <= Z * se).all(), (error, se)
    # The check can fail: the tilt moves the mean by far more than the tolerance.
    assert ((target.mean() - data.mean()).abs()[0] > 10 * Z * se[0]).all()


def test_effective_sample_size_exact_values():
    ninf = -math.inf
    assert float(effective_sample_size(torch.zeros(7))) == pytest.approx(7, rel=1e-12)
    assert float(effective_sample_size(torch.tensor([0.0, ninf, ninf]))) == pytest.approx(1, rel=1e-12)
    assert float(effective_sample_size(torch.tensor([3.0, 3.0, ninf, ninf]))) == pytest.approx(2, rel=1e-12)
    # Weights 1, 2, 3: (1 + 2 + 3)² / (1 + 4 + 9) = 36/14.
    log_w = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).log()
    assert float(effective_sample_size(log_w)) == pytest.approx(36 / 14, rel=1e-12)
    # Adding a constant changes nothing, even one that would overflow exp.
    for shift in (-2000.0, 1000.0):
        assert float(effective_sample_size(log_w + shift)) == pytest.approx(36 / 14, rel=1e-12)
    # Per condition: one ESS per row, along any dim.
    rows = torch.stack(
        [torch.zeros(4), torch.tensor([0.0, ninf, ninf, ninf]), torch.tensor([5.0, 5, ninf, ninf])]
    )
    torch.testing.assert_close(
        effective_sample_size(rows), torch.tensor([4.0, 1.0, 2.0], dtype=torch.float64)
    )
    torch.testing.assert_close(effective_sample_size(rows.T, dim=0), effective_sample_size(rows))


def flipped_models(scheduler):
    """A conditional model: cond +1 → data near x_0 = -3, cond -1 → near +3 (the energy below
    prefers the other side, so a row that saw another row's candidates would pick those)."""
    low = GaussianMixture.gaussian([-3.0, 0.0], 0.2).noise_model(scheduler)
    high = GaussianMixture.gaussian([3.0, 0.0], 0.2).noise_model(scheduler)

    def model(x, t, cond):
        return torch.where(cond[:, :1] > 0, low(x, t), high(x, t))

    return model


def signed_energy(x, cond):
    """cond +1 prefers large x_0, cond -1 small x_0."""
    return -cond[:, 0] * x[:, 0]


def test_large_beta_picks_each_rows_own_lowest_energy_candidate():
    """Best of N per condition: with β very large every row returns the lowest-energy candidate
    of its own pool, recomputed here from the documented layout (candidate j of row b is pool
    sample b·pool + j, one chunk, the same seed)."""
    scheduler = DPMSolverMultistepScheduler()
    model = flipped_models(scheduler)
    cond = torch.tensor([[1.0], [-1.0], [1.0], [1.0], [-1.0], [-1.0]])
    b, pool, steps = len(cond), 16, 10
    result = importance_resampling(
        scheduler,
        model,
        (b, 2),
        signed_energy,
        1e9,
        pool=pool,
        cond=cond,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(3),
    )
    assert (
        result.samples.shape == (b, 2) and result.log_weights.shape == (b, pool) and result.ess.shape == (b,)
    )
    torch.testing.assert_close(result.ess, torch.ones(b, dtype=torch.float64))
    repeated = cond.repeat_interleave(pool, 0)
    candidates = sample(
        scheduler,
        model,
        (b * pool, 2),
        cond=repeated,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(3),
    )
    best = signed_energy(candidates, repeated).reshape(b, pool).argmin(1)
    expected = candidates.reshape(b, pool, 2)[torch.arange(b), best]
    torch.testing.assert_close(result.samples, expected, rtol=0, atol=0)
    # Each row's pick is from its own condition's data: x_0 on the side opposite its preference.
    assert (torch.sign(result.samples[:, 0]) == -cond[:, 0]).all()


def test_beta_zero_keeps_uniform_weights_and_the_whole_pool():
    scheduler = DPMSolverMultistepScheduler()
    model = flipped_models(scheduler)
    cond = torch.tensor([[1.0], [-1.0]])
    result = importance_resampling(
        scheduler, model, (2, 2), signed_energy, 0.0, pool=5, cond=cond, num_inference_steps=3
    )
    torch.testing.assert_close(result.log_weights, torch.full((2, 5), -math.log(5), dtype=torch.float64))
    torch.testing.assert_close(result.ess, torch.full((2,), 5.0, dtype=torch.float64))
    torch.testing.assert_close(result.ess_fraction, torch.ones(2, dtype=torch.float64))
    assert isinstance(result, Resampled)


def test_the_pool_is_drawn_in_chunks_with_each_candidates_condition(monkeypatch):
    """Chunks of at most MAX_CHUNK samples (here 4), cut across rows: each candidate still gets
    its own row's condition, and the model sees the whole pool once per step."""
    monkeypatch.setattr(resampling_module, "MAX_CHUNK", 4)
    scheduler = DPMSolverMultistepScheduler()
    seen = []
    inner = flipped_models(scheduler)

    def model(x, t, cond):
        seen.append(cond.clone())
        return inner(x, t, cond)

    counter = CountingModel(model)
    cond = torch.tensor([[1.0], [-1.0], [1.0]])
    steps, pool = 2, 3
    importance_resampling(
        scheduler, counter, (3, 2), signed_energy, 1.0, pool=pool, cond=cond, num_inference_steps=steps
    )
    assert [len(c) for c in seen] == [4, 4, 4, 4, 1, 1]  # 9 candidates: chunks 4, 4, 1; 2 steps each
    assert counter.forward_samples == 3 * pool * steps
    per_candidate = torch.cat(seen[0::2])  # the first step of each chunk
    torch.testing.assert_close(per_candidate, cond.repeat_interleave(pool, 0))
    # Without a condition: `pool` samples in all, shared by the outputs.
    counter.reset()
    result = importance_resampling(
        scheduler,
        GaussianMixture.gaussian([0.0], 1.0).noise_model(scheduler),
        (7, 1),
        lambda x: x[:, 0],
        1.0,
        pool=10,
        num_inference_steps=2,
    )
    assert result.samples.shape == (7, 1) and result.log_weights.shape == (10,) and result.ess.shape == ()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"pool": 0}, "pool"),
        ({"pool": 2.5}, "pool"),
        ({"beta": -1.0}, "beta"),
        ({"beta": math.inf}, "beta"),
        ({"beta": math.nan}, "beta"),
        ({"shape": (0, 1)}, r"shape\[0\]"),
        ({"cond": torch.zeros(3, 1)}, "cond"),
    ],
)
def test_bad_inputs_are_value_errors_naming_the_argument(kwargs, name):
    scheduler = DPMSolverMultistepScheduler()
    arguments = {"shape": (2, 1), "beta": 1.0, "pool": 4, **kwargs}
    with pytest.raises(ValueError, match=name):
        importance_resampling(
            scheduler,
            GaussianMixture.gaussian([0.0], 1.0).noise_model(scheduler),
            arguments.pop("shape"),
            lambda x, *c: x[:, 0],
            arguments.pop("beta"),
            num_inference_steps=2,
            **arguments,
        )


def test_equal_cost_pool_takes_the_more_generous_measure():
    per_sample = Cost(seconds=0.01, passes=25)  # one unguided sample: 25 model evaluations
    # By time 2 s / 0.01 s = 200 samples; by passes 1000 / 25 = 40: the baseline gets 200.
    assert equal_cost_pool(Cost(seconds=2.0, passes=1000), per_sample, 4) == 200
    # By time 0.1 / 0.01 = 10; by passes 10_000 / 25 = 400: 400.
    assert equal_cost_pool(Cost(seconds=0.1, passes=10_000), per_sample, 4) == 400
    # Floors, not rounds; binary rounding (0.3 / 0.1 = 2.9999999999999996) is forgiven.
    assert equal_cost_pool(Cost(seconds=0.3, passes=0), Cost(seconds=0.1, passes=1), 1) == 3
    assert equal_cost_pool(Cost(seconds=0.0, passes=74), Cost(seconds=0.0, passes=25), 1) == 2
    # At least one candidate per output.
    assert equal_cost_pool(Cost(seconds=0.0, passes=10), per_sample, 8) == 8
    # A measure not taken (0 per sample) is left out.
    assert equal_cost_pool(Cost(seconds=5.0, passes=10**6), Cost(seconds=0.5, passes=0), 2) == 10
    # Per condition: the total shared out over the rows, rounded down, at least 1.
    assert equal_cost_pool(Cost(seconds=2.0, passes=1000), per_sample, 6, per_condition=True) == 33
    assert equal_cost_pool(Cost(seconds=0.0, passes=1), per_sample, 6, per_condition=True) == 1


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((Cost(1.0, 10), Cost(0.1, 1), 0), "batch"),
        ((Cost(-1.0, 10), Cost(0.1, 1), 1), "cost"),
        ((Cost(1.0, 10), Cost(math.nan, 1), 1), "unguided_per_sample"),
        ((Cost(1.0, 10), Cost(0.0, 0), 1), "unguided_per_sample"),
    ],
)
def test_equal_cost_pool_rejects_bad_inputs(args, name):
    with pytest.raises(ValueError, match=name):
        equal_cost_pool(*args)


def test_resample_draws_with_the_softmax_of_minus_beta_energy():
    """Energies (0, log 3, +inf) at β = 1: probabilities (3/4, 1/4, 0), Kish's ESS
    1/(9/16 + 1/16) = 1.6. The frequency of the first candidate in n draws lies within Z binomial
    standard errors of 3/4; the third (outside the domain) is never drawn."""
    candidates = torch.tensor([[0.0], [1.0], [2.0]])
    energies = torch.tensor([0.0, math.log(3.0), math.inf], dtype=torch.float64)
    n = 4000
    result = resample(candidates, energies, 1.0, n, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(result.log_weights.exp(), torch.tensor([0.75, 0.25, 0.0], dtype=torch.float64))
    assert float(result.ess) == pytest.approx(1.6, rel=1e-12)
    frequency = float((result.samples[:, 0] == 0).double().mean())
    assert abs(frequency - 0.75) <= Z * math.sqrt(0.75 * 0.25 / n)
    assert not (result.samples[:, 0] == 2).any()


def test_resample_refuses_what_it_cannot_weigh():
    with pytest.raises(ValueError, match="no candidate has a finite energy"):
        resample(torch.zeros(2, 1), torch.full((2,), math.inf), 1.0, 3)
    with pytest.raises(ValueError, match="one per candidate"):
        resample(torch.zeros(2, 1), torch.zeros(3), 1.0, 3)


def test_candidates_outside_the_energys_domain_get_no_weight_and_an_empty_row_is_named():
    """E = +inf above x_0 = 3, the middle of cond -1's data (near +3), and for every cond +1
    candidate: row 0 (cond +1) has no finite candidate, a one-line error naming it; cond -1's
    rows keep weight only below x_0 = 3, so no resampled candidate lies above it."""
    scheduler = DPMSolverMultistepScheduler()
    model = flipped_models(scheduler)

    def domain(x, cond):
        outside = (x[:, 0] > 3) | (cond[:, 0] > 0)
        return torch.where(outside, torch.full_like(x[:, 0], math.inf), signed_energy(x, cond))

    with pytest.raises(ValueError, match=r"output rows \[0\]"):
        importance_resampling(
            scheduler,
            model,
            (2, 2),
            domain,
            1.0,
            pool=8,
            cond=torch.tensor([[1.0], [-1.0]]),
            num_inference_steps=5,
        )
    cond = torch.tensor([[-1.0], [-1.0]])
    seeded = torch.Generator().manual_seed(0)  # no row whose 8 candidates all lie above 3 (odds 2^-8 each)
    result = importance_resampling(
        scheduler, model, (2, 2), domain, 1.0, pool=8, cond=cond, num_inference_steps=5, generator=seeded
    )
    assert torch.isinf(result.log_weights).any()  # some candidates were outside the domain
    assert (result.samples[:, 0] <= 3).all()
