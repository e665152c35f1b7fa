"""Wall time of the default guidance against unguided sampling, calibration included:
``python -m benchmarks.default_cost``.

The setting of issue 17's 3× goal (`benchmarks.dimension`'s d = 32 four-component mixture, its
trained ε-MLP, DPM-Solver++ 25 steps, batch 1,024, one thread), each energy at its middle β. A
fresh ``AnalyticEnergyGuidance(scheduler, model, energy, β)`` is timed each time, so its
calibration from the model's own samples is included; unguided sampling is timed between the
guided runs. Reports the median of ``--repeats`` timings of each, their ratio, and the median
time of the calibration's parts: the pilot (:func:`~energy_guidance.calibration.draw_pilot`),
its table (``Pilot.table``) and the mixture's fit
(:func:`~energy_guidance.mixture.fit_tied_mixture`). Also the guided sampling alone: the same
guidance sampled again once calibrated (``calibrated``), and with ``--num-pairs M ...`` that of
the default's estimator with M antithetic pairs of draws (``ImportanceTilt(energy, beta,
num_pairs=M)``) for each M. To time another version of the library, put its checkout first on
the path: ``PYTHONPATH=<checkout> python benchmarks/default_cost.py``.
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
from energy_guidance.importance import ImportanceTilt
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
    num_pairs: tuple[int, ...] = (),
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

        def draw(guidance: AnalyticEnergyGuidance) -> object:
            return guidance.sample(
                (batch, dim), num_inference_steps=steps, generator=torch.Generator().manual_seed(1)
            )

        def guided(name: str = name, beta: float = beta) -> object:  # calibrated on its first call
            return draw(AnalyticEnergyGuidance(scheduler, model, energies[name], beta))

        # once calibrated: the default, and its estimator with each number of pairs
        calibrated = {"calibrated": AnalyticEnergyGuidance(scheduler, model, energies[name], beta)}
        for m in num_pairs:
            estimator = ImportanceTilt(energies[name], beta, num_pairs=m)
            calibrated[f"pairs_{m}"] = AnalyticEnergyGuidance(scheduler, model, estimator=estimator)
        guided()  # warm-up
        for guidance in calibrated.values():
            draw(guidance)  # calibrates it
        times: dict[str, list[float]] = {"unguided": [], "default": []} | {k: [] for k in calibrated}
        for _ in range(repeats):  # alternating, so that all see the same load
            times["unguided"].append(seconds(unguided))
            times["default"].append(seconds(guided))
            for key, guidance in calibrated.items():
                times[key].append(seconds(lambda guidance=guidance: draw(guidance)))
        median = {k: statistics.median(v) for k, v in times.items()}
        u = median["unguided"]
        row = {"energy": name, "beta": beta, "unguided_s": u, "default_s": median["default"]}
        row |= {"ratio": median["default"] / u} | {f"{k}_ratio": median[k] / u for k in calibrated}
        rows.append(row)
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
    parser.add_argument(
        "--num-pairs", type=int, nargs="*", default=[], help="also time the calibrated estimator with M pairs"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(
        args.dim, args.batch, args.steps, args.repeats, args.out, args.model_steps, tuple(args.num_pairs)
    )
    print(
        f"# default_cost ({time.strftime('%Y-%m-%d')}, {platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s))"
    )
    for row in result["rows"]:
        calibrated = ", ".join(
            f"{k.removesuffix('_ratio').replace('_', ' ')} {v:.2f}x"
            for k, v in row.items()
            if k.endswith("_ratio")
        )
        print(
            f"{row['energy']:9s} beta {row['beta']:g}: default {row['default_s']:.3f} s, "
            f"unguided {row['unguided_s']:.3f} s, {row['ratio']:.2f}x (once calibrated: {calibrated})"
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
