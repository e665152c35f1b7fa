"""Intermediate-energy estimators against exact targets on QGPO's six 2-D toy data sets.

    python benchmarks/toys.py                      # default: 6 data sets × β ∈ {3, 10, 20}
    python benchmarks/toys.py --datasets moons --betas 10 --train-steps 500

Behaviour model: the *exact* noise model of an empirical set of ``num_data`` points
(:class:`~energy_guidance.groundtruth.EmpiricalNoiseModel`, a memorising diffusion model). It is
cheap, has no training error, and makes the ground truth exact, not approximate: the tilted
target q·exp(-β·E)/Z of an empirical q is the same points with weights softmax_i(-β·E(x_i)),
which importance resampling draws from exactly (we compare against the weighted set itself,
the limit of infinitely many resamples). Every gap to the target is then the estimator's (plus
the sampler's discretisation error, which the exact-guidance floor measures).

Estimators, all through ``AnalyticEnergyGuidance`` (switched by ``variance=`` / ``estimator=``):

    exact        estimator = EmpiricalIntermediateEnergy (ground truth E_t): the floor
    aepo         training-free closed form, variance="data_var" (marginal table)
    aepo_jac     training-free closed form, variance="jacobian" (local, exact for this model)
    amortized    estimator = IntermediateEnergyNet on AEPO targets (x̄ = x0, variance "data_var")
    cep          estimator = IntermediateEnergyNet trained with QGPO's contrastive loss
    dps          energy_guidance.baselines.dps_guidance: E_t = β·E(x̂0), no variance term
    unguided     the behaviour model
    resampled    not a sampler: i.i.d. draws from the target, the finite-sample floor of the
                 metrics (mean over ``floor_repeats`` draws; their s.d. is each score's noise)

Metrics against the weighted target: sliced Wasserstein-2 (SW2, 128 directions, quantiles on a
4096-point grid) and unbiased MMD² (sum of Gaussian kernels, bandwidths 0.2, 0.5, 1). Learned
estimators get the same budget (``train_steps`` steps of 256 noised samples: AEPO batch 256,
CEP 16 support sets of M = 16) and are checkpointed every ``eval_every`` steps by their relative
guidance error on noised target points, err = Σσ²‖∇E_Θ - ∇E_t‖² / Σσ²‖∇E_t‖². "To best" is the
training time until err first comes within 10% of its final value (mean of the last three
checkpoints): the time after which more training stops helping. CEP's times include drawing its
support pool from the model. Sampling: DDPM, ``num_inference_steps`` steps, one thread.
"""

from __future__ import annotations

import io
import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
import tyro
from diffusers import DDPMScheduler
from torch import Tensor

from energy_guidance import (
    AnalyticEnergyGuidance,
    IntermediateEnergyNet,
    estimate_variance_table,
    sample,
    train_intermediate_energy,
)
from energy_guidance.baselines import dps_guidance, draw_support, train_contrastive_energy
from energy_guidance.checkpoints import atomic_write
from energy_guidance.groundtruth import (
    EmpiricalIntermediateEnergy,
    EmpiricalNoiseModel,
    mmd,
    sliced_wasserstein,
)
from energy_guidance.schedules import add_noise, noise_level
from recipes.toys2d import DATASETS, DatasetName, toy_dataset

Method = Literal["unguided", "exact", "aepo", "aepo_jac", "amortized", "cep", "dps"]
METHODS: tuple[str, ...] = get_args(Method)
LOG_EVERY = 50  # the training loop's history interval: checkpoints are taken at its entries


@dataclass
class Config:
    """Intermediate-energy estimators against exact targets on QGPO's six 2-D toy data sets."""

    datasets: tuple[DatasetName, ...] = DATASETS  # which toy data sets
    betas: tuple[float, ...] = (3.0, 10.0, 20.0)  # inverse temperatures
    num_data: int = 1000  # points of the empirical behaviour distribution
    num_samples: int = 2000  # samples per method
    floor_repeats: int = 10  # i.i.d. target draws for the "resampled" floor and its spread
    num_inference_steps: int = 50  # DDPM steps
    train_steps: int = 1000
    batch_size: int = 256  # noised samples per training step (both estimators)
    num_support: int = 16  # CEP's M
    support_pool: int = 1024  # model samples drawn for CEP
    eval_every: int = 50  # training steps between guidance-error checkpoints (a multiple of 50)
    hidden: int = 128  # width of both learned estimators
    variance: str = "data_var"  # AEPO's posterior variance (training-free "aepo" and amortized)
    seed: int = 0
    threads: int = 1  # small tensors: 2 threads gain little, and oversubscribe a shared 2-core machine
    methods: tuple[Method, ...] = METHODS  # which samplers
    out: str = "outputs/toys"  # results.md, results.json, PNG grids


# --- metrics against a weighted point set ------------------------------------------------------


def sliced_w2(x: Tensor, target: Tensor, weights: Tensor) -> float:
    """SW2 between samples x and the weighted set (target, weights); fixed projections."""
    return sliced_wasserstein(x, target, 128, torch.Generator().manual_seed(1234), y_weights=weights)


def mmd2(x: Tensor, target: Tensor, weights: Tensor) -> float:
    """MMD² (kernel bandwidths 0.2, 0.5, 1) between samples x and the weighted set, exact target terms."""
    return mmd(x, target, (0.2, 0.5, 1.0), y_weights=weights)


# --- one data set ------------------------------------------------------------------------------


def guidance_error(network, validation: dict) -> float:
    """Relative guidance error of ``network`` on the validation pairs (see module docstring)."""
    x = validation["x_t"].clone().requires_grad_(True)
    value = network(x, validation["alpha"], validation["sigma"], None)
    (grad,) = torch.autograd.grad(value.sum(), x)
    s2 = validation["sigma"].double()[:, None] ** 2
    diff = (s2 * (grad.double() - validation["grad"]) ** 2).sum()
    return float(diff / (s2 * validation["grad"] ** 2).sum())


def make_validation(scheduler, target: Tensor, weights: Tensor, exact, n: int, gen: torch.Generator) -> dict:
    idx = torch.multinomial(weights.double(), n, replacement=True, generator=gen)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=gen)
    alpha, sigma = (c.float() for c in noise_level(scheduler, t))
    x_t = add_noise(target[idx], torch.randn(n, 2, generator=gen), alpha, sigma)
    x = x_t.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(exact(x, alpha, sigma).sum(), x)
    return {"x_t": x_t, "alpha": alpha, "sigma": sigma, "grad": grad.double()}


class Checkpoints:
    """Training-time clock that pauses while the validation error is measured."""

    def __init__(self, network, validation: dict, every: int) -> None:
        self.network, self.validation, self.every = network, validation, every
        self.start = time.perf_counter()
        self.paused = 0.0
        self.history: list[tuple[int, float, float]] = []  # (step, train seconds, error)

    def __call__(self, step: int, losses: dict) -> None:
        """The training loop's ``log(step, means)``: ``step`` steps are done."""
        if step % self.every:
            return
        now = time.perf_counter()
        self.history.append(
            (step, now - self.start - self.paused, guidance_error(self.network, self.validation))
        )
        self.paused += time.perf_counter() - now

    def time_to_converge(self, slack: float = 0.1) -> tuple[float, int, float]:
        """(seconds, step) of the first checkpoint within ``slack`` of the final error, and that error.

        The final error is the mean of the last three checkpoints (CEP's error is noisy).
        """
        final = sum(e for _, _, e in self.history[-3:]) / len(self.history[-3:])
        for step, seconds, err in self.history:
            if err <= final * (1 + slack):
                return seconds, step, final
        return self.history[-1][1], self.history[-1][0], final

    def summary(self, extra_seconds: float = 0.0) -> dict:
        """Training time (plus ``extra_seconds`` spent before training), convergence, history."""
        total = time.perf_counter() - self.start - self.paused
        to_best, best_step, final_err = self.time_to_converge()
        return {
            "train_s": total + extra_seconds,
            "to_best_s": to_best + extra_seconds,
            "best_step": best_step,
            "guidance_err": final_err,
            "history": self.history,
        }


def run_dataset(name: str, cfg: Config, log) -> tuple[list[dict], Tensor, Tensor, dict]:
    """Rows of results for every β and method, the data, its energies and the samples."""
    ds = toy_dataset(name)
    gen = torch.Generator().manual_seed(cfg.seed)
    data, _ = ds.sample(cfg.num_data, gen)
    energies = ds.energy(data.double()).float()
    scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    model = EmpiricalNoiseModel(data, scheduler)
    table = estimate_variance_table(scheduler, model, data, generator=gen)

    def draw(guidance=None) -> tuple[Tensor | None, float]:
        """Samples and seconds; None when the guided sampler diverged (non-finite values)."""
        g = torch.Generator().manual_seed(cfg.seed + 1)
        shape = (cfg.num_samples, 2)
        start = time.perf_counter()
        try:
            x = sample(
                scheduler,
                model,
                shape,
                guidance=guidance,
                num_inference_steps=cfg.num_inference_steps,
                generator=g,
            ).detach()
        except FloatingPointError:  # the energy saw a non-finite x̂0
            x = None
        seconds = time.perf_counter() - start
        return (x if x is not None and bool(torch.isfinite(x).all()) else None), seconds

    unguided, unguided_time = draw() if "unguided" in cfg.methods else (None, 0.0)
    rows, samples = [], {}
    for beta in cfg.betas:
        weights = torch.softmax(-beta * energies.double(), dim=0)
        exact = EmpiricalIntermediateEnergy(data, beta, energies=energies)
        validation = make_validation(scheduler, data, weights, exact, 512, gen)
        results: dict[str, dict] = {}
        runs: dict[str, tuple[Tensor, float]] = {}
        if unguided is not None:
            runs["unguided"] = (unguided, unguided_time)
        # The finite-sample floor: i.i.d. draws from the target itself (importance resampling);
        # its spread over repeats is the noise of any one method's score.
        g = torch.Generator().manual_seed(cfg.seed + 2)
        draws = [
            data[torch.multinomial(weights, cfg.num_samples, replacement=True, generator=g)]
            for _ in range(cfg.floor_repeats)
        ]
        floor_sw2 = torch.tensor([sliced_w2(x, data, weights) for x in draws])
        floor_mmd2 = torch.tensor([mmd2(x, data, weights) for x in draws])
        runs["resampled"] = (draws[0], 0.0)
        results["resampled"] = {"sw2_sd": float(floor_sw2.std()), "mmd2_sd": float(floor_mmd2.std())}

        def guided(beta=beta, **kwargs):
            if "estimator" in kwargs:
                return AnalyticEnergyGuidance(scheduler, model, **kwargs)
            return AnalyticEnergyGuidance(scheduler, model, ds.energy, beta, **kwargs)

        if "exact" in cfg.methods:
            runs["exact"] = draw(guided(estimator=exact))
        if "aepo" in cfg.methods:
            runs["aepo"] = draw(guided(variance=cfg.variance, variance_table=table))
        if "aepo_jac" in cfg.methods:
            runs["aepo_jac"] = draw(guided(variance="jacobian"))
        if "dps" in cfg.methods:
            runs["dps"] = draw(dps_guidance(scheduler, model, ds.energy, beta))
        if "amortized" in cfg.methods:
            torch.manual_seed(cfg.seed)
            net = IntermediateEnergyNet(2, hidden=cfg.hidden, beta=beta)
            clock = Checkpoints(net, validation, cfg.eval_every)
            train_intermediate_energy(
                net,
                scheduler,
                model,
                ds.energy,
                data,
                variance=cfg.variance,
                variance_table=table,
                steps=cfg.train_steps,
                batch_size=cfg.batch_size,
                generator=gen,
                progress=False,
                log=clock,
            )
            results["amortized"] = clock.summary()
            runs["amortized"] = draw(guided(estimator=net.eval()))
        if "cep" in cfg.methods:
            torch.manual_seed(cfg.seed)
            start = time.perf_counter()
            support = draw_support(
                scheduler,
                model,
                (2,),
                cfg.num_support,
                num_groups=cfg.support_pool // cfg.num_support,
                num_inference_steps=cfg.num_inference_steps,
                generator=gen,
            )
            support_s = time.perf_counter() - start
            net = IntermediateEnergyNet(2, hidden=cfg.hidden, beta=beta)
            clock = Checkpoints(net, validation, cfg.eval_every)
            train_contrastive_energy(
                net,
                scheduler,
                ds.energy,
                support,
                steps=cfg.train_steps,
                batch_size=cfg.batch_size // cfg.num_support,
                generator=gen,
                progress=False,
                log=clock,
            )
            results["cep"] = {**clock.summary(support_s), "support_s": support_s}
            runs["cep"] = draw(guided(estimator=net.eval()))
        target_label = float(weights @ -energies.double())
        for method, (x, seconds) in runs.items():
            row = {"dataset": name, "beta": beta, "method": method, "sample_s": seconds}
            row["target_label"] = target_label
            if x is None:  # diverged
                row.update(sw2=math.inf, mmd2=math.inf, mean_label=math.nan)
            else:
                row["sw2"] = sliced_w2(x, data, weights)
                row["mmd2"] = mmd2(x, data, weights)
                row["mean_label"] = float(-ds.energy(x.double()).mean())
            row.update(results.get(method, {}))
            if method == "resampled":
                row.update(sw2=float(floor_sw2.mean()), mmd2=float(floor_mmd2.mean()))
            rows.append(row)
            samples[(beta, method)] = x
        log(
            f"{name:>12} β={beta:<4g} target ℓ={target_label:.3f} | "
            + " ".join(f"{r['method']}={r['sw2']:.3f}" for r in rows if r["beta"] == beta)
        )
    return rows, data, energies, samples


# --- report ------------------------------------------------------------------------------------


def summary_table(rows: list[dict], methods: tuple[str, ...], key: str = "sw2", scale: float = 1.0) -> str:
    """Markdown: one line per (data set, β), ``key`` × ``scale`` per method; SW2 adds train times."""
    timed = key == "sw2"
    head = "| data set | β | " + " | ".join(methods) + " |"
    if timed:
        head += " amortized: train s (to best) | CEP: train s (to best) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    keys = sorted({(r["dataset"], r["beta"]) for r in rows}, key=lambda k: (DATASETS.index(k[0]), k[1]))
    for k in keys:
        by = {r["method"]: r for r in rows if (r["dataset"], r["beta"]) == k}
        cells = [f"{by[m][key] * scale:.3f}" if m in by else "–" for m in methods]
        if "resampled" in by and "resampled" in methods:
            i = methods.index("resampled")
            cells[i] += f" ± {by['resampled'][key + '_sd'] * scale:.3f}"
        line = f"| {k[0]} | {k[1]:g} | " + " | ".join(cells) + " |"
        if timed:
            times = [
                f"{by[m]['train_s']:.1f} ({by[m]['to_best_s']:.1f})" if m in by else "–"
                for m in ("amortized", "cep")
            ]
            line += " " + " | ".join(times) + " |"
        lines.append(line)
    return "\n".join(lines)


def sampling_times(rows: list[dict], methods: tuple[str, ...]) -> str:
    """Mean sampling seconds per method over all (data set, β)."""
    cells = []
    for m in methods:
        times = [r["sample_s"] for r in rows if r["method"] == m]
        cells.append(f"{sum(times) / len(times):.2f}" if times else "–")
    head = "| mean sampling s | " + " | ".join(methods) + " |"
    return head + "\n|" + "---|" * (len(methods) + 1) + "\n| | " + " | ".join(cells) + " |"


def goals(rows: list[dict]) -> str:
    """The issue's goals, measured per (data set, β) and overall."""
    keys = sorted({(r["dataset"], r["beta"]) for r in rows})
    within = below = faster = total = 0
    ratios, speedups = [], []
    for key in keys:
        by = {r["method"]: r for r in rows if (r["dataset"], r["beta"]) == key}
        if not all(m in by for m in ("exact", "amortized", "cep", "dps")):
            continue
        total += 1
        ratio = by["amortized"]["sw2"] / by["exact"]["sw2"]
        ratios.append(ratio)
        within += ratio <= 1.25
        below += by["amortized"]["sw2"] < min(by["cep"]["sw2"], by["dps"]["sw2"])
        speedup = by["cep"]["to_best_s"] / by["amortized"]["to_best_s"]
        speedups.append(speedup)
        faster += speedup >= 10
    if not total:
        return ""
    gm = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    gs = math.exp(sum(math.log(s) for s in speedups) / len(speedups))
    return (
        f"- amortized SW2 ≤ 1.25 × exact floor: {within}/{total} (geometric-mean ratio {gm:.2f})\n"
        f"- amortized SW2 below both CEP and DPS: {below}/{total}\n"
        f"- CEP time-to-best ≥ 10 × amortized: {faster}/{total} (geometric-mean ratio {gs:.2f})"
    )


def plot_grid(path: Path, per_dataset: dict, beta: float, methods: tuple[str, ...]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_dataset)
    cols = ["data", "target", *methods]
    fig, axes = plt.subplots(
        len(names), len(cols), figsize=(1.6 * len(cols), 1.6 * len(names)), squeeze=False
    )
    for i, name in enumerate(names):
        data, energies, samples = per_dataset[name]
        weights = torch.softmax(-beta * energies.double(), 0)
        gen = torch.Generator().manual_seed(0)
        target = data[torch.multinomial(weights, 500, replacement=True, generator=gen)]
        panels = {"data": data, "target": target} | {m: samples.get((beta, m)) for m in methods}
        for j, col in enumerate(cols):
            ax = axes[i, j]
            x = panels[col]
            if x is not None:
                ax.scatter(x[:, 0], x[:, 1], s=0.6, alpha=0.5, c="C0" if col in ("data", "target") else "C1")
            elif col in methods:
                ax.text(0.5, 0.5, "diverged", ha="center", va="center", transform=ax.transAxes, fontsize=7)
            lim = float(data.abs().max()) * 1.1
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col, fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(f"β = {beta:g}  (target = data re-weighted by exp(-βE))", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format="png")
    atomic_write(path, buffer.getvalue())
    plt.close(fig)


def main(argv=None) -> None:
    cfg = tyro.cli(Config, args=argv, prog="python benchmarks/toys.py")
    if cfg.train_steps < cfg.eval_every:
        raise SystemExit(f"--train-steps ({cfg.train_steps}) must be >= --eval-every ({cfg.eval_every})")
    if cfg.eval_every % LOG_EVERY:
        raise SystemExit(f"--eval-every ({cfg.eval_every}) must be a multiple of {LOG_EVERY}")
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows, per_dataset = [], {}
    for name in cfg.datasets:
        r, data, energies, samples = run_dataset(name, cfg, lambda s: print(s, flush=True))
        rows += r
        per_dataset[name] = (data, energies, samples)
    for beta in cfg.betas:
        plot_grid(out / f"toys_beta{beta:g}.png", per_dataset, beta, cfg.methods)
    wall = time.perf_counter() - start
    columns = ("resampled", *cfg.methods)
    report = (
        f"SW2 to the exact target\n\n{summary_table(rows, columns)}\n\n"
        f"MMD² × 10³ to the exact target\n\n{summary_table(rows, columns, 'mmd2', 1e3)}\n\n"
        f"{sampling_times(rows, cfg.methods)}\n\n{goals(rows)}\n\n"
        f"wall time {wall:.0f} s, {cfg.threads} thread(s), torch {torch.__version__}, "
        f"{platform.machine()}, {time.strftime('%Y-%m-%d')}"
    )
    print(report)
    atomic_write(out / "results.md", (report + "\n").encode())
    atomic_write(
        out / "results.json",
        json.dumps({"config": asdict(cfg), "rows": rows, "wall_s": wall}, indent=1).encode(),
    )


if __name__ == "__main__":
    main()
