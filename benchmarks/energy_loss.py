"""AEPO's intermediate-energy network trained as a classifier beside the closed-form targets.

    python -m benchmarks.energy_loss --source runs/bench_mujoco --root runs/bench_energy_loss

For every finished (data set, seed) run of ``benchmarks.offline_rl`` under ``--source``, a new run
folder ``<root>/<data set>/seed<k>`` starts from a copy of its critic and behaviour checkpoints
(the same critic, behaviour model and data), trains the energy network with
``--energy-loss classifier`` (:mod:`energy_guidance.classifier`) and evaluates AEPO (best of N
by Q) and the single guided sample with the same evaluation settings; the closed-form scores
are read from the source run. Arguments after ``--`` go to the recipe. Writes
``<root>/summary.md``: normalised score, mean ± std over seeds, per policy and energy loss.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from energy_guidance.checkpoints import atomic_write, copy_checkpoint
from energy_guidance.recipes.aepo import run
from energy_guidance.recipes.config import parse_args
from energy_guidance.recipes.policies import label

POLICIES = ("aepo", "guided_single")
REFERENCES = ("unguided_best_of_n", "iql_awr", "behaviour")  # read from the source runs


def sources(root: Path) -> list[Path]:
    """The finished run folders (with results.json) under ``root``, sorted."""
    return sorted(p.parent for p in root.glob("**/seed*/results.json"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="runs/bench_mujoco", help="a benchmarks.offline_rl root")
    parser.add_argument("--root", default="runs/bench_energy_loss", help="where the new runs go")
    parser.add_argument(
        "recipe_args", nargs="*", help="after --: passed to python -m energy_guidance.recipes.aepo"
    )
    args = parser.parse_args(argv)
    source_root, root = Path(args.source), Path(args.root)
    found = sources(source_root)
    if not found:
        raise SystemExit(f"error: no finished runs (results.json) under {source_root}")
    scores: dict[str, dict[str, list[float]]] = {}
    started = time.perf_counter()
    for source in found:
        reference = json.loads((source / "results.json").read_text())
        config = reference["config"]
        relative = source.relative_to(source_root)
        target = root / relative
        if not (target / "checkpoints").exists():  # start from the source's critic and behaviour
            for phase in ("critic", "behaviour"):
                copy_checkpoint(source / "checkpoints", target / "checkpoints", phase)
        recipe = [
            *("--dataset", config["dataset"], "--seed", str(config["seed"]), "--run-dir", str(target)),
            *("--energy-loss", "classifier", "--no-ablations", "--no-smc", "--no-progress"),
            *[a for a in args.recipe_args if a != "--"],
        ]
        results = run(parse_args(recipe))
        print(f"{relative}: " + ", ".join(f"{p} {results['scores'][p]['score_mean']:.1f}" for p in POLICIES))
        table = scores.setdefault(config["dataset"], {})
        for name in POLICIES:
            table.setdefault(f"{name}|classifier", []).append(results["scores"][name]["score_mean"])
        for name in (*POLICIES, *REFERENCES):
            table.setdefault(f"{name}|closed_form", []).append(reference["scores"][name]["score_mean"])
    datasets = list(scores)
    lines = [
        f"`python -m benchmarks.energy_loss --source {args.source} --root {args.root}` — normalised score, "
        "mean ± std over seeds; the critic and behaviour model of each seed shared by both energy losses",
        "",
        "| policy | energy loss | " + " | ".join(datasets) + " |",
        "|---|---|" + "---|" * len(datasets),
    ]
    for key in scores[datasets[0]]:
        name, loss = key.split("|")
        cells = []
        for dataset in datasets:
            values = np.asarray(scores[dataset].get(key, []))
            cells.append(f"{values.mean():.1f} ± {values.std():.1f} ({len(values)})" if len(values) else "–")
        shown = loss.replace("_", " ") if name in POLICIES else "–"
        lines.append(f"| {label(name)} | {shown} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"{time.perf_counter() - started:.0f} s, torch {torch.__version__}, {platform.machine()}, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    root.mkdir(parents=True, exist_ok=True)
    atomic_write(root / "summary.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
