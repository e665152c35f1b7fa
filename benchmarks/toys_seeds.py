"""Pool runs of ``python -m benchmarks.toys`` at different seeds: mean SW2 per setting, goals on the means.

A single seed's SW2 carries the floor's noise (its s.d. over repeats, measured in
docs/benchmarks.md), as large as the differences that the goals' 1.5× mark decides; the mean over
S seeds cuts it by √S. Each method is pooled over the seeds of the runs given (runs at one seed
with different methods, such as two SMC twists run apart, merge); a method must be present at
every seed, or it is left out and named.
The floor's spread reported for the mean is its s.d. over one seed's repeats divided by √S.

    python -m benchmarks.toys_seeds outputs/toys_smc_quadrature outputs/toys_smc_trailing \
        outputs/toys_smc_quadrature_seed1 ... --out outputs/toys_smc_seeds
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import tyro

from benchmarks import toys
from energy_guidance.checkpoints import atomic_write, write_json

# Settings of a run that must agree for its rows to be pooled (the methods, twists and seed may differ).
PROTOCOL = ("betas", "smc_spacing", "smc_protocol", "smc_k", "num_data", "num_samples", "num_inference_steps")


@dataclass
class Config:
    """Pool benchmarks.toys runs made at different seeds."""

    runs: tyro.conf.Positional[tuple[str, ...]]  # output folders of benchmarks.toys (each with results.json)
    out: str = "outputs/toys_seeds"  # results.md, results.json


def load(folder: str) -> dict:
    path = Path(folder) / "results.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no results.json (is {folder} a benchmarks.toys output folder?)")
    return json.loads(path.read_text())


def pool(runs: list[dict]) -> tuple[list[dict], list[int], list[str]]:
    """Rows with SW2 averaged over seeds, the seeds, and the methods left out (``part/method``:
    absent at some seed)."""
    first = runs[0]["config"]
    for run in runs[1:]:
        differs = [k for k in PROTOCOL if run["config"][k] != first[k]]
        if differs:
            raise SystemExit(f"runs differ in {', '.join(differs)}: only seeds and methods may differ")
    per_seed: dict[tuple, dict[int, dict]] = {}
    for run in runs:
        seed = run["config"]["seed"]
        for r in run["rows"]:
            if "beta" in r and "sw2" in r:  # a method run in two folders at one seed is the same draw
                per_seed.setdefault((r["part"], r["dataset"], r["beta"], r["method"]), {})[seed] = r
    seeds = sorted({run["config"]["seed"] for run in runs})
    missing = sorted({f"{key[0]}/{key[3]}" for key, found in per_seed.items() if len(found) < len(seeds)})
    rows = []
    for (part, dataset, beta, method), found in per_seed.items():
        if f"{part}/{method}" in missing:
            continue
        values = [found[s]["sw2"] for s in seeds]
        mean = sum(values) / len(values)
        row = {"part": part, "dataset": dataset, "beta": beta, "method": method, "sw2": mean, "seeds": values}
        if len(values) > 1:
            var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
            row["sw2_se"] = math.sqrt(var / len(values))
        if "sw2_sd" in found[seeds[0]]:  # the floor: one seed's spread over repeats, shrunk by √S
            row["sw2_sd"] = sum(found[s]["sw2_sd"] for s in seeds) / len(seeds) / math.sqrt(len(seeds))
        rows.append(row)
    return rows, seeds, missing


def render(rows: list[dict], seeds: list[int], missing: list[str], cfg: toys.Config) -> str:
    sections = [
        f"Mean SW2 over seeds {', '.join(map(str, seeds))} ({cfg.num_samples} samples per sampler; "
        "the floor ± its s.d. over repeats / √seeds)"
    ]
    for part, title in (("exact", "Part 1: exact noise model"), ("learned", "Part 2: learned model")):
        found = [r for r in rows if r["part"] == part]
        if not found:
            continue
        methods = sorted({r["method"] for r in found} - {"resampled", "two_draws"})
        methods.sort(key=lambda m: (m.startswith("smc_"), m))
        floor = [m for m in ("resampled", "two_draws") if any(r["method"] == m for r in found)]
        sections += [
            f"\n## {title}\n",
            toys.metric_table(rows, part, [*floor, *methods]),
            "\nStandard error of each mean over the seeds\n",
            toys.metric_table(rows, part, methods, key="sw2_se"),
        ]
    sections += ["\n## Goals (issue 9), counted on the means\n", toys.goals(rows, cfg)]
    if missing:
        sections.append(f"\nLeft out (absent at some seed): {', '.join(missing)}")
    return "\n".join(sections)


def main(argv: list[str] | None = None) -> dict:
    cfg = tyro.cli(Config, args=argv, prog="python -m benchmarks.toys_seeds")
    runs = [load(folder) for folder in cfg.runs]
    rows, seeds, missing = pool(runs)
    twists = tuple(dict.fromkeys(t for run in runs for t in run["config"]["twists"]))
    fields = {f.name for f in dataclasses.fields(toys.Config)}
    first = runs[0]["config"]
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in first.items() if k in fields}
    toy_cfg = dataclasses.replace(toys.Config(**settings), twists=twists)
    text = render(rows, seeds, missing, toy_cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.md", text.encode())
    write_json(out / "results.json", {"runs": list(cfg.runs), "seeds": seeds, "rows": rows})
    print(text)
    return {"rows": rows, "seeds": seeds, "missing": missing, "text": text}


if __name__ == "__main__":
    main()
