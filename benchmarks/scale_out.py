"""One process against ``torchrun --nproc-per-node N`` at equal global batch: the same losses?

    python -m benchmarks.scale_out                      # the embedded Pendulum set, N = 2
    python -m benchmarks.scale_out --steps 5000 --nproc 2 -- --batch-size 512

Trains the recipe's phases (``python -m energy_guidance.recipes.aepo``, evaluation cut to one
episode of AEPO's policy set) once as one process and once under torchrun with N processes (gloo on CPU), in
``<root>/{single,torchrun}``. The energy network's regression targets come from the critic and
the behaviour model, which differ between those two runs, so its phase is compared on a third
run, ``<root>/torchrun_energy``: torchrun again, starting from the single run's critic and
behaviour checkpoints. Each loss of each phase is compared over the last ``--window``
logged averages (every 50 steps): mean ± standard error (the s.d. of those averages over √count,
treating them as independent, which they nearly are 50 steps apart). Prints a markdown table
with the difference in units of the combined standard error, and the wall time of each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from energy_guidance.checkpoints import checkpoint_steps, copy_checkpoint, read_json

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("critic", "behaviour", "energy")


def final_losses(run_dir: Path, window: int) -> dict[str, dict[str, tuple[float, float]]]:
    """phase -> loss -> (mean, standard error) over the last ``window`` logged averages."""
    out = {}
    for phase in PHASES:
        step = checkpoint_steps(run_dir / "checkpoints", phase)[0]
        history = read_json(run_dir / "checkpoints" / f"{phase}-{step}.json")["history"]
        out[phase] = {}
        for key, values in history.items():
            if key == "step":
                continue
            tail = np.asarray(values[-window:], dtype=np.float64)
            out[phase][key] = (float(tail.mean()), float(tail.std(ddof=1) / np.sqrt(len(tail))))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default="runs/bench_scale_out")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3000, help="gradient steps of each phase")
    parser.add_argument("--window", type=int, default=10, help="logged averages compared at the end")
    parser.add_argument(
        "recipe_args", nargs=argparse.REMAINDER, help="-- then options of energy_guidance.recipes.aepo"
    )
    args = parser.parse_args(argv)
    recipe = [
        *("--critic-steps", str(args.steps), "--behaviour-steps", str(args.steps)),
        *("--energy-steps", str(args.steps), "--eval-episodes", "1", "--no-ablations", "--no-smc"),
        *("--no-progress", "--device", "cpu"),
        *[a for a in args.recipe_args if a != "--"],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launchers = {
        "single": [sys.executable, "-m", "energy_guidance.recipes.aepo"],
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                     str(args.nproc), "-m", "energy_guidance.recipes.aepo"],
    }  # fmt: skip
    launchers["torchrun_energy"] = launchers["torchrun"]
    seconds, losses = {}, {}
    for name, launcher in launchers.items():
        run_dir = Path(args.root) / name
        if name == "torchrun_energy":  # the single run's critic and behaviour: the same targets
            for phase in ("critic", "behaviour"):
                copy_checkpoint(Path(args.root) / "single" / "checkpoints", run_dir / "checkpoints", phase)
        t0 = time.perf_counter()
        subprocess.run([*launcher, *recipe, "--run-dir", str(run_dir)], cwd=ROOT, env=env, check=True)
        seconds[name] = time.perf_counter() - t0
        losses[name] = final_losses(run_dir, args.window)
    lines = [
        f"`python -m benchmarks.scale_out --nproc {args.nproc} --steps {args.steps} --window {args.window}`",
        "",
        f"| phase | loss | 1 process | torchrun, {args.nproc} processes | difference / combined s.e. |",
        "|---|---|---|---|---|",
    ]
    for phase in PHASES:
        other = losses["torchrun_energy" if phase == "energy" else "torchrun"][phase]
        for key, (m1, s1) in losses["single"][phase].items():
            m2, s2 = other[key]
            z = (m2 - m1) / max(np.hypot(s1, s2), 1e-12)
            lines.append(f"| {phase} | {key} | {m1:.4g} ± {s1:.2g} | {m2:.4g} ± {s2:.2g} | {z:+.1f} |")
    lines += [
        "",
        *[f"- wall time, {name}: {s:.0f} s (training and one evaluation)" for name, s in seconds.items()],
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
