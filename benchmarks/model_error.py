"""How good the dimension sweep's trained noise model is, per dimension, with and without the skip.

    python -m benchmarks.model_error            # d ∈ {2, 8, 32, 128}, seeds 0 1 2 (12 min, 1 thread)
    python -m benchmarks.model_error --quick    # d ∈ {2, 32}, seed 0, 1,024 samples, 1 sampler seed
    python -m benchmarks.model_error --dims 128 --seeds 0 --out DIR

For each d and seed s: benchmarks.dimension's data, the mixture ``make_mixture(d, s)``, and its
trained ε-MLP exactly as ``trained_model`` makes it with ``--seed s`` (3,000 Adam steps of ``fit``,
cached in ``<out>/models``), in both forms whatever d:

    plain   ε̂ = MLP(x_t, t)                                    (the sweep's model below d = 64)
    skip    ε̂ = σ_t·x_t/(σ_d²·α_t² + σ_t²) + MLP(x_t, t)       (from d = SKIP_FROM_DIM = 64)

σ_d the data's RMS per-coordinate s.d.; x_t = α_t·x0 + σ_t·ε on the DDPM schedule (α_t² = ᾱ_t).
The yardstick is the EXACT noise model of the mixture Σ_k π_k N(μ_k, diag(v_k)):

    ε*(x_t, t) = σ_t·Σ_k w_k(x_t)·(x_t − α_t·μ_k)/(α_t²·v_k + σ_t²)
    w_k(x_t) ∝ π_k·N(x_t; α_t·μ_k, α_t²·v_k + σ_t²)

Measured, per (d, seed, model):

(a) unguided SW2 to the data: ``--samples`` draws of energy_guidance.sample with the sweep's
    sampler (DPM-Solver++ 2M, 25 steps), SW2 (the sweep's: 256 fixed directions) against
    ``--ref-size`` draws of the mixture, averaged over ``--sampler-seeds`` generators; max |x|.
(b) the floors at that d: the exact model's SW2 with the same sampler and generators, and that
    of ``--samples`` fresh draws of the mixture (the metric's own noise at this sample size).
(c) the per-coordinate RMS ε error at t ∈ ``--timesteps``, on x_t from fresh x0 and ε:

        err(t) = sqrt(E‖ε̂(x_t, t) − ε*(x_t, t)‖² / d)

    (0 for the exact model). A sampler's x̂0 = (x_t − σ_t·ε̂)/α_t carries σ_t/α_t times it
    (157 at t = 999): the high-noise error is the one the sampler amplifies most.

Outputs in ``--out`` (default outputs/model_error): results.json (every (d, seed, model) row,
the configuration, the machine, the git state) and results.md (the table, also printed: per d
and model the means over seeds, SW2's min–max in brackets, the largest max |x|).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import fmean

import torch
from diffusers import DDPMScheduler

from benchmarks import dimension
from benchmarks.dimension import (
    _generator,
    config_from_args,
    dpm_scheduler,
    git_state,
    make_mixture,
    trained_model,
)
from energy_guidance import sample
from energy_guidance.checkpoints import atomic_write
from energy_guidance.schedulers import noise_level
from energy_guidance.testing import WeightedTarget

FORMS = {"plain": False, "skip": True}  # trained_model's skip switch


@dataclass
class Config:
    dims: tuple[int, ...] = (2, 8, 32, 128)
    seeds: tuple[int, ...] = (0, 1, 2)  # the sweep's --seed: the mixture and the training
    samples: int = 4096  # unguided samples per sampler seed
    sampler_seeds: int = 3
    ref_size: int = 20000  # draws of the mixture that SW2 is measured against
    timesteps: tuple[int, ...] = (0, 250, 500, 750, 999)
    eps_samples: int = 2048  # x_t per timestep for the ε error
    model_steps: int = 3000
    steps: int = 25  # DPM-Solver++ steps
    threads: int = 1
    quick: bool = False
    out: str = "outputs/model_error"


QUICK = dict(dims=(2, 32), seeds=(0,), samples=1024, sampler_seeds=1)


def eps_error(model, mix, timesteps, n: int, generator: torch.Generator) -> dict[int, float]:
    """RMS per coordinate of ε̂ − ε* at each DDPM timestep; the model takes float64 x_t."""
    scheduler, errors = DDPMScheduler(), {}
    for t in timesteps:
        alpha, sigma = noise_level(scheduler, t)
        x0 = mix.sample(n, generator=generator).double()
        x_t = alpha * x0 + sigma * torch.randn(n, mix.dim, generator=generator, dtype=torch.float64)
        exact = mix.noise_prediction(x_t, alpha, sigma)
        with torch.no_grad():
            errors[t] = float((model(x_t, torch.full((n,), t)) - exact).pow(2).mean().sqrt())
    return errors


def measure_seed(d: int, seed: int, cfg: Config, log) -> list[dict]:
    """The rows of one (d, seed): data, exact, plain, skip."""
    mix = make_mixture(d, seed)
    ref = mix.sample(cfg.ref_size, generator=_generator(seed, "model error reference", d)).double()
    directions = torch.Generator().manual_seed(dimension.DIRECTIONS_SEED)  # dimension.sw2's
    target = WeightedTarget(ref, num_projections=dimension.PROJECTIONS, generator=directions)
    # ε* on the DDPM schedule that trained the nets (the sweep's, on the DPM-Solver scheduler,
    # reads the same ᾱ_t through its σ's: equal to rounding)
    models = {"exact": (mix.noise_model(DDPMScheduler()), {})}
    sweep_cfg = dimension.Config(seed=seed, out=cfg.out, model_steps=cfg.model_steps, steps=cfg.steps)
    for form, skip in FORMS.items():
        net, info = trained_model(mix, sweep_cfg, log, skip=skip)
        models[form] = (lambda x, t, net=net: net(x.float(), t).double(), info)
    base = {"d": d, "seed": seed}
    data = [
        mix.sample(cfg.samples, generator=_generator(seed, "model error data", d, s))
        for s in range(cfg.sampler_seeds)
    ]
    sw2s = [target.sliced_wasserstein(x) for x in data]
    top = max(float(x.abs().max()) for x in data)
    rows = [{**base, "model": "data", "sw2": fmean(sw2s), "sw2_per_sampler_seed": sw2s, "max_abs": top}]
    for name, (model, info) in models.items():
        sw2s, top = [], 0.0
        for s in range(cfg.sampler_seeds):
            gen = _generator(seed, "model error unguided", d, s)
            shape = (cfg.samples, d)
            with torch.no_grad():
                x = sample(dpm_scheduler(), model, shape, num_inference_steps=cfg.steps, generator=gen)
            sw2s.append(target.sliced_wasserstein(x))
            top = max(top, float(x.abs().max()))
        eps = eps_error(model, mix, cfg.timesteps, cfg.eps_samples, _generator(seed, "model error eps", d))
        row = {**base, "model": name, "sw2": fmean(sw2s), "sw2_per_sampler_seed": sw2s, "max_abs": top}
        row |= {"eps_rms": eps, "train_s": info.get("train_s"), "cached": info.get("cached")}
        rows.append(row)
        errs = " ".join(f"{e:.2e}" for e in eps.values())
        log(f"  d={d} seed={seed} {name:5s} SW2 {row['sw2']:.3f} max|x| {top:.1f} ε RMS {errs}")
    return rows


def _spread(values: list[float], fmt: str) -> str:
    text = format(fmean(values), fmt)
    return text if len(values) == 1 else f"{text} ({min(values):{fmt}}–{max(values):{fmt}})"


def render(rows: list[dict], cfg: Config, meta: dict) -> str:
    git = meta["git"]
    dirty = f" + {len(git['dirty'])} uncommitted paths" if git["dirty"] else ""
    lines = [
        f"# Trained noise model error ({meta['date']}, {meta['machine']}, git {git['commit']}{dirty}, "
        f"{meta['wall_s']:.0f} s)",
        "",
        f"Seeds {list(cfg.seeds)}: SW2 mean (min–max over seeds), max abs the largest, ε RMS the mean. "
        f"SW2: {cfg.samples} unguided samples "
        f"(DPM-Solver++ {cfg.steps} steps) against {cfg.ref_size} draws of the data, mean over "
        f"{cfg.sampler_seeds} sampler seed(s); data = {cfg.samples} draws of the data. ε RMS: "
        f"sqrt(E‖ε̂ − ε*‖²/d), ε* the exact model, {cfg.eps_samples} x_t per t.",
        "",
        "| d | model | SW2 | max abs | " + " | ".join(f"ε RMS t={t}" for t in cfg.timesteps) + " |",
        "|---" * (4 + len(cfg.timesteps)) + "|",
    ]
    for d in cfg.dims:
        for name in ("plain", "skip", "exact", "data"):
            group = [r for r in rows if r["d"] == d and r["model"] == name]
            cells = [str(d), name, _spread([r["sw2"] for r in group], ".3f")]
            cells.append(format(max(r["max_abs"] for r in group), ".1f"))
            for t in cfg.timesteps:
                errors = [r["eps_rms"][t] for r in group if "eps_rms" in r]
                cells.append(("0" if fmean(errors) == 0 else f"{fmean(errors):.2e}") if errors else "–")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def configure(argv=None) -> Config:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="d ∈ {2, 32}, seed 0, 1,024 samples, 1 sampler seed")
    p.add_argument("--out", default=None, help="output folder (default outputs/model_error)")
    for name in ("dims", "seeds", "timesteps"):
        p.add_argument("--" + name, type=int, nargs="+")
    for name in ("samples", "sampler_seeds", "ref_size", "eps_samples", "model_steps", "steps"):
        p.add_argument("--" + name.replace("_", "-"), type=int)
    p.add_argument("--threads", type=int, help="torch threads (default 1)")
    return config_from_args(Config, QUICK, vars(p.parse_args(argv)))


def main(argv=None) -> dict:
    cfg = configure(argv)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(s, flush=True)  # noqa: E731
    start = time.perf_counter()
    log(f"model error: d {list(cfg.dims)}, seeds {list(cfg.seeds)}, models plain, skip, exact")
    rows = [row for d in cfg.dims for seed in cfg.seeds for row in measure_seed(d, seed, cfg, log)]
    meta = {
        "wall_s": time.perf_counter() - start,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "git": git_state(),
    }
    text = render(rows, cfg, meta)
    print(text)
    atomic_write(out / "results.md", (text + "\n").encode())
    result = {"config": asdict(cfg), "rows": rows, **meta}
    atomic_write(out / "results.json", json.dumps(result, indent=1).encode())
    return {**result, "text": text}


if __name__ == "__main__":
    main()
