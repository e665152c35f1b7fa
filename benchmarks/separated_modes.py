"""Sharp linear tilts across two separated modes: the default guidance's mixture prior (docs/math.md (9)).

    python -m benchmarks.separated_modes             # β ∈ {1, 3, 5, 8}, seeds 0 1 2 (about a minute)
    python -m benchmarks.separated_modes --quick     # β = 5, seed 0
    python -m benchmarks.separated_modes --out DIR --betas 5 8 --seeds 0 --samples 1000

Data: two equal modes N(μ_k, W) in 2-D, μ = (-2, 0) and (2, 0.5), W = diag(0.25, 0.5) shared, and
their exact noise model (:meth:`~energy_guidance.testing.GaussianMixture.noise_model`). Energy
E = wᵀx, w = (-1, 0.5): the target q·exp(-β·E) is the tilted mixture in closed form
(:meth:`~energy_guidance.testing.GaussianMixture.tilted`), the second mode moved by -β·W·w and the
first reweighted by exp(-β·wᵀ(μ_1 - μ_2)). DPM-Solver++ (2M), 25 steps, ``--samples`` outputs per
method; the seed draws the samplers' noise.

Methods (every model call goes through a counter):

    unguided     energy_guidance.sample
    default      AnalyticEnergyGuidance(scheduler, model, energy, beta): the library's default
    single       the same with one Gaussian between the modes, ImportanceTilt(energy, beta,
                 max_components=1): the default before (9)
    exact        the exact intermediate energy of the mixture (GaussianMixtureIntermediateEnergy):
                 what this sampler gives with no estimation error
    resampling   importance resampling of unguided samples by exp(-β·E) from the pool the
                 default's measured cost buys (``equal_cost_pool``: the larger of the pools its
                 seconds and its model passes buy)

Metrics: SW2 to 20,000 draws of the target (the same projections for every method), the mean of
x_1 beside the target's, the energy gap closed ((E_unguided - E_method)/(E_unguided - E_target)),
max |x|, and the cost against unguided sampling. Outputs in ``--out`` (default
outputs/separated_modes): results.json (every row) and results.md (the table, mean over seeds).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import DPMSolverMultistepScheduler

from benchmarks.dimension import config_from_args, git_state
from energy_guidance import AnalyticEnergyGuidance, ImportanceTilt, sample
from energy_guidance.baselines import CountingModel, equal_cost_pool, importance_resampling, measure
from energy_guidance.baselines.cost import Cost
from energy_guidance.checkpoints import atomic_write
from energy_guidance.testing import GaussianMixture, sliced_wasserstein
from energy_guidance.testing.exact import GaussianMixtureIntermediateEnergy

METHODS = ("unguided", "default", "single", "exact", "resampling")
W = torch.tensor([-1.0, 0.5], dtype=torch.float64)
REFERENCE = 20_000
QUICK = {"betas": (5.0,), "seeds": (0,)}


@dataclass(frozen=True)
class Config:
    out: str = "outputs/separated_modes"
    betas: tuple[float, ...] = (1.0, 3.0, 5.0, 8.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    samples: int = 2000
    steps: int = 25
    threads: int = 1
    quick: bool = False


def mixture() -> GaussianMixture:
    """The two modes (module docstring)."""
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.5]], dtype=torch.float64)
    return GaussianMixture(torch.tensor([0.5, 0.5]), means, torch.tensor([0.25, 0.5], dtype=torch.float64))


def energy(x: torch.Tensor) -> torch.Tensor:
    return x @ W.to(x)


def run_method(method: str, beta: float, seed: int, cfg: Config, pool: int = 0) -> dict:
    """One method's samples and measured cost (``pool``: the unguided samples resampling draws)."""
    mix = mixture()
    scheduler = DPMSolverMultistepScheduler()
    counter = CountingModel(mix.noise_model(scheduler))
    generator = torch.Generator().manual_seed(seed)
    shape = (cfg.samples, 2)
    row: dict = {"method": method}
    if method == "resampling":
        result, cost = measure(
            lambda: importance_resampling(
                scheduler,
                counter,
                shape,
                energy,
                beta,
                pool=pool,
                num_inference_steps=cfg.steps,
                generator=generator,
            ),
            counter,
        )
        return {**row, "x": result.samples, "cost": cost, "pool": pool, "pool_ess": float(result.ess)}
    if method == "unguided":
        model = counter
    elif method == "default":
        model = AnalyticEnergyGuidance(scheduler, counter, energy, beta)
    elif method == "single":
        model = AnalyticEnergyGuidance(
            scheduler, counter, estimator=ImportanceTilt(energy, beta, max_components=1)
        )
    else:
        model = AnalyticEnergyGuidance(
            scheduler, counter, estimator=GaussianMixtureIntermediateEnergy(mix, energy, beta)
        )
    x, cost = measure(
        lambda: sample(scheduler, model, shape, num_inference_steps=cfg.steps, generator=generator), counter
    )
    return {**row, "x": x, "cost": cost}


def run(cfg: Config, log=print) -> dict:
    torch.set_num_threads(cfg.threads)
    rows = []
    start = time.perf_counter()
    for beta in cfg.betas:
        target = mixture().tilted(W, beta)
        reference = target.sample(REFERENCE, torch.Generator().manual_seed(12345)).double()
        e_target = float(energy(reference).mean())
        for seed in cfg.seeds:
            found = {m: run_method(m, beta, seed, cfg) for m in METHODS if m != "resampling"}
            base = found["unguided"]["cost"]
            per_sample = Cost(base.seconds / cfg.samples, base.passes // cfg.samples)
            pool = equal_cost_pool(found["default"]["cost"], per_sample, cfg.samples)
            found["resampling"] = run_method("resampling", beta, seed, cfg, pool)
            e_unguided = float(energy(found["unguided"]["x"].double()).mean())
            for method, found_row in found.items():
                x = found_row.pop("x").double()
                cost = found_row.pop("cost")
                e_method = float(energy(x).mean())
                sw2 = sliced_wasserstein(x, reference, generator=torch.Generator().manual_seed(3))
                rows.append(
                    {
                        **found_row,
                        "beta": beta,
                        "seed": seed,
                        "sw2": sw2,
                        "mean_x1": float(x[:, 0].mean()),
                        "target_x1": float(target.mean()[0]),
                        "gap_closed": (e_unguided - e_method) / (e_unguided - e_target),
                        "max_abs": float(x.abs().max()),
                        "seconds": cost.seconds,
                        "passes": cost.passes,
                        "time_ratio": cost.seconds / base.seconds,
                        "pass_ratio": cost.passes / base.passes,
                    }
                )
                log(
                    f"β {beta:g} seed {seed} {method:10s} SW2 {sw2:.3f} mean x1 {rows[-1]['mean_x1']:.2f} "
                    f"(target {rows[-1]['target_x1']:.2f}) gap {rows[-1]['gap_closed']:+.2f} "
                    f"time {rows[-1]['time_ratio']:.1f}x"
                )
    return {
        "config": asdict(cfg),
        "rows": rows,
        "wall_s": time.perf_counter() - start,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "git": git_state(),
    }


def table(result: dict) -> str:
    """results.md: per β, each method's mean over seeds."""
    cfg = result["config"]
    lines = [
        f"# Separated modes ({result['date']}, {result['machine']}, torch {result['torch']}, "
        f"{cfg['threads']} thread(s), {result['wall_s']:.0f} s)",
        "",
        f"{cfg['samples']} samples per method, DPM-Solver++ {cfg['steps']} steps, seeds {cfg['seeds']}; "
        "mean over seeds (min–max of SW2 in brackets).",
        "",
        "| β | method | SW2 | mean x_1 (target) | gap closed | max abs | time× | passes× |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for beta in cfg["betas"]:
        for method in METHODS:
            group = [r for r in result["rows"] if r["beta"] == beta and r["method"] == method]
            sw2 = [r["sw2"] for r in group]
            gap, largest = statistics.fmean(r["gap_closed"] for r in group), max(r["max_abs"] for r in group)
            lines.append(
                f"| {beta:g} | {method} | {statistics.fmean(sw2):.3f} ({min(sw2):.3f}–{max(sw2):.3f}) | "
                f"{statistics.fmean(r['mean_x1'] for r in group):.2f} ({group[0]['target_x1']:.2f}) | "
                f"{gap:+.2f} | {largest:.1f} | "
                f"{statistics.fmean(r['time_ratio'] for r in group):.1f} | "
                f"{statistics.fmean(r['pass_ratio'] for r in group):.1f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="β = 5, seed 0")
    p.add_argument("--out")
    p.add_argument("--betas", type=float, nargs="+")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--samples", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--threads", type=int)
    cfg = config_from_args(Config, QUICK, vars(p.parse_args(argv)))
    result = run(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.json", json.dumps(result, indent=1).encode())
    atomic_write(out / "results.md", table(result).encode())
    print(table(result))
    return result


if __name__ == "__main__":
    main()
