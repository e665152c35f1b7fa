"""The default guidance against the size of its calibration, on a sharp linear tilt across
modes in 2-D: ``python -m benchmarks.calibration_size``.

`benchmarks.dimension`'s d = 2 mixture (its data seeds), the linear energy at its middle β = 3,
the exact noise model, DPM-Solver++ 25 steps. The default guidance takes a table built from a
pilot of N of the model's own samples (``draw_pilot(..., num_samples=N).table(model)``, passed
as ``variance_table=``; the table keeps at most 1,024); for each N, ``--samples`` guided samples
from each of ``--runs`` sampler seeds, and their sliced Wasserstein distance (SW2) to the
closed-form tilted target.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks import dimension
from energy_guidance import AnalyticEnergyGuidance, sample
from energy_guidance.calibration import draw_pilot

BETA = 3.0


def run(
    sizes: tuple[int, ...] = (256, 512, 1024),
    seeds: tuple[int, ...] = (0, 1, 2),
    runs: int = 3,
    samples: int = 1000,
    steps: int = 25,
) -> list[dict]:
    rows = []
    for seed in seeds:
        mix = dimension.make_mixture(2, seed)
        energy = dimension.make_energies(mix, seed)["linear"]
        reference = dimension.build_reference(
            mix, energy, BETA, 10_000, dimension._generator(seed, "ref"), 1000.0
        )
        scheduler = dimension.dpm_scheduler()
        model = mix.noise_model(scheduler)
        for size in sizes:
            table = draw_pilot(scheduler, model, (2,), num_samples=size).table(model)
            for r in range(runs):
                guidance = AnalyticEnergyGuidance(scheduler, model, energy, BETA, variance_table=table)
                x = sample(
                    scheduler,
                    guidance,
                    (samples, 2),
                    num_inference_steps=steps,
                    generator=torch.Generator().manual_seed(10 + r),
                )
                rows.append({"seed": seed, "pilot": size, "run": r, "sw2": dimension.sw2(x, reference)})
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = run(tuple(args.sizes), tuple(args.seeds), args.runs, args.samples)
    print(
        f"# calibration_size ({time.strftime('%Y-%m-%d')}), linear beta {BETA:g}, d = 2: SW2 per sampler seed"
    )
    for seed in args.seeds:
        cells = []
        for size in args.sizes:
            values = [r["sw2"] for r in rows if r["seed"] == seed and r["pilot"] == size]
            cells.append(f"N={size}: " + " ".join(f"{v:.3f}" for v in values))
        print(f"data seed {seed} | " + " | ".join(cells))
    return rows


if __name__ == "__main__":
    main()
