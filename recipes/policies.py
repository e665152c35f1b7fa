"""The policies the recipe evaluates, their names and their labels in printed tables.

Every policy maps raw observations (B, k) to environment actions (B, d). AEPO draws
``num_candidates`` guided actions per state and keeps the best by Q; beside it: the paper's single
guided sample, one sample guided by the library's default (training-free) estimator, the
behaviour policy, the critic's own policy, the ablations (rescale flipped, unguided best of N),
SMC selection and the compared methods (:mod:`.comparisons`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypedDict

import numpy as np
import torch

from energy_guidance import (
    AnalyticEnergyGuidance,
    GaussianQuadrature,
    IntermediateEnergyNet,
    sample,
    smc_sample,
)
from energy_guidance.adapters import reduce_critic
from energy_guidance.baselines import dps_guidance
from energy_guidance.callables import Energy
from energy_guidance.schedulers import Scheduler
from energy_guidance.variance import VarianceTable

from .behaviour import NoiseMLP, smc_scheduler
from .comparisons import quadrature_rule
from .config import AEPOConfig
from .data import ActionScaler
from .inputs import Normalizer
from .trainers import CRITICS, RecipeCritic

Policy = Callable[[np.ndarray], np.ndarray]  # raw observations (B, k) -> environment actions (B, d)


class GuidanceOptions(TypedDict):
    """What every evaluated guidance shares (``AnalyticEnergyGuidance``'s keywords)."""

    rescale: bool | str
    scale: float
    allow_clipping: bool


TRAINING_FREE = "training_free_single"  # one sample of the library's default guidance
TEMPERED_SMC = "smc_draw_temper"  # + the power: the name of SMC with a tempered twist (a draw)
QUADRATURE_SMC = "smc_quadrature_draw_temper"  # + the power: --smc --compare quadrature, its SMC


def tempered_smc_name(power: float) -> str:
    """The policy name of SMC with the twist tempered by ``power`` (a weighted draw)."""
    return f"{TEMPERED_SMC}{power:g}"


def quadrature_smc_name(power: float) -> str:
    """The policy name of SMC with the Gaussian quadrature as twist and proposal, tempered by ``power``."""
    return f"{QUADRATURE_SMC}{power:g}"


def resolve_rescale(rescale: str, act_dim: int) -> str | bool:
    """AEPO's guidance rescale ε̃ ← ε̃·‖ε̂‖/‖ε̃‖, as ``AnalyticEnergyGuidance(rescale=...)`` takes it:
    ``"paper"`` where it is on, ``False`` where it is off (``True`` would cap the guidance term at
    ‖ε̂‖ instead, the library's own rescale). ``"auto"`` turns it on for actions of dimension ≥ 2
    (in 1-D it can only flip the guidance's sign to the unguided score's, docs/rl.md)."""
    return "paper" if rescale == "on" or (rescale == "auto" and act_dim >= 2) else False


class Policies:
    """The evaluated policies, all mapping raw observations (B, k) to environment actions (B, d).

    Every diffusion policy draws ``candidates`` actions per state (guided or not) with the
    sampling scheduler (which clips x̂0 itself, see :func:`.behaviour.sampling_scheduler`);
    with several candidates the one with the highest Q is taken.
    """

    def __init__(
        self,
        config: AEPOConfig,
        critic: RecipeCritic,
        model: NoiseMLP,
        scheduler: Scheduler,
        network: IntermediateEnergyNet,
        energy: Energy,
        normalizer: Normalizer,
        scaler: ActionScaler,
        act_dim: int,
        generator: torch.Generator,
        qgpo_network: IntermediateEnergyNet | None = None,
        cql_critic: RecipeCritic | None = None,
        variance_table: VarianceTable | None = None,
    ):
        self.config, self.critic, self.model, self.scheduler = config, critic, model, scheduler
        self.energy, self.normalizer, self.scaler = energy, normalizer, scaler
        self.act_dim, self.generator, self.cql_critic = act_dim, generator, cql_critic
        self.rescale = resolve_rescale(config.rescale, act_dim)
        common = GuidanceOptions(
            rescale=self.rescale,
            scale=config.guidance_scale,
            allow_clipping=config.behaviour.clip_sample,  # actions live in [-1, 1]: clipping is meant
        )
        self.guidance = AnalyticEnergyGuidance(scheduler, model, estimator=network, **common)
        # The library's default guidance, training-free: ImportanceTilt on the run's variance
        # table (the model's own calibration when None), no rescale (the library's default); the
        # evaluation's guidance scale applies (so it is exactly the default at --guidance-scale 1)
        self.training_free = AnalyticEnergyGuidance(
            scheduler,
            model,
            energy,
            config.beta,
            variance_table=variance_table,
            scale=config.guidance_scale,
            allow_clipping=config.behaviour.clip_sample,
        )
        self.smc_scheduler = smc_scheduler(config.behaviour, scheduler)
        self.compared: dict[str, AnalyticEnergyGuidance] = {}  # --compare: name -> guidance
        if qgpo_network is not None:
            self.compared["qgpo"] = AnalyticEnergyGuidance(scheduler, model, estimator=qgpo_network, **common)
        if "dps" in config.compare:
            self.compared["dps"] = dps_guidance(scheduler, model, energy, config.beta, **common)
        if "quadrature" in config.compare:
            quadrature = GaussianQuadrature(
                energy, config.beta, config.variance, variance_table, rule=quadrature_rule(act_dim)
            )
            self.compared["quadrature"] = AnalyticEnergyGuidance(
                scheduler, model, estimator=quadrature, **common
            )

    def smc(
        self,
        obs: np.ndarray,
        select: str,
        temper: float = 0.0,
        guidance: AnalyticEnergyGuidance | None = None,
    ) -> np.ndarray:
        """One action per state from SMC with K = ``num_candidates`` particles (the network's E_t as
        the twist, the guided DPM-Solver++ SDE step as the proposal, β·E(a | s) at the end):
        ``select="draw"`` draws it from the final weighted particles, ``"best_weight"`` takes the
        highest-weight particle. The model is evaluated K times per state and step, as for
        best-of-K (plus the network's cheap twist). ``temper``: p of the tempered twist (0: none);
        ``guidance``: another twist and proposal (its scheduler is replaced by SMC's)."""
        states = self.normalizer(obs)
        result = smc_sample(
            self.smc_scheduler,
            (guidance or self.guidance).replace(scheduler=self.smc_scheduler),
            (len(obs), self.act_dim),
            num_particles=self.config.num_candidates,
            cond=states,
            num_inference_steps=self.config.inference_steps,
            generator=self.generator,
            resample=select == "draw",
            energy=self.energy,
            temper=temper,
        )
        actions = result.samples
        if select == "best_weight":
            actions = actions[torch.arange(len(obs), device=actions.device), result.log_weights.argmax(dim=1)]
        return self.scaler.from_unit(actions.detach().clamp(-1, 1).double().cpu().numpy())

    def diffusion(
        self, obs: np.ndarray, guidance: AnalyticEnergyGuidance | None, candidates: int
    ) -> np.ndarray:
        """``candidates`` samples per state (guided by ``guidance``, or not), the best by Q."""
        states = self.normalizer(obs).repeat_interleave(candidates, dim=0)
        with torch.no_grad():
            actions = sample(
                self.scheduler,
                self.model if guidance is None else guidance,
                (len(states), self.act_dim),
                cond=states,
                num_inference_steps=self.config.inference_steps,
                generator=self.generator,
            ).clamp(-1, 1)
            if candidates > 1:
                q = reduce_critic(self.critic.q_values(states, actions), len(states), self.config.reduce)
                best = q.reshape(len(obs), candidates).argmax(dim=1)
                rows = torch.arange(len(obs), device=best.device)
                actions = actions.reshape(len(obs), candidates, -1)[rows, best]
        return self.scaler.from_unit(actions.double().cpu().numpy())

    def critic_policy(self, obs: np.ndarray, critic: RecipeCritic | None = None) -> np.ndarray:
        with torch.no_grad():
            actions = (critic or self.critic).act(self.normalizer(obs))
        return self.scaler.from_unit(actions.double().cpu().numpy())

    def evaluated(self) -> dict[str, Policy]:
        """name -> policy: AEPO (best of N by Q, and the paper's single guided sample), one sample
        of the training-free default guidance, the behaviour policy, the critic's own policy, and
        the ablations."""
        n, guidance = self.config.num_candidates, self.guidance
        flipped = guidance.replace(rescale=False if self.rescale else "paper")  # AEPO's rescale, or none
        policies: dict[str, Policy] = {
            "aepo": lambda o: self.diffusion(o, guidance, n),
            "guided_single": lambda o: self.diffusion(o, guidance, 1),
            TRAINING_FREE: lambda o: self.diffusion(o, self.training_free, 1),
            "behaviour": lambda o: self.diffusion(o, None, 1),
            self.critic.policy_name: self.critic_policy,
        }
        if self.config.ablations:
            policies |= {
                f"guided_single_rescale_{'off' if self.rescale else 'on'}": lambda o: self.diffusion(
                    o, flipped, 1
                ),
                "unguided_best_of_n": lambda o: self.diffusion(o, None, n),
            }
        for name, compared in self.compared.items():
            policies[name] = functools.partial(self.diffusion, guidance=compared, candidates=n)
        if self.cql_critic is not None:
            policies[self.cql_critic.policy_name] = lambda o: self.critic_policy(o, self.cql_critic)
        if self.config.smc:
            policies |= {
                "smc_draw": lambda o: self.smc(o, "draw"),
                "smc_best_weight": lambda o: self.smc(o, "best_weight"),
            }
            if self.config.smc_temper:
                policies[tempered_smc_name(self.config.smc_temper)] = lambda o: self.smc(
                    o, "draw", self.config.smc_temper
                )
            if "quadrature" in self.compared:  # training-free SMC: the quadrature as twist and proposal
                policies[quadrature_smc_name(self.config.smc_temper)] = lambda o: self.smc(
                    o, "draw", self.config.smc_temper, self.compared["quadrature"]
                )
        return policies


LABELS = {
    "aepo": "AEPO (guided, best of N by Q)",
    "behaviour": "diffusion BC (behaviour policy, unguided)",
    "guided_single": "AEPO, 1 guided sample (the paper's policy)",
    TRAINING_FREE: "training-free guidance (the library's default), 1 sample",
    "guided_single_rescale_on": "ablation: guided, 1 sample, rescale on",
    "guided_single_rescale_off": "ablation: guided, 1 sample, rescale off",
    "unguided_best_of_n": "IDQL-style: unguided, best of N by Q",
    "smc_draw": "SMC, N particles: a weighted draw",
    "smc_best_weight": "SMC, N particles: highest weight",
    "qgpo": "QGPO (CEP energy, best of N by Q)",
    "dps": "DPS-style guidance (best of N by Q)",
    "quadrature": "Gaussian-quadrature guidance (best of N by Q)",
}


def label(name: str) -> str:
    """A policy's name in printed tables (a critic's own policy: its ``policy_label``)."""
    labels = LABELS | {cls.policy_name: cls.policy_label for cls in CRITICS.values()}
    if name.startswith(TEMPERED_SMC):
        return f"SMC, N particles, twist tempered (p = {name.removeprefix(TEMPERED_SMC)}): a draw"
    if name.startswith(QUADRATURE_SMC):
        return f"SMC, N particles, quadrature twist (p = {name.removeprefix(QUADRATURE_SMC)}): a draw"
    return labels.get(name, name)
