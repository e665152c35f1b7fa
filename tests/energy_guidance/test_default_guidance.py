"""The default guidance, ``AnalyticEnergyGuidance(scheduler, model, energy, beta)``, as a user meets it.

Issue 17's bar for the default, checked with a TRAINED model (the small ε-MLP of
test_trained_models.py, 1,500 Adam steps on the two-mode mixture) and with the exact model of a
32-D mixture under a sharp quadratic:

- finite, and inside the data's range (|x| ≤ 8; the data lie within |x| < 4.5);
- at least half of the unguided energy gap closed: E_un − E_guided ≥ ½·(E_un − E_target) − Z·SE,
  the SE combining the Monte Carlo errors of the three means (the target's by its importance
  weights, Σw²(E − Ē)²);
- no farther from the target than unguided sampling: SW2(guided, target) < SW2(unguided, target),
  both with the same number of samples and the same projections.

The target is the model's own tilted target: its unguided samples weighted by exp(−β·E) (for the
trained model), or the exact tilted mixture (for the exact one).
"""

import math
import warnings

import diffusers
import pytest
import torch

from energy_guidance import AnalyticEnergyGuidance, NonFiniteError, sample
from energy_guidance.guidance import GuidanceExplosionWarning
from energy_guidance.testing import GaussianMixture, sliced_wasserstein

from .schedulers import make_scheduler
from .test_trained_models import DATA, adapted, trained  # noqa: F401 (the fixture)

GUIDED, REFERENCE, STEPS, Z, BOUND = 1000, 20000, 20, 5.0, 8.0
C = torch.tensor([1.0, 1.5])
ENERGIES = {
    "distance": lambda x: (x - C.to(x)).norm(dim=1),
    "sharp quadratic": lambda x: 5 * (x - C.to(x)).pow(2).sum(1),
}


@pytest.fixture(scope="module")
def eps_model(request):
    """test_trained_models.py's ε-model (its ``trained`` fixture, trained once per module)."""
    return request.getfixturevalue("trained")["epsilon"]


@pytest.fixture(scope="module")
def flow_model(request):
    """test_trained_models.py's flow-velocity model."""
    return request.getfixturevalue("trained")["flow"]


_REFERENCES: dict[str, torch.Tensor] = {}


def reference(name: str, model, kind: str = "epsilon") -> torch.Tensor:
    """REFERENCE unguided samples of the trained model on scheduler ``name`` (cached)."""
    if name not in _REFERENCES:
        scheduler = make_scheduler(name)
        _REFERENCES[name] = sample(
            scheduler,
            adapted(model, kind, scheduler),
            (REFERENCE, 2),
            num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(1),
        )
    return _REFERENCES[name]


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> tuple[float, float]:
    mean = float(weights @ values)
    return mean, math.sqrt(float((weights**2 * (values - mean) ** 2).sum()))


def check_bar(guided, unguided, target, weights, energy):
    """The three parts of the bar (module docstring); ``weights`` None for an unweighted target."""
    assert bool(torch.isfinite(guided).all())
    assert float(guided.abs().max()) <= BOUND, float(guided.abs().max())
    e_g, e_u, e_t = energy(guided).double(), energy(unguided).double(), energy(target).double()
    if weights is None:
        weights = torch.full((len(target),), 1 / len(target), dtype=torch.float64)
    target_mean, target_se = weighted_mean(e_t, weights)
    se = math.sqrt(e_g.var() / len(e_g) + e_u.var() / len(e_u) + target_se**2)
    gap, closed = float(e_u.mean()) - target_mean, float(e_u.mean() - e_g.mean())
    assert closed >= 0.5 * gap - Z * se, (float(e_g.mean()), float(e_u.mean()), target_mean, se)
    gen = torch.Generator().manual_seed(3)
    sw_guided = sliced_wasserstein(guided, target, generator=gen, y_weights=weights)
    gen = torch.Generator().manual_seed(3)
    sw_unguided = sliced_wasserstein(unguided, target, generator=gen, y_weights=weights)
    assert sw_guided < sw_unguided, (sw_guided, sw_unguided)


def run_case(model, name: str, energy_name: str, beta: float, kind: str = "epsilon"):
    energy = ENERGIES[energy_name]
    ref = reference(name, model, kind)
    weights = torch.softmax(-beta * energy(ref).double(), 0)
    scheduler = make_scheduler(name)
    guidance = AnalyticEnergyGuidance(scheduler, adapted(model, kind, scheduler), energy, beta)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GuidanceExplosionWarning)
        guided = guidance.sample(
            (GUIDED, 2), num_inference_steps=STEPS, generator=torch.Generator().manual_seed(2)
        )
    check_bar(guided, ref[-GUIDED:], ref, weights, energy)


@pytest.mark.parametrize("beta", [0.1, 1.0, 5.0, 20.0])
@pytest.mark.parametrize("energy_name", sorted(ENERGIES))
def test_default_with_a_trained_model_meets_the_bar_on_dpm_solver(eps_model, energy_name, beta):
    run_case(eps_model, "dpm++-eps", energy_name, beta)


# One configuration per scheduler family (ε models; flow models are in test_trained_models.py).
FAMILIES = [
    "ddpm-eps", "ddim-v", "pndm-eps", "lcm-eps", "dpm-singlestep-eps", "deis-eps", "unipc-v",
    "euler-eps", "euler-ancestral-eps", "lms-eps", "heun-eps", "kdpm2-eps", "edm-euler-eps",
]  # fmt: skip


@pytest.mark.parametrize("name", FAMILIES)
def test_default_with_a_trained_model_meets_the_bar_on_every_family(eps_model, name):
    run_case(eps_model, name, "distance", 5.0)


@pytest.mark.parametrize("name", ["dpm++-flow", "flow-euler", "flow-heun"])
def test_default_with_a_trained_flow_model_meets_the_bar(flow_model, name):
    """Flow matching: the first step is pure noise (α = 0) and left unguided."""
    run_case(flow_model, name, "distance", 5.0, kind="flow")


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_default_with_a_trained_model_meets_the_bar_on_every_family_sharp(eps_model, name):
    """β = 20 on the sharp quadratic (β = 0.1 passed on every family too, 2026-12-06; not kept, for time)."""
    run_case(eps_model, name, "sharp quadratic", 20.0)


def test_default_with_the_exact_32d_model_and_a_sharp_quadratic():
    """The case where the paper's form reached |x| ≈ 6,000: d = 32, four components, exact noise
    model, E = ½k‖x − c‖² with βk = 20, c near the lightest component."""
    d = 32
    g = torch.Generator().manual_seed(0)
    means = 2 * torch.randn(4, d, generator=g, dtype=torch.float64)
    variances = 0.1 + 0.4 * torch.rand(4, d, generator=g, dtype=torch.float64)
    mixture = GaussianMixture(torch.tensor([0.4, 0.3, 0.2, 0.1]), means, variances)
    centre = (means[3] + 0.5 * torch.randn(d, generator=g, dtype=torch.float64)).float()
    k, beta = 10.0, 2.0

    def energy(x):
        return 0.5 * k * (x - centre.to(x)).pow(2).sum(1)

    target = mixture.quadratic_tilted(centre, k, beta)[0].sample(4 * GUIDED, generator=g)
    scheduler = diffusers.DPMSolverMultistepScheduler()
    model = mixture.noise_model(scheduler)
    gen = torch.Generator().manual_seed(1)
    unguided = sample(scheduler, model, (GUIDED, d), num_inference_steps=25, generator=gen)
    guidance = AnalyticEnergyGuidance(scheduler, model, energy, beta)
    guided = guidance.sample((GUIDED, d), num_inference_steps=25, generator=torch.Generator().manual_seed(2))
    bound = float(mixture.sample(100_000, generator=g).abs().max())
    assert float(guided.abs().max()) <= bound
    global BOUND
    saved, BOUND = BOUND, bound
    try:
        check_bar(guided, unguided, target, None, energy)
    finally:
        BOUND = saved


def test_the_explosion_detector_names_the_papers_form_with_a_trained_model(eps_model):
    """The paper's form differentiated through the trained model explodes (issue 17); the warning
    fires and names the fix, before or instead of a non-finite error."""
    scheduler = make_scheduler("dpm++-eps")
    guidance = AnalyticEnergyGuidance(
        scheduler, adapted(eps_model, "epsilon", scheduler), ENERGIES["distance"], 5.0, variance="jacobian"
    )
    with pytest.warns(GuidanceExplosionWarning, match="default"):
        try:
            guidance.sample((256, 2), num_inference_steps=STEPS, generator=torch.Generator().manual_seed(2))
        except NonFiniteError:
            pass


def test_capped_rescale_never_raises_the_energy(eps_model):
    """rescale=True shortens the guidance term only, so the mean energy stays below unguided's
    (within Monte Carlo error); AEPO's rescale ("paper") is what raised it (issue 17)."""
    name, energy, beta = "dpm++-eps", ENERGIES["distance"], 5.0
    ref = reference(name, eps_model)
    scheduler = make_scheduler(name)
    guidance = AnalyticEnergyGuidance(
        scheduler, adapted(eps_model, "epsilon", scheduler), energy, beta, rescale=True
    )
    guided = guidance.sample(
        (GUIDED, 2), num_inference_steps=STEPS, generator=torch.Generator().manual_seed(2)
    )
    e_g, e_u = energy(guided).double(), energy(ref).double()
    se = math.sqrt(e_g.var() / len(e_g) + e_u.var() / len(e_u))
    assert float(e_g.mean()) <= float(e_u.mean()) + Z * se
    assert float(e_g.mean()) < float(e_u.mean()) - Z * se  # and it still guides


def test_a_model_that_cannot_be_differentiated_is_named_by_the_papers_form_and_runs_by_default():
    """A model under torch.no_grad(): the paper's form (autograd through the model) used to run
    with ∂x̂0/∂x_t = I/α and return a mean of 36 where 2.4 is right (issue 17); it now raises a
    TypeError naming the cause, in every closed-form mode that differentiates the model, while
    the default, which needs no model gradient, runs and tilts."""
    scheduler = diffusers.DPMSolverMultistepScheduler()
    exact = DATA.noise_model(scheduler)

    def frozen(x, t):
        with torch.no_grad():
            return exact(x, t)

    def energy(x):
        return -x[:, 0]

    for options in ({"variance": 0.0}, {"variance": "jacobian"}, {"order": 2}):
        guidance = AnalyticEnergyGuidance(scheduler, frozen, energy, 1.0, **options)
        with pytest.raises(TypeError, match="no_grad"):
            guidance.sample((8, 2), num_inference_steps=5, generator=torch.Generator().manual_seed(0))
    guided = AnalyticEnergyGuidance(scheduler, frozen, energy, 1.0).sample(
        (GUIDED, 2), num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0)
    )
    unguided = sample(
        scheduler, exact, (GUIDED, 2), num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0)
    )
    se = math.sqrt(float(guided[:, 0].var() + unguided[:, 0].var()) / GUIDED)
    assert float(guided[:, 0].mean() - unguided[:, 0].mean()) > Z * se


def test_default_weights_the_modes_of_an_exact_32d_mixture_as_the_tilt_does():
    """A linear tilt moves mass between modes: the target q·exp(-β·wᵀx) reweights each component
    k by exp(-β·wᵀμ_k + ½β²·wᵀV_k·w). The fraction of guided samples in each mode must match the
    target's within Z standard errors, the s.e. combining the guided samples' binomial error with
    that of the 256 calibration samples whose mode fractions the tilt reweights at high noise
    (√(p(1-p)(1/n + 1/256))). (A Gaussian posterior alone misses this: it left 0.49 where the
    target has 0.65.)"""
    d, n = 32, GUIDED
    g = torch.Generator().manual_seed(0)
    means = 2 * torch.randn(4, d, generator=g, dtype=torch.float64)
    variances = 0.1 + 0.4 * torch.rand(4, d, generator=g, dtype=torch.float64)
    mixture = GaussianMixture(torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64), means, variances)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    w = w / w.norm()
    beta = 1.0
    target = mixture.tilted(w, beta).weights

    def energy(x):
        return x @ w.to(x)

    scheduler = diffusers.DPMSolverMultistepScheduler()
    model = mixture.noise_model(scheduler)
    guidance = AnalyticEnergyGuidance(scheduler, model, energy, beta)
    x = guidance.sample((n, d), num_inference_steps=25, generator=torch.Generator().manual_seed(2)).double()
    log_lik = -0.5 * ((x[:, None] - means[None]) ** 2 / variances[None] + variances[None].log()).sum(-1)
    fractions = torch.bincount(log_lik.argmax(1), minlength=4).double() / n
    se = (target * (1 - target) * (1 / n + 1 / 256)).sqrt()
    assert bool(((fractions - target).abs() <= Z * se).all()), (fractions.tolist(), target.tolist())


def test_a_sharp_linear_tilt_across_two_separated_modes_lands_on_the_tilted_mode():
    """Two modes N(μ_k, W), W = diag(0.25, 0.5) shared, μ = (-2, 0) and (2, 0.5); E = wᵀx with
    w = (-1, 0.5), β = 5 (exact model). The target is the second mode moved to μ_2 - β·W·w =
    (3.25, -0.75); the first keeps a weight of exp(-18.75). A Gaussian posterior with the data's
    covariance (which holds the distance between the modes) pushed x_1 to 4.47 here, against the
    clamp of the data's box. The default's fit of the mixture (9) to its 256 calibration samples
    errs by (μ̂_2 - μ_2) - β·(Ŵ - W)·w, whose standard error per coordinate i is
    √(W_ii/128 + β²·Σ_j w_j²·(W_ii·W_jj + W_ij²)/256); with the guided mean's own √(W_ii/n),
    the guided mean must lie within Z of those of the target."""
    n, beta = GUIDED, 5.0
    variance = torch.tensor([0.25, 0.5], dtype=torch.float64)
    mixture = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-2.0, 0.0], [2.0, 0.5]]), variance)
    w = torch.tensor([-1.0, 0.5], dtype=torch.float64)
    target = mixture.tilted(w, beta)
    assert float(target.weights[0]) < 1e-8

    def energy(x):
        return x @ w.to(x)

    scheduler = diffusers.DPMSolverMultistepScheduler()
    guidance = AnalyticEnergyGuidance(scheduler, mixture.noise_model(scheduler), energy, beta)
    x = guidance.sample((n, 2), num_inference_steps=25, generator=torch.Generator().manual_seed(2)).double()
    assert bool((x[:, 0] > 0).all())  # every sample in the second mode
    covariance_error = variance[:, None] * variance[None] + torch.diag(variance**2)  # 256·Var(Ŵ_ij)
    fit_var = variance / 128 + beta**2 * covariance_error @ w**2 / 256
    se = (fit_var + variance / n).sqrt()
    error = x.mean(0) - target.means[1]
    assert bool((error.abs() <= Z * se).all()), (x.mean(0).tolist(), target.means[1].tolist(), se.tolist())
