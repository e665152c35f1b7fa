"""AEPO vs behaviour cloning (unguided diffusion samples) vs IQL's AWR policy, over seeds.

    python -m benchmarks.offline_rl                       # 3 seeds of the default recipe
    python -m benchmarks.offline_rl --seeds 0 1 2 -- --critic cql --beta 5

Arguments after ``--`` go to ``python -m recipes.aepo`` unchanged (any of its options). Each seed
is a separate, resumable run folder ``<root>/seed<k>``; rerunning the command resumes unfinished
seeds and reuses finished ones. Prints a markdown table (mean ± std over seeds of each seed's
mean normalised score) and the wall time per phase, and writes both to ``<root>/summary.{json,md}``.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from energy_guidance.checkpoints import atomic_write, write_json
from recipes.aepo import label, parse_args, run


def summarise(results: list[dict]) -> dict:
    """Per policy: mean and std over seeds of the per-seed mean score; per phase: mean seconds."""
    key = (
        "score_mean"
        if all("score_mean" in e for r in results for e in r["scores"].values())
        else "return_mean"
    )
    policies = {}
    for name in results[0]["scores"]:
        values = np.array([r["scores"][name][key] for r in results])
        policies[name] = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "per_seed": values.tolist(),
        }
    phases = {}
    for name in results[0]["phase_seconds"]:
        seconds = [r["phase_seconds"][name] for r in results if r["phase_seconds"].get(name) is not None]
        phases[name] = float(np.mean(seconds))
    return {"metric": key, "policies": policies, "phase_seconds": phases}


def to_markdown(summary: dict, command: str, seeds: list[int]) -> str:
    metric = "normalised score" if summary["metric"] == "score_mean" else "return"
    lines = [
        f"`{command}` — {len(seeds)} seeds ({', '.join(map(str, seeds))}), {metric}, mean ± std over seeds",
        "",
        f"| policy | {metric} | per seed |",
        "|---|---|---|",
    ]
    for name, entry in summary["policies"].items():
        per_seed = ", ".join(f"{v:.1f}" for v in entry["per_seed"])
        lines.append(f"| {label(name)} | {entry['mean']:.1f} ± {entry['std']:.1f} | {per_seed} |")
    lines += ["", "| phase | wall time per seed (s) |", "|---|---|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in summary["phase_seconds"].items()]
    total = sum(summary["phase_seconds"].values())
    lines.append(f"| total | {total:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", default="runs/bench_offline_rl")
    parser.add_argument("recipe_args", nargs=argparse.REMAINDER, help="-- then options of recipes.aepo")
    args = parser.parse_args(argv)
    recipe_args = [a for a in args.recipe_args if a != "--"]
    started = time.perf_counter()
    results = []
    for seed in args.seeds:
        config = parse_args([*recipe_args, "--seed", str(seed), "--run-dir", f"{args.root}/seed{seed}"])
        print(f"== seed {seed} ==", flush=True)
        results.append(run(config))
    summary = summarise(results)
    command = " ".join(
        ["python -m benchmarks.offline_rl", "--seeds", *map(str, args.seeds), *args.recipe_args]
    )
    summary |= {
        "command": command,
        "seeds": args.seeds,
        "wall_seconds_this_invocation": time.perf_counter() - started,
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d"),
    }
    markdown = to_markdown(summary, command, args.seeds)
    root = Path(args.root)
    write_json(root / "summary.json", summary)
    atomic_write(root / "summary.md", (markdown + "\n").encode())
    print(markdown)


if __name__ == "__main__":
    main()
