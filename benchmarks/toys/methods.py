"""The samplers of the toy benchmark by name: the registry.

:data:`METHODS` maps each name (the report's column, the CLI's choice) to a :class:`Method`: a
one-line description (shown by ``--help`` and the report) and a factory that builds the guidance
for one data set and β. :data:`TWISTS` maps each SMC twist to the method whose guidance it uses
and whether it is tempered. Adding a sampler is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from energy_guidance import AnalyticEnergyGuidance, GaussianQuadrature
from energy_guidance.baselines import dps_guidance
from energy_guidance.variance import Constant

from .training import Trainer, classifier, contrastive, regression, train_learned

if TYPE_CHECKING:
    from .config import Config

# A factory: (ctx, β, cfg) -> (the guidance, a record for the report's row). ``ctx`` holds the data
# set's scheduler, model, energy, data, variance table (and its seconds, table_s); on the exact
# noise model also the exact estimator (exact) and validation points for learned estimators.
Build = Callable[[dict, float, "Config"], tuple[AnalyticEnergyGuidance, dict]]
Kind = Literal["model", "exact", "training-free", "learned"]


@dataclass(frozen=True)
class Method:
    description: str
    kind: Kind  # exact and learned need the exact noise model (part 1 only)
    build: Build | None = None  # None: the model itself, unguided


def exact(ctx: dict, beta: float, cfg: Config) -> tuple[AnalyticEnergyGuidance, dict]:
    return AnalyticEnergyGuidance(ctx["scheduler"], ctx["model"], estimator=ctx["exact"]), {}


def dps(ctx: dict, beta: float, cfg: Config) -> tuple[AnalyticEnergyGuidance, dict]:
    return dps_guidance(ctx["scheduler"], ctx["model"], ctx["energy"], beta), {}


def closed_form(order: int, variance: str, gradient: str = "autograd") -> Build:
    def build(ctx: dict, beta: float, cfg: Config) -> tuple[AnalyticEnergyGuidance, dict]:
        guidance = AnalyticEnergyGuidance(
            ctx["scheduler"],
            ctx["model"],
            ctx["energy"],
            beta,
            variance=variance,
            variance_table=ctx["table"],
            order=order,
            gradient=gradient,
            floor=cfg.floor,
        )
        return guidance, {}

    return build


def quadrature(points: int, variance: str) -> Build:
    def build(ctx: dict, beta: float, cfg: Config) -> tuple[AnalyticEnergyGuidance, dict]:
        estimator = GaussianQuadrature(ctx["energy"], beta, variance, ctx["table"], points=points)
        return AnalyticEnergyGuidance(ctx["scheduler"], ctx["model"], estimator=estimator), {}

    return build


def learned(trainer: Trainer) -> Build:
    def build(ctx: dict, beta: float, cfg: Config) -> tuple[AnalyticEnergyGuidance, dict]:
        net, record = train_learned(trainer, ctx, beta, cfg)
        return AnalyticEnergyGuidance(ctx["scheduler"], ctx["model"], estimator=net), record

    return build


def free(build: Build, description: str) -> Method:
    return Method(description, "training-free", build)


def net(trainer: Trainer, description: str) -> Method:
    return Method(
        f"IntermediateEnergyNet at equal training wall time, {description}", "learned", learned(trainer)
    )


DV, JAC = "data_var", "jacobian"  # the variance: marginal table, local second-order Tweedie
TW = "tweedie"  # the Tweedie gradient (4)
METHODS: dict[str, Method] = {
    "unguided": Method("the model", "model"),
    "exact": Method("EmpiricalIntermediateEnergy, the exact E_t: the sampler's own floor", "exact", exact),
    "dps": free(dps, "baselines.dps_guidance: β·E(x̂0), no variance term (DPS-style)"),
    "cf1_dv": free(closed_form(1, DV), "the first-order closed form (1), data_var"),
    "cf1_jac": free(closed_form(1, JAC), "(1) with jacobian (exact for the exact model)"),
    "cf2_dv": free(closed_form(2, DV), "the second-order closed form (3), data_var"),
    "cf2_jac": free(closed_form(2, JAC), "(3) with jacobian"),
    "tw1_dv": free(closed_form(1, DV, TW), "(1) with the Tweedie gradient (4), data_var"),
    "tw2_dv": free(closed_form(2, DV, TW), "(3) with the Tweedie gradient (4), data_var"),
    "tw1_jac": free(closed_form(1, JAC, TW), "(1) with the Tweedie gradient (4), jacobian"),
    "tw2_jac": free(closed_form(2, JAC, TW), "(3) with the Tweedie gradient (4), jacobian"),
    "gh3_dv": free(quadrature(3, DV), "the quadrature (7), 3 Gauss-Hermite points per dimension, data_var"),
    "gh3_jac": free(quadrature(3, JAC), "the quadrature (7), 3 points per dimension, jacobian"),
    "gh5_jac": free(quadrature(5, JAC), "the quadrature (7), 5 points per dimension, jacobian"),
    "gh25_jac": free(
        quadrature(25, JAC), "the quadrature (7), 25 points per dimension (the Gaussian integral)"
    ),
    "net_cf1": net(regression(DV, 1), "regressed on (1)'s targets (data_var, x̄ = x0)"),
    "net_cf2": net(regression(DV, 2), "regressed on (3)'s targets (data_var, x̄ = x0)"),
    "net_cum1": net(regression(Constant(0.0), 1), "regressed on the first cumulant β·E(x̄) + β·gᵀ(x̂0 - x̄)"),
    "net_gh3": net(
        regression(DV, quadrature=True), "regressed on the quadrature (7) at x̂0(x_t) (data_var, 3 points)"
    ),
    "cep": net(contrastive, "trained with QGPO's contrastive loss (baselines)"),
    "classifier": net(classifier, "trained as a classifier of the noised target against the noised data"),
}


@dataclass(frozen=True)
class Twist:
    method: str  # the guidance that is the twist and the proposal
    tempered: bool = False  # smc_sample(temper=--temper), docs/math.md (5)

    @property
    def description(self) -> str:
        tempered = ", tempered by --temper" if self.tempered else ""
        return f"smc_sample with {self.method}'s guidance as twist and proposal{tempered}"


TWISTS: dict[str, Twist] = {
    "dps": Twist("dps"),
    "cf1_dv": Twist("cf1_dv"),
    "cf2_dv": Twist("cf2_dv"),
    "tw2_dv": Twist("tw2_dv"),
    "net_cf2": Twist("net_cf2"),
    "classifier": Twist("classifier"),
    "exact": Twist("exact"),
    "dps_t": Twist("dps", tempered=True),
    "tw2_dv_t": Twist("tw2_dv", tempered=True),
    "gh3_jac": Twist("gh3_jac"),
    "gh3_jac_t": Twist("gh3_jac", tempered=True),
}

TRAINING_FREE = tuple(name for name, m in METHODS.items() if m.kind == "training-free")
LEARNED = tuple(name for name, m in METHODS.items() if m.kind == "learned")
LEARNED_MODEL_METHODS = ("unguided", *TRAINING_FREE)  # part 2: what runs without the exact model
LEARNED_TWISTS = tuple(name for name, t in TWISTS.items() if METHODS[t.method].kind == "training-free")


def choices(registry: dict, names: tuple[str, ...] | None = None) -> str:
    """'name: description' per entry, for --help and the report."""
    return "; ".join(f"{name}: {registry[name].description}" for name in names or registry)
