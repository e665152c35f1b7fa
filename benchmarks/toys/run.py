"""One run of the benchmark: part 1 (the exact noise model), part 2 (a learned model), the outputs."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from torch import Tensor

from benchmarks.models import EpsMLP
from energy_guidance import sample
from energy_guidance.checkpoints import atomic_write
from energy_guidance.recipes.toys2d import toy_dataset
from energy_guidance.schedulers import add_noise, noise_level, training_timesteps
from energy_guidance.testing import EmpiricalIntermediateEnergy, EmpiricalNoiseModel
from energy_guidance.training import fit
from energy_guidance.variance import estimate_variance_table

from .config import Config, configure
from .methods import METHODS
from .report import plot_grid, render
from .scoring import draws_from, floors, kish_ess, score, target_of
from .smc import DIVERGENCE, run_twists
from .training import make_validation, timed


def draw(ctx: dict, guidance, n: int, cfg: Config) -> tuple[Tensor | None, float]:
    """n samples and seconds; None when the sampler diverged (non-finite values)."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    start = time.perf_counter()
    try:
        x = sample(
            ctx["scheduler"],
            ctx["model"] if guidance is None else guidance,
            (n, 2),
            num_inference_steps=cfg.num_inference_steps,
            generator=g,
        ).detach()
    except DIVERGENCE:  # non-finite values inside the step (x̂0, energy, its Hessian)
        x = None
    seconds = time.perf_counter() - start
    return (x if x is not None and bool(torch.isfinite(x).all()) else None), seconds


def collect(found: dict, part: str, name: str, beta: float, rows: list, samples: dict) -> None:
    """Move each method's result into ``rows`` and its picture into ``samples``; a weighted
    particle cloud is pictured by draws from it."""
    for method, result in found.items():
        shown = result.pop("sample", None)
        cloud = result.pop("cloud", None)
        if cloud is not None:
            shown = draws_from(*cloud)
        samples[(beta, method)] = shown
        rows.append({"part": part, "dataset": name, "beta": beta, "method": method, **result})


def run_exact(name: str, cfg: Config, log) -> tuple[list[dict], dict]:
    """Rows for every β and sampler on the exact noise model of ``name``; samples for the plots."""
    ds = toy_dataset(name)
    gen = torch.Generator().manual_seed(cfg.seed)
    data, _ = ds.sample(cfg.num_data, gen)
    energies = ds.energy(data.double()).float()
    scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    model = EmpiricalNoiseModel(data, scheduler)
    table, table_s = timed(lambda: estimate_variance_table(scheduler, model, data, generator=gen))
    ctx = {"scheduler": scheduler, "model": model, "energy": ds.energy, "data": data, "table": table}
    ctx["table_s"] = table_s
    unguided = draw(ctx, None, cfg.num_samples, cfg) if "unguided" in cfg.methods else None
    rows, samples = [], {"data": data}
    for beta in cfg.betas:
        weights = torch.softmax(-beta * energies.double(), dim=0)
        log_z = float(torch.logsumexp(-beta * energies.double(), 0) - math.log(len(data)))
        ctx["exact"] = EmpiricalIntermediateEnergy(data, beta, energies=energies)
        ctx["validation"] = make_validation(scheduler, data, weights, ctx["exact"], 512, gen)
        target = target_of(data, weights)
        label = float(weights @ -energies.double())
        found: dict[str, dict] = {}
        resampled, two = floors(target, label, cfg)
        found["resampled"], found["two_draws"] = resampled, two
        guidances: dict = {}
        if unguided is not None:
            x, seconds = unguided
            found["unguided"] = {**score(ctx, x, target), "sample_s": seconds, "sample": x}
        for method in cfg.methods:
            build = METHODS[method].build
            if build is None:  # unguided, drawn once above
                continue
            guidances[method], record = build(ctx, beta, cfg)
            x, seconds = draw(ctx, guidances[method], cfg.num_samples, cfg)
            found[method] = {**score(ctx, x, target), "sample_s": seconds, "sample": x, **record}
        found |= run_twists(cfg.twists, guidances, ctx, beta, cfg, target, label, log_z)
        collect(found, "exact", name, beta, rows, samples)
        samples[(beta, "target")] = draws_from(data, weights)
        log(
            f"[exact] {name:>12} β={beta:<4g} | "
            + " ".join(f"{m}={r['sw2']:.3f}" for m, r in found.items() if not m.startswith("smc"))
        )
        log(
            f"[exact] {name:>12} β={beta:<4g} | SMC "
            + " ".join(
                f"{m[4:]}={r['sw2']:.3f}({r.get('ess_mean', 0):.2f}, {r['sample_s']:.0f}s)"
                for m, r in found.items()
                if m.startswith("smc")
            )
        )
    return rows, samples


def fit_noise_model(data: Tensor, scheduler, cfg: Config) -> tuple[EpsMLP, float]:
    """The usual ε-prediction loss, Adam with a cosine schedule through ``training.fit``."""
    torch.manual_seed(cfg.seed)
    net = EpsMLP(2, cfg.model_hidden)
    gen = torch.Generator().manual_seed(cfg.seed + 5)
    valid = training_timesteps(scheduler)

    def loss() -> Tensor:
        idx = torch.randint(0, len(data), (512,), generator=gen)
        t = valid[torch.randint(0, len(valid), (512,), generator=gen)]
        alpha, sigma = (c.float() for c in noise_level(scheduler, t))
        noise = torch.randn(512, 2, generator=gen)
        return (net(add_noise(data[idx], noise, alpha, sigma), t) - noise).pow(2).mean()

    _, seconds = timed(lambda: fit(net, loss, steps=cfg.model_steps, lr=2e-3, progress=False, name="eps_mlp"))
    return net.eval().requires_grad_(False), seconds


def run_learned(name: str, cfg: Config, log) -> tuple[list[dict], dict]:
    """Rows for every β and sampler on a learned model of ``name``, against its own tilted target."""
    ds = toy_dataset(name)
    gen = torch.Generator().manual_seed(cfg.seed)
    data, _ = ds.sample(cfg.num_data, gen)
    scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    model, fit_s = fit_noise_model(data, scheduler, cfg)
    table = estimate_variance_table(scheduler, model, data, generator=gen)
    ctx = {"scheduler": scheduler, "model": model, "energy": ds.energy, "data": data, "table": table}
    pool, pool_s = timed(
        lambda: sample(
            scheduler,
            model,
            (cfg.target_pool, 2),
            num_inference_steps=cfg.num_inference_steps,
            generator=torch.Generator().manual_seed(cfg.seed + 11),
        ).detach()
    )
    finite = torch.isfinite(pool).all(1)
    pool = pool[finite]
    pool_energies = ds.energy(pool.double())
    unguided = draw(ctx, None, cfg.num_samples, cfg)
    data_target = target_of(data, torch.ones(len(data), dtype=torch.float64))
    sanity = {
        "fit_s": fit_s,
        "pool_s": pool_s,
        "pool_finite": int(finite.sum()),
        "sw2_to_data": data_target.sliced_wasserstein(unguided[0]) if unguided[0] is not None else math.inf,
        "data_floor": floors(data_target, math.nan, dataclasses.replace(cfg, floor_repeats=4))[0]["sw2"],
    }
    log(
        f"[learned] {name:>12} fitted in {fit_s:.1f} s; unguided SW2 to the data {sanity['sw2_to_data']:.3f} "
        f"(i.i.d. data draws: {sanity['data_floor']:.3f})"
    )
    rows, samples = [{"part": "learned", "dataset": name, "method": "model", **sanity}], {"data": data}
    for beta in cfg.betas:
        weights = torch.softmax(-beta * pool_energies, dim=0)
        log_z = float(torch.logsumexp(-beta * pool_energies, 0) - math.log(len(pool)))
        found: dict[str, dict] = {}
        target = target_of(pool, weights)
        label = float(weights @ -pool_energies.double())
        resampled, two = floors(target, label, cfg)
        found["resampled"] = {**resampled, "target_ess": kish_ess(weights)}
        found["two_draws"] = two
        guidances: dict = {}
        for method in cfg.learned_methods:
            build = METHODS[method].build
            if build is None:
                x, seconds = unguided
            else:
                guidances[method], _ = build(ctx, beta, cfg)
                x, seconds = draw(ctx, guidances[method], cfg.num_samples, cfg)
            found[method] = {**score(ctx, x, target), "sample_s": seconds, "sample": x}
        found |= run_twists(cfg.learned_twists, guidances, ctx, beta, cfg, target, label, log_z)
        collect(found, "learned", name, beta, rows, samples)
        samples[(beta, "target")] = draws_from(pool, weights)
        log(
            f"[learned] {name:>12} β={beta:<4g} target ESS {found['resampled']['target_ess']:.0f} | "
            + " ".join(f"{m}={r['sw2']:.3f}" for m, r in found.items())
        )
    return rows, samples


def main(argv=None) -> dict:
    cfg = configure(argv)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows: list[dict] = []
    walls: dict[str, float] = {}
    plots: dict[str, dict] = {"exact": {}, "learned": {}}
    log = lambda s: print(s, flush=True)  # noqa: E731
    for part, run in (("exact", run_exact), ("learned", run_learned)):
        if part not in cfg.parts:
            continue
        began = time.perf_counter()
        for name in cfg.datasets:
            r, samples = run(name, cfg, log)
            rows += r
            plots[part][name] = samples
        walls[part] = time.perf_counter() - began
    exact_title = "exact noise model (target = data re-weighted by exp(-βE))"
    learned_title = "learned MLP model (target = its own samples re-weighted by exp(-βE))"
    grids = (  # part, file name, samplers, twists, title
        ("exact", "toys_beta", cfg.methods, cfg.twists, exact_title),
        ("learned", "toys_learned_beta", cfg.learned_methods, cfg.learned_twists, learned_title),
    )
    for beta in cfg.betas:
        for part, stem, methods, twists, title in grids:
            if plots[part]:
                smc = [f"smc_{t}_K{max(cfg.smc_k)}" for t in twists] if cfg.smc_k else []
                plot_grid(out / f"{stem}{beta:g}.png", plots[part], beta, [*methods, *smc], title)
    wall = time.perf_counter() - start
    report = render(rows, cfg, walls, wall)
    print(report)
    atomic_write(out / "results.md", (report + "\n").encode())
    result = {"config": asdict(cfg), "rows": rows, "wall_s": wall, "part_wall_s": walls}
    atomic_write(out / "results.json", json.dumps(result, indent=1, default=float).encode())
    return result
