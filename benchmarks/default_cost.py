"""Wall time of the default guidance against unguided sampling, calibration included:
``python -m benchmarks.default_cost``.

The setting of issue 17's 3× goal (`benchmarks.dimension`'s d = 32 four-component mixture, its
trained ε-MLP, DPM-Solver++ 25 steps, batch 1,024, one thread), each energy at its middle β. A
fresh ``AnalyticEnergyGuidance(scheduler, model, energy, β)`` is timed each time, so its
calibration from the model's own samples is included; unguided sampling is timed between the
guided runs. Reports the median of ``--repeats`` timings of each, their ratio, and the median
time of the calibration's parts: the pilot (:func:`~energy_guidance.calibration.draw_pilot`),
its table (``Pilot.table``) and the mixture's fit
(:func:`~energy_guidance.mixture.fit_tied_mixture`). To time another version of the library,
put its checkout first on the path: ``PYTHONPATH=<checkout> python benchmarks/default_cost.py``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks import dimension
from energy_guidance import AnalyticEnergyGuidance, sample
from energy_guidance.calibration import draw_pilot
from energy_guidance.mixture import fit_tied_mixture


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    return statistics.median(seconds(fn) for _ in range(repeats))


def run(
    dim: int = 32,
    batch: int = 1024,
    steps: int = 25,
    repeats: int = 5,
    out: str = "outputs/dimension",
    model_steps: int = 3000,
) -> dict:
    cfg = dimension.Config(out=out, model_steps=model_steps)
    mix = dimension.make_mixture(dim, cfg.seed)
    model, _ = dimension.trained_model(mix, cfg, lambda *_: None)
    energies = dimension.make_energies(mix, cfg.seed)
    scheduler = dimension.dpm_scheduler()

    def unguided() -> object:
        return sample(
            scheduler,
            model,
            (batch, dim),
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(1),
        )

    rows = []
    for name in dimension.ENERGIES:
        beta = dimension.BETAS[name][1]

        def guided(name: str = name, beta: float = beta) -> object:
            guidance = AnalyticEnergyGuidance(scheduler, model, energies[name], beta)
            return guidance.sample(
                (batch, dim), num_inference_steps=steps, generator=torch.Generator().manual_seed(1)
            )

        guided()  # warm-up
        times_u, times_g = [], []
        for _ in range(repeats):  # alternating, so that both see the same load
            times_u.append(seconds(unguided))
            times_g.append(seconds(guided))
        u, g = statistics.median(times_u), statistics.median(times_g)
        rows.append({"energy": name, "beta": beta, "unguided_s": u, "default_s": g, "ratio": g / u})
    pilot = draw_pilot(scheduler, model, (dim,))
    parts = {
        "unguided_s": statistics.median(r["unguided_s"] for r in rows),
        "pilot_s": median_seconds(lambda: draw_pilot(scheduler, model, (dim,)), repeats),
        "table_s": median_seconds(lambda: pilot.table(model), repeats),
        "mixture_fit_s": median_seconds(lambda: fit_tied_mixture(pilot.samples), repeats),
    }
    return {"rows": rows, "parts": parts}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="outputs/dimension", help="where the trained model is cached")
    parser.add_argument("--model-steps", type=int, default=3000, help="Adam steps of the trained MLP")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args.dim, args.batch, args.steps, args.repeats, args.out, args.model_steps)
    print(
        f"# default_cost ({time.strftime('%Y-%m-%d')}, {platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s))"
    )
    for row in result["rows"]:
        print(
            f"{row['energy']:9s} beta {row['beta']:g}: default {row['default_s']:.3f} s, "
            f"unguided {row['unguided_s']:.3f} s, {row['ratio']:.2f}x"
        )
    parts = result["parts"]
    u = parts["unguided_s"]
    print(
        "calibration parts, in units of unguided sampling: "
        + ", ".join(f"{k[:-2]} {v / u:.2f}x" for k, v in parts.items() if k != "unguided_s")
    )
    return result


if __name__ == "__main__":
    main()
