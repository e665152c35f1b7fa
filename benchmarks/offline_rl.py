"""AEPO beside the methods it is compared with, on several data sets and seeds, same budgets.

    python -m benchmarks.offline_rl                                  # the MuJoCo sets, 3 seeds
    python -m benchmarks.offline_rl --datasets energy-guidance/pendulum/mixed-v0 --seeds 0 1 2
    python -m benchmarks.offline_rl --jobs 2 -- --critic-steps 5000  # 2 runs at once

Every (data set, seed) is a resumable run folder ``<root>/<data set>/seed<k>`` of
``python -m energy_guidance.recipes.aepo`` with ``--compare qgpo dps cql quadrature --smc --ablations``
and the data set's preset (locomotion-cpu-long for MuJoCo ids on a CPU; the tables of
2026-11-27 in docs/benchmarks.md ran when it was locomotion-cpu, now ``-- --preset
locomotion-cpu``); arguments after ``--`` go to the recipe unchanged. Rerunning resumes
unfinished runs and reuses finished ones. Writes ``<root>/summary.{json,md}`` (normalised score,
mean ± std over seeds of each seed's mean over episodes, per method and data set; wall time per
phase) and ``<root>/scores.png``.
"""

from __future__ import annotations

import argparse
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from energy_guidance.checkpoints import atomic_write, write_json
from energy_guidance.recipes.aepo import run
from energy_guidance.recipes.config import parse_args
from energy_guidance.recipes.plots import scores_figure
from energy_guidance.recipes.policies import TRAINING_FREE, label

MUJOCO = (
    "energy-guidance/halfcheetah/medium-replay-v0",
    "energy-guidance/hopper/medium-v0",
    "energy-guidance/walker2d/medium-expert-v0",
)
COMPARED = ("--compare", "qgpo", "dps", "cql", "quadrature", "--smc", "--ablations")
# The measured goal: AEPO against the best of these on each data set.
RIVALS = ("iql_awr", "cql_actor", "qgpo", "unguided_best_of_n")


def summarise(results: list[dict]) -> dict:
    """Per policy: mean and std over seeds of the per-seed mean score; per phase: mean seconds."""
    key = (
        "score_mean"
        if all("score_mean" in e for r in results for e in r["scores"].values())
        else "return_mean"
    )
    policies = {}
    for name in results[0]["scores"]:
        values = np.array([r["scores"][name][key] for r in results if name in r["scores"]])
        policies[name] = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "per_seed": values.tolist(),
        }
    phases = {}
    for name in results[0]["phase_seconds"]:
        seconds = [r["phase_seconds"][name] for r in results if r["phase_seconds"].get(name) is not None]
        phases[name] = float(np.mean(seconds)) if seconds else None
    return {
        "metric": key,
        "seeds": len(results),
        "policies": policies,
        "phase_seconds": phases,
        "dataset_score": results[0].get("dataset_score"),
    }


def verdict(summary: dict, policy: str = "aepo") -> str | None:
    """Whether ``policy``'s mean is at least the best rival's (None when it or every rival is
    missing)."""
    rivals = {n: summary["policies"][n]["mean"] for n in RIVALS if n in summary["policies"]}
    if not rivals or policy not in summary["policies"]:
        return None
    best = max(rivals, key=rivals.get)
    mean = summary["policies"][policy]["mean"]
    sign = "≥" if mean >= rivals[best] else "<"
    return f"{label(policy)} {mean:.1f} {sign} best rival {label(best)} {rivals[best]:.1f}"


def to_markdown(table: dict[str, dict], command: str, seeds: list[int]) -> str:
    datasets = list(table)
    metric = "normalised score" if all(t["metric"] == "score_mean" for t in table.values()) else "return"
    names = list(dict.fromkeys(n for t in table.values() for n in t["policies"]))
    lines = [
        f"`{command}` — {metric}, mean ± std over seeds (of {', '.join(map(str, seeds))}; the count "
        "under each data set) of each seed's mean over episodes",
        "",
        "| policy | " + " | ".join(f"{d} ({table[d]['seeds']} seeds)" for d in datasets) + " |",
        "|---|" + "---|" * len(datasets),
    ]
    for name in names:
        cells = []
        for d in datasets:
            entry = table[d]["policies"].get(name)
            cells.append("—" if entry is None else f"{entry['mean']:.1f} ± {entry['std']:.1f}")
        lines.append(f"| {label(name)} | " + " | ".join(cells) + " |")
    lines.append(
        "| data set (mean episode) | "
        + " | ".join(
            "—" if t["dataset_score"] is None else f"{t['dataset_score']:.1f}" for t in table.values()
        )
        + " |"
    )
    phases = list(dict.fromkeys(p for t in table.values() for p in t["phase_seconds"]))
    lines += [
        "",
        "| phase: wall time per seed (s) | " + " | ".join(datasets) + " |",
        "|---|" + "---|" * len(datasets),
    ]
    for phase in phases:
        cells = [table[d]["phase_seconds"].get(phase) for d in datasets]
        lines.append(f"| {phase} | " + " | ".join("—" if c is None else f"{c:.0f}" for c in cells) + " |")
    verdicts = [
        (d, verdict(t, p)) for d, t in table.items() for p in ("aepo", "guided_single", TRAINING_FREE)
    ]
    lines += ["", *[f"- {d}: {v}" for d, v in verdicts if v is not None]]
    return "\n".join(lines)


def _run_one(args: tuple[list[str], str]) -> dict:
    recipe_args, run_dir = args
    torch.set_num_threads(1)
    return run(parse_args([*recipe_args, "--run-dir", run_dir]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=list(MUJOCO))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", default="runs/bench_offline_rl")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (one process each)")
    parser.add_argument(
        "--finished-only",
        action="store_true",
        help="summarise the runs that have finished (results.json), train nothing; the table "
        "then gives each data set's own seed count",
    )
    parser.add_argument(
        "recipe_args", nargs=argparse.REMAINDER, help="-- then options of energy_guidance.recipes.aepo"
    )
    args = parser.parse_args(argv)
    recipe_args = [a for a in args.recipe_args if a != "--"]
    started = time.perf_counter()
    runs = [(d, f"{args.root}/{d}/seed{s}", s) for d in args.datasets for s in args.seeds]
    if args.finished_only:
        runs = [run for run in runs if (Path(run[1]) / "results.json").exists()]
    jobs = [([*COMPARED, "--dataset", d, *recipe_args, "--seed", str(s)], run_dir) for d, run_dir, s in runs]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(_run_one, jobs))
    else:
        results = [_run_one(job) for job in jobs]
    by_dataset: dict[str, list[dict]] = {}  # in --datasets order, only those with a run
    for (d, _, _), result in zip(runs, results, strict=True):
        by_dataset.setdefault(d, []).append(result)
    table = {d: summarise(rs) for d, rs in by_dataset.items()}
    command = " ".join(
        [
            "python -m benchmarks.offline_rl",
            "--datasets",
            *args.datasets,
            "--seeds",
            *map(str, args.seeds),
            *args.recipe_args,
        ]
    )
    summary = {
        "datasets": table,
        "command": command,
        "seeds": args.seeds,
        "wall_seconds_this_invocation": time.perf_counter() - started,
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.jobs} job(s) of 1 thread",
        "date": time.strftime("%Y-%m-%d"),
    }
    markdown = to_markdown(table, command, args.seeds)
    root = Path(args.root)
    write_json(root / "summary.json", summary)
    atomic_write(root / "summary.md", (markdown + "\n").encode())
    labels = {n: label(n) for t in table.values() for n in t["policies"]}
    atomic_write(root / "scores.png", scores_figure(table, labels))
    print(markdown)


if __name__ == "__main__":
    main()
