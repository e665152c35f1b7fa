"""The report: markdown tables of the rows, the goals of issue 9, the sampler legend, the plots."""

from __future__ import annotations

import io
import math
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from energy_guidance.checkpoints import atomic_write
from energy_guidance.recipes.toys2d import DATASETS

from .methods import LEARNED, METHODS, TWISTS

if TYPE_CHECKING:
    from .config import Config


def _fmt(value: float, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "div"
    return f"{value * scale:.3f}"


def _by(rows: list[dict], part: str) -> dict[tuple[str, float], dict[str, dict]]:
    table: dict[tuple[str, float], dict[str, dict]] = {}
    for r in rows:
        if r["part"] == part and "beta" in r:
            table.setdefault((r["dataset"], r["beta"]), {})[r["method"]] = r
    return table


def metric_table(
    rows: list[dict], part: str, methods: list[str], key: str = "sw2", scale: float = 1.0
) -> str:
    """Markdown: one line per (data set, β), ``key`` × ``scale`` per method (floor ± s.d.)."""
    by = _by(rows, part)
    head = "| data set | β | " + " | ".join(methods) + " |"
    lines = [head, "|" + "---|" * (len(methods) + 2)]
    for k in sorted(by, key=lambda k: (DATASETS.index(k[0]), k[1])):
        cells = []
        for m in methods:
            r = by[k].get(m)
            cell = _fmt(r[key], scale) if r is not None and key in r else "–"
            if r is not None and m == "resampled" and key + "_sd" in r:
                cell += f" ± {r[key + '_sd'] * scale:.3f}"
            cells.append(cell)
        lines.append(f"| {k[0]} | {k[1]:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def training_table(rows: list[dict], methods: list[str]) -> str:
    """Steps, seconds and guidance error of each learned estimator per setting."""
    by = _by(rows, "exact")
    head = "| data set | β | " + " | ".join(f"{m}: steps / s / err" for m in methods) + " |"
    lines = [head, "|" + "---|" * (len(methods) + 2)]
    for k in sorted(by, key=lambda k: (DATASETS.index(k[0]), k[1])):
        cells = []
        for m in methods:
            r = by[k].get(m)
            cells.append("–" if r is None else f"{r['steps']} / {r['train_s']:.1f} / {r['guidance_err']:.2f}")
        lines.append(f"| {k[0]} | {k[1]:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def smc_summary(rows: list[dict], part: str) -> str:
    """Per (twist, K), the median over settings: SW2, wall time, ESS, resampling, log Z error."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["part"] == part and r["method"].startswith("smc_"):
            groups.setdefault(r["method"], []).append(r)
    if not groups:
        return ""
    lines = [
        "| SMC run | populations × K | SW2 | s | mean ESS/K | min ESS/K | final ESS/K | "
        "resamplings / population | log Ẑ - log Z | \\|ℓ̄ - ℓ*\\| (s.e.) | diverged |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, rs in groups.items():
        ok = [r for r in rs if not r["diverged"]]

        def mean(key: str, rs=ok) -> str:  # the median: exploded runs would dominate a mean
            values = sorted(r[key] for r in rs)
            return f"{values[len(values) // 2]:.2f}" if values else "–"

        sw = sorted(r["sw2"] for r in rs)
        lines.append(
            f"| {method[4:]} | {rs[0]['populations']} × {rs[0]['K']} | {_fmt(sw[len(sw) // 2])} | "
            f"{mean('sample_s', rs)} | {mean('ess_mean')} | {mean('ess_min')} | {mean('ess_final')} | "
            f"{mean('resamplings')} | {mean('logz_err')} | {mean('label_err')} ({mean('label_se')}) | "
            f"{len(rs) - len(ok)}/{len(rs)} |"
        )
    return "\n".join(lines)


def sampling_times(rows: list[dict], part: str, methods: list[str]) -> str:
    """Mean sampling seconds per method over all settings."""
    cells = []
    for m in methods:
        times = [r["sample_s"] for r in rows if r["part"] == part and r["method"] == m and "sample_s" in r]
        cells.append(f"{sum(times) / len(times):.2f}" if times else "–")
    head = "| mean sampling s | " + " | ".join(methods) + " |"
    return head + "\n|" + "---|" * (len(methods) + 1) + "\n| | " + " | ".join(cells) + " |"


def count(by: dict, better: str, than: str, factor: float = 1.0, slack: str | None = None) -> tuple[int, int]:
    """Settings where ``better``'s SW2 ≤ factor × ``than``'s (+ 2 s.d. of the floor with ``slack``)."""
    hits = total = 0
    for found in by.values():
        if better not in found or than not in found:
            continue
        total += 1
        bound = factor * found[than]["sw2"]
        if slack and slack in found:
            bound += 2 * found[slack]["sw2_sd"]
        hits += found[better]["sw2"] <= bound
    return hits, total


def blew_up(row: dict) -> bool:
    return not row.get("diverged") and row.get("escaped", 0.0) > 0.01


def smc_protocol_text(cfg: Config, k: int | None = None) -> str:
    """How the SMC runs were scored, in words (K = ``k``, or every K)."""
    spacing = "" if cfg.smc_spacing == "leading" else f"; DDPM with {cfg.smc_spacing} spacing"
    if cfg.smc_protocol == "populations":
        outputs = f"{cfg.num_samples} outputs, each from its own {k or 'K'} particles"
        return f"one output per population: {outputs}{spacing}"
    runs = f"{cfg.smc_particles // k} populations × {k}" if k else f"{cfg.smc_particles} particles per run"
    return f"equal particle budget: {runs}, pooled weighted particles{spacing}"


def goals(rows: list[dict], cfg: Config) -> str:
    """Issue 9's measured goals, counted per (data set, β)."""
    lines = []
    by = _by(rows, "exact")

    def line(text: str, better: str, than: str, factor: float = 1.0, noise: bool = False) -> None:
        hits, total = count(by, better, than, factor)
        if not total:
            return
        extra = ""
        if noise:
            soft, _ = count(by, better, than, factor, slack="resampled")
            extra = f" ({soft}/{total} within 2 s.d. of the floor's noise)"
        lines.append(f"- {text}: {hits}/{total}{extra}")

    for second in ("cf2_dv", "cf2_jac", "tw2_dv", "tw2_jac"):
        line(f"second-order `{second}` SW2 ≤ DPS-style", second, "dps", noise=True)
    for quadrature in ("gh3_dv", "gh3_jac", "gh5_jac"):
        line(f"quadrature `{quadrature}` SW2 ≤ DPS-style", quadrature, "dps", noise=True)
    for second, first in (("cf2_dv", "cf1_dv"), ("cf2_jac", "cf1_jac"), ("tw2_dv", "tw1_dv")):
        line(f"`{second}` ≤ its first-order form `{first}`", second, first)
    k = max(cfg.smc_k) if cfg.smc_k else None
    for twist in cfg.twists:
        text = f"SMC `{twist}` twist, K = {k} ({smc_protocol_text(cfg, k)}): SW2 ≤ 1.5 × exact guidance's"
        line(text, f"smc_{twist}_K{k}", "exact", 1.5, noise=True)
    for net in ("net_cf2", "net_cf1", "net_cum1", "net_gh3", "classifier"):
        line(f"`{net}` SW2 ≤ CEP's at equal training wall time", net, "cep", noise=True)
    learned = _by(rows, "learned")
    for second in ("cf2_dv", "cf2_jac", "tw2_dv", "gh3_dv", "gh3_jac", "gh5_jac"):
        hits, total = count(learned, second, "dps")
        if total:
            lines.append(f"- learned model: `{second}` SW2 ≤ DPS-style: {hits}/{total}")
    for text, bad in (
        ("diverged (non-finite samples)", lambda r: r.get("diverged")),
        ("blew up (finite, but > 1 % of samples beyond twice the data's radius)", blew_up),
    ):
        found = sorted({(r["part"], r["method"]) for r in rows if bad(r)})
        parts = []
        for part, method in found:
            n = sum(1 for r in rows if r["part"] == part and r["method"] == method and bad(r))
            parts.append(f"{part}/{method} on {n}")
        lines.append(f"- {text}: " + (", ".join(parts) if parts else "none"))
    return "\n".join(lines)


def plot_grid(path: Path, per_dataset: dict, beta: float, columns: list[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_dataset)
    cols = ["data", "target", *columns]
    size = (1.3 * len(cols), 1.3 * len(names))
    fig, axes = plt.subplots(len(names), len(cols), figsize=size, squeeze=False)
    for i, name in enumerate(names):
        samples = per_dataset[name]
        panels = {"data": samples["data"], "target": samples.get((beta, "target"))}
        panels |= {m: samples.get((beta, m)) for m in columns}
        lim = float(samples["data"].abs().max()) * 1.1
        for j, col in enumerate(cols):
            ax = axes[i, j]
            x = panels[col]
            if x is not None:
                x = x[:1000]
                ax.scatter(x[:, 0], x[:, 1], s=0.5, alpha=0.5, c="C0" if col in ("data", "target") else "C1")
            elif (beta, col) in samples:
                ax.text(0.5, 0.5, "diverged", ha="center", va="center", transform=ax.transAxes, fontsize=7)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col.replace("smc_", "smc ").replace("_K", " K"), fontsize=6)
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle(f"{title}, β = {beta:g}", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=90, format="png")
    atomic_write(path, buffer.getvalue())
    plt.close(fig)


def legend(cfg: Config) -> str:
    """One line per sampler and SMC twist that ran: its name (the column) and its description."""
    methods = [*cfg.methods] if "exact" in cfg.parts else []
    twists = [*cfg.twists] if "exact" in cfg.parts else []
    if "learned" in cfg.parts:
        methods += cfg.learned_methods
        twists += cfg.learned_twists
    lines = [f"- `{name}`: {METHODS[name].description}" for name in dict.fromkeys(methods)]
    if cfg.smc_k:
        lines += [f"- `smc_{name}_K<K>`: {TWISTS[name].description}" for name in dict.fromkeys(twists)]
    return "\n".join(lines)


def render(rows: list[dict], cfg: Config, walls: dict, wall: float) -> str:
    sections = ["## Samplers\n", legend(cfg), ""]
    exact_rows = [r for r in rows if r["part"] == "exact"]
    if exact_rows:
        base = ["resampled", "two_draws", *cfg.methods]
        smc = [f"smc_{t}_K{k}" for t in cfg.twists for k in cfg.smc_k]
        sections += [
            "## Part 1: exact noise model\n",
            f"SW2 to the exact target (lower is better; {cfg.num_samples} samples per sampler)\n",
            metric_table(rows, "exact", base),
            "\nMMD² × 10³ to the exact target\n",
            metric_table(rows, "exact", [m for m in base if m != "two_draws"], "mmd2", 1e3),
            f"\nSMC ({smc_protocol_text(cfg)}), SW2 beside exact guidance's\n",
            metric_table(rows, "exact", ["resampled", "exact", *smc]),
            "\nSMC runs, medians over the settings\n",
            smc_summary(rows, "exact"),
        ]
        learned = [m for m in cfg.methods if m in LEARNED]
        if learned:
            sections += [
                f"\nLearned estimators at equal training wall time ({cfg.train_seconds:g} s each, set-up "
                "included): steps, seconds, relative guidance error\n",
                training_table(rows, learned),
            ]
        sections += ["\nWall time\n", sampling_times(rows, "exact", list(cfg.methods))]
    learned_rows = [r for r in rows if r["part"] == "learned"]
    if learned_rows:
        models = [r for r in learned_rows if r["method"] == "model"]
        smc = [f"smc_{t}_K{k}" for t in cfg.learned_twists for k in cfg.smc_k]
        sanity = "\n".join(
            f"- {r['dataset']}: fitted in {r['fit_s']:.1f} s, unguided SW2 to the data "
            f"{r['sw2_to_data']:.3f} "
            f"(i.i.d. data draws {r['data_floor']:.3f}); {r['pool_finite']} finite target-pool samples"
            for r in models
        )
        by = _by(rows, "learned")
        ess = "\n".join(
            f"- {k[0]} β={k[1]:g}: {by[k]['resampled']['target_ess']:.0f}"
            for k in sorted(by, key=lambda k: (DATASETS.index(k[0]), k[1]))
        )
        sections += [
            "\n## Part 2: learned MLP noise model\n",
            sanity,
            f"\nESS of the learned model's target (of {cfg.target_pool} weighted samples)\n",
            ess,
            "\nSW2 to the learned model's own tilted target\n",
            metric_table(rows, "learned", ["resampled", "two_draws", *cfg.learned_methods, *smc]),
            "\nMMD² × 10³\n",
            metric_table(rows, "learned", ["resampled", *cfg.learned_methods, *smc], "mmd2", 1e3),
            "\nSMC runs, medians over the settings\n",
            smc_summary(rows, "learned"),
            "\nWall time\n",
            sampling_times(rows, "learned", list(cfg.learned_methods)),
        ]
    sections += ["\n## Goals (issue 9)\n", goals(rows, cfg)]
    parts = ", ".join(f"{p} {s:.0f} s" for p, s in walls.items())
    sections.append(
        f"\nwall time {wall:.0f} s ({parts}), {cfg.threads} thread(s), torch {torch.__version__}, "
        f"{platform.machine()}, {time.strftime('%Y-%m-%d')}"
    )
    return "\n".join(sections)
