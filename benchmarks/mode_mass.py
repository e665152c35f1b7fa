"""How much of a linear tilt's mass between modes a sample of the data can tell:
``python -m benchmarks.mode_mass`` (about a minute).

`benchmarks.dimension`'s d = 2 mixture (4 diagonal Gaussians, its data seeds), its linear energy
E = wᵀx at each of its β. For a linear E the target q·exp(-β·E)/Z is again a mixture, whose
component masses T_k ∝ π_k·exp(-β·wᵀμ_k + ½β²·wᵀV_k·w) are known in closed form. Each estimate
of these masses below is scored by its total variation ½·Σ_k |m_k - T_k| (mean ± sd over
``--repeats`` samples of N data points drawn from the mixture):

    tied (exact)   the true four means and weights with one covariance shared by the
                   components (their weighted mean): what sharing one covariance costs by itself
                   (not the large-N limit of the fit below, whose BIC may take more components)
    empirical      Σ_{i in k} exp(-β·E(x_i)) / Σ_i exp(-β·E(x_i)) over the N points (labelled by
                   the component that drew them): the masses that importance resampling of a pool
                   of N unguided samples gives, and the samples' prior (7) where its kernel
                   spans all of them
    fit (tied)     the mixture (9) fitted to the N points (energy_guidance.mixture, K by BIC),
                   its tilted masses, each fitted component counted for the true one nearest its mean
    fit (own)      the same fit with each component's own covariance, Σ_i r_ik·(x_i - μ_k)(x_i - μ_k)ᵀ,
                   shrunk toward the shared one with d + 1 pseudo-samples

With ``--sample``, also the masses in the outputs of the default guidance (the exact noise model,
DPM-Solver++ 25 steps, ``--outputs`` samples, one run per seed and β) and of importance resampling
at the default's measured cost (its pool, and so its column, varies with the machine's speed):
each output's posterior probabilities of the target's components, averaged. Results in
``--out`` (results.json, results.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor

from benchmarks import dimension
from energy_guidance import AnalyticEnergyGuidance, sample
from energy_guidance.baselines import CountingModel, equal_cost_pool, importance_resampling, measure
from energy_guidance.baselines.cost import Cost
from energy_guidance.checkpoints import atomic_write
from energy_guidance.mixture import fit_tied_mixture
from energy_guidance.testing import GaussianMixture

SIZES = (256, 1024, 4096)
ESTIMATES = ("empirical", "fit (tied)", "fit (own)")


def tilted_masses(weights: Tensor, means: Tensor, covariances: Tensor, w: Tensor, beta: float) -> Tensor:
    """Component masses of q·exp(-β·wᵀx)/Z for Σ_k π_k·N(μ_k, C_k): (K,)."""
    quadratic = torch.einsum("i,kij,j->k", w, covariances, w)
    return torch.softmax(weights.log() - beta * means @ w + 0.5 * beta**2 * quadratic, 0)


def nearest(means: Tensor, true_means: Tensor) -> Tensor:
    """The index of the true component nearest each fitted mean (K_fit,)."""
    return torch.cdist(means, true_means).argmin(1)


def own_covariances(x: Tensor, weights: Tensor, means: Tensor, shared: Tensor) -> Tensor:
    """Each component's covariance from the fit's responsibilities, shrunk toward the shared
    one by d + 1 pseudo-samples: (K, d, d)."""
    d = x.shape[1]
    log_joint = torch.distributions.MultivariateNormal(means, covariance_matrix=shared).log_prob(x[:, None])
    resp = torch.softmax(weights.log()[None] + log_joint, 1)  # (N, K)
    centred = x[:, None] - means[None]  # (N, K, d)
    scatter = torch.einsum("nk,nki,nkj->kij", resp, centred, centred)
    return (scatter + (d + 1) * shared[None]) / (resp.sum(0) + d + 1)[:, None, None]


def empirical_masses(x: Tensor, labels: Tensor, w: Tensor, beta: float, k: int) -> Tensor:
    """Σ_{i in k} exp(-β·wᵀx_i) / Σ_i exp(-β·wᵀx_i) (k,): resampling's masses on a pool x."""
    return torch.zeros(k, dtype=torch.float64).index_add_(0, labels, torch.softmax(-beta * (x @ w), 0))


def estimates(
    mix: GaussianMixture, w: Tensor, betas: tuple[float, ...], x: Tensor, labels: Tensor
) -> dict[float, dict[str, Tensor]]:
    """The three sample-based estimates of the tilted masses (module docstring), each (K_true,),
    at each β of ``betas`` (the mixture is fitted once)."""
    k = len(mix.weights)
    fit = fit_tied_mixture(x)
    shared = fit.axes @ torch.diag(fit.variance) @ fit.axes.T
    owner = nearest(fit.means, mix.means)
    covariances = {
        "fit (tied)": shared[None].expand(fit.num_components, -1, -1),
        "fit (own)": own_covariances(x, fit.weights, fit.means, shared),
    }
    out = {}
    for beta in betas:
        out[beta] = {"empirical": empirical_masses(x, labels, w, beta, k)}
        for name, c in covariances.items():
            masses = tilted_masses(fit.weights, fit.means, c, w, beta)
            out[beta][name] = torch.zeros(k, dtype=torch.float64).index_add_(0, owner, masses)
    return out


def total_variation(m: Tensor, target: Tensor) -> float:
    return 0.5 * float((m - target).abs().sum())


def sampled_masses(mix: GaussianMixture, energy, beta: float, outputs: int, seed: int) -> dict[str, dict]:
    """The masses in the outputs of the default guidance and of resampling at its cost."""
    scheduler = dimension.dpm_scheduler()
    counter = CountingModel(mix.noise_model(scheduler))
    shape = (outputs, mix.dim)
    found = {}
    for method in ("unguided", "default"):
        model = counter if method == "unguided" else AnalyticEnergyGuidance(scheduler, counter, energy, beta)
        generator = torch.Generator().manual_seed(seed)
        found[method] = measure(
            lambda model=model, generator=generator: sample(
                scheduler, model, shape, num_inference_steps=25, generator=generator
            ),
            counter,
        )
    base = found["unguided"][1]
    pool = equal_cost_pool(found["default"][1], Cost(base.seconds / outputs, base.passes // outputs), outputs)
    result = importance_resampling(
        scheduler,
        counter,
        shape,
        energy,
        beta,
        pool=pool,
        num_inference_steps=25,
        generator=torch.Generator().manual_seed(seed),
    )
    target = mix.tilted(energy.w, beta)
    out = {}
    for method, x in (("default", found["default"][0]), ("resampling", result.samples)):
        # each output's posterior probability of each target component (at noise 0), averaged:
        # unbiased for the masses (E_target[r_k(x)] = T_k), where counting each output for its
        # likeliest component is not
        one = torch.ones(len(x), dtype=torch.float64)
        masses = target.posterior(x.double(), one, 0 * one)[0].mean(0)
        out[method] = {
            "tv": total_variation(masses, target.weights),
            "pool": pool if method == "resampling" else None,
        }
    return out


def run(seeds=(0, 1, 2), sizes=SIZES, repeats: int = 20, sample_outputs: int = 0, log=print) -> list[dict]:
    if repeats < 2:
        raise ValueError(f"repeats must be at least 2 (a standard deviation), got {repeats}")
    rows = []
    for seed in seeds:
        mix = dimension.make_mixture(2, seed)
        energy = dimension.make_energies(mix, seed)["linear"]
        w = energy.w
        tied_cov = torch.diag(mix.weights @ mix.variances)
        betas = dimension.BETAS["linear"]
        found: dict[tuple[int, float], list] = {(n, beta): [] for n in sizes for beta in betas}
        for n in sizes:  # one fit per sample of N points, scored at every β
            for r in range(repeats):
                x, labels = mix.sample_components(n, dimension._generator(seed, "mode_mass", n, r))
                for beta, masses in estimates(mix, w, betas, x, labels).items():
                    found[n, beta].append(masses)
        for beta in betas:
            target = mix.tilted(w, beta).weights
            row: dict = {
                "seed": seed,
                "beta": beta,
                "target": target.tolist(),
                "tied (exact)": total_variation(
                    tilted_masses(
                        mix.weights, mix.means, tied_cov[None].expand(len(target), -1, -1), w, beta
                    ),
                    target,
                ),
            }
            for n in sizes:
                for name in ESTIMATES:
                    values = [total_variation(masses[name], target) for masses in found[n, beta]]
                    row[f"{name} N={n}"] = (statistics.mean(values), statistics.stdev(values))
            if sample_outputs:
                row["sampled"] = sampled_masses(mix, energy, beta, sample_outputs, seed)
            rows.append(row)
            log(f"seed {seed} beta {beta:g}: done")
    return rows


def render(rows: list[dict], sizes: tuple[int, ...], meta: dict) -> str:
    lines = [
        f"# mode_mass ({meta['date']}, {meta['machine']}, torch {meta['torch']})",
        "",
        "Total variation between the tilted component masses and each estimate, mean ± sd over samples.",
        "",
    ]
    header = ["seed", "β", "largest target mass", "tied (exact)"]
    header += [f"{name} N={n}" for n in sizes for name in ESTIMATES]
    sampled = any("sampled" in r for r in rows)
    if sampled:
        header += ["default (sampled)", "resampling at its cost (pool)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [str(r["seed"]), f"{r['beta']:g}", f"{max(r['target']):.3f}", f"{r['tied (exact)']:.3f}"]
        cells += [
            f"{r[f'{name} N={n}'][0]:.3f} ± {r[f'{name} N={n}'][1]:.3f}" for n in sizes for name in ESTIMATES
        ]
        if sampled:
            s = r["sampled"]
            cells += [f"{s['default']['tv']:.3f}", f"{s['resampling']['tv']:.3f} ({s['resampling']['pool']})"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--sample", action="store_true", help="also sample the default and resampling")
    parser.add_argument("--outputs", type=int, default=1000, help="samples per sampled method")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="outputs/mode_mass")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = run(tuple(args.seeds), tuple(args.sizes), args.repeats, args.outputs if args.sample else 0)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - start, 1),
        "git": dimension.git_state(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = render(rows, tuple(args.sizes), meta)
    atomic_write(out / "results.json", json.dumps({"rows": rows, "meta": meta}, indent=1).encode())
    atomic_write(out / "results.md", table.encode())
    print(table, end="")
    print(f"({meta['seconds']} s; {out / 'results.md'})")
    return rows


if __name__ == "__main__":
    main()
