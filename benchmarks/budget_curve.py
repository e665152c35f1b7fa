"""Normalised score against training steps, from finished offline-RL benchmark roots (issue 20's
learning curves of critic and behaviour model).

    python -m benchmarks.budget_curve runs/hopper_20k_raw runs/hopper_50k_raw runs/hopper_100k_raw \\
        --out docs/images/hopper_budget_curve.png

Each root is a finished ``python -m benchmarks.offline_rl --root ROOT ...`` (its summary.json, one
data set); its budget is the critic's and the behaviour model's training steps read from the
config.json of its runs (every run of a root must have the same). Prints a markdown table (policy
× budget: mean ± sd over seeds, per seed in brackets) and writes the figure to ``--out``: one line
per policy with its spread over seeds, and the data set's own mean score.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from energy_guidance.checkpoints import atomic_write
from energy_guidance.recipes.plots import figure_bytes, pyplot
from energy_guidance.recipes.policies import label


def budget(root: Path) -> tuple[int, int]:
    """(critic steps, behaviour steps) of every run under ``root`` (their config.json)."""
    found = {
        (c["training"]["critic_steps"], c["training"]["behaviour_steps"])
        for c in (json.loads(p.read_text()) for p in sorted(root.rglob("config.json")))
    }
    if len(found) != 1:
        raise SystemExit(f"{root}: expected runs of one budget, found {sorted(found) or 'none'}")
    return found.pop()


def load(roots: list[Path]) -> list[dict]:
    """Per root: its budget, its data set's summary (one data set per root) and score."""
    points = []
    for root in roots:
        summary = json.loads((root / "summary.json").read_text())
        (dataset, table), *more = summary["datasets"].items()
        if more:
            raise SystemExit(f"{root}: one data set per root, found {len(more) + 1}")
        critic, behaviour = budget(root)
        points.append(
            {"root": str(root), "dataset": dataset, "critic": critic, "behaviour": behaviour, **table}
        )
    return sorted(points, key=lambda p: (p["critic"], p["behaviour"]))


def to_markdown(points: list[dict]) -> str:
    names = list(dict.fromkeys(n for p in points for n in p["policies"]))
    heads = [f"{p['critic'] // 1000}k / {p['behaviour'] // 1000}k" for p in points]
    lines = [
        f"Normalised score on {points[0]['dataset']}, mean ± sd over seeds (per seed); columns: critic "
        "/ behaviour-model steps",
        "",
        "| policy | " + " | ".join(heads) + " |",
        "|---|" + "---|" * len(points),
    ]
    for name in names:
        cells = []
        for p in points:
            entry = p["policies"].get(name)
            seeds = "" if entry is None else ", ".join(f"{s:.1f}" for s in entry["per_seed"])
            cells.append("—" if entry is None else f"{entry['mean']:.1f} ± {entry['std']:.1f} ({seeds})")
        lines.append(f"| {label(name)} | " + " | ".join(cells) + " |")
    lines.append(
        "| data set (mean episode) | " + " | ".join(f"{p['dataset_score']:.1f}" for p in points) + " |"
    )
    return "\n".join(lines) + "\n"


def figure(points: list[dict]) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 5))
    steps = np.array([p["critic"] for p in points])
    names = list(dict.fromkeys(n for p in points for n in p["policies"]))
    for name in names:
        have = [p for p in points if name in p["policies"]]
        x = np.array([p["critic"] for p in have])
        mean = np.array([p["policies"][name]["mean"] for p in have])
        sd = np.array([p["policies"][name]["std"] for p in have])
        (line,) = ax.plot(x, mean, marker="o", label=label(name))
        ax.fill_between(x, mean - sd, mean + sd, color=line.get_color(), alpha=0.12)
    ax.axhline(points[0]["dataset_score"], color="tab:gray", linestyle="--", linewidth=1, label="data set")
    ax.set_xticks(steps, [f"{s // 1000}k" for s in steps])
    ax.set_xlabel("critic and behaviour-model training steps")
    ax.set_ylabel("normalised score (mean ± sd over seeds)")
    ax.set_title(points[0]["dataset"])
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    return figure_bytes(fig)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("roots", nargs="+", type=Path)
    p.add_argument("--out", type=Path, help="the figure (PNG); none written without it")
    args = p.parse_args(argv)
    points = load(args.roots)
    text = to_markdown(points)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out, figure(points))
    return text


if __name__ == "__main__":
    main()
