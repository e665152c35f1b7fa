"""The figures of the recipes and the offline-RL benchmark, as PNG bytes (for atomic writes).

learning_curves  one panel per training phase (its losses against gradient steps) and one of the
                 evaluated policies' scores with reference lines: random (0), expert (100) and
                 the data set's own mean return, normalised
scores_figure    normalised score of every method on every data set (mean ± std over seeds),
                 the values written on the bars, the same reference lines per data set
"""

from __future__ import annotations

import io
from typing import TypedDict

import numpy as np

REFERENCES = (("random", 0.0, "tab:red"), ("expert", 100.0, "tab:green"))


def figure_bytes(fig) -> bytes:
    """``fig`` as PNG bytes (tight layout), the figure closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (matplotlib is an optional dependency)."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("figures need matplotlib: pip install 'energy-guidance[plots]'") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _reference_lines(ax, dataset_score: float | None, normalised: bool, horizontal: bool = True) -> None:
    if not normalised:
        return
    lines = [*REFERENCES]
    if dataset_score is not None:
        lines.append(("data set", dataset_score, "tab:gray"))
    for name, value, colour in lines:
        draw = ax.axhline if horizontal else ax.axvline
        draw(value, color=colour, linestyle="--", linewidth=1, label=name)


def learning_curves(
    histories: dict[str, dict[str, list[float]]],
    scores: dict[str, dict],
    dataset_score: float | None = None,
    labels: dict[str, str] | None = None,
) -> bytes:
    """Loss histories ``{phase: {"step": [...], loss: [...]}}`` and the scores of a run
    (``results.json``'s ``scores``): normalised with reference lines when every policy has one."""
    plt = pyplot()
    labels = labels or {}
    fig, axes = plt.subplots(
        1,
        len(histories) + 1,
        figsize=(4.2 * (len(histories) + 1), 3.6),
        gridspec_kw={"width_ratios": [1] * len(histories) + [1.6]},  # room for the policies' names
    )
    for ax, (phase, history) in zip(axes, histories.items(), strict=False):
        for key, values in history.items():
            if key != "step" and len(values) == len(history["step"]):
                ax.plot(history["step"], values, label=key)
        if all(v > 0 for k, vs in history.items() if k != "step" for v in vs):
            ax.set_yscale("log")
        ax.set(title=phase, xlabel="gradient step")
        ax.legend(fontsize=7)
    ax = axes[-1]
    normalised = all("score_mean" in s for s in scores.values())
    key = "score" if normalised else "return"
    names = list(scores)
    means = [scores[n][f"{key}_mean"] for n in names]
    ax.barh(range(len(names)), means, xerr=[scores[n][f"{key}_std"] for n in names], color="tab:blue")
    for i, value in enumerate(means):
        ax.text(value, i, f" {value:.1f}", va="center", fontsize=7)
    ax.set_yticks(range(len(names)), [labels.get(n, n) for n in names], fontsize=7)
    ax.invert_yaxis()
    _reference_lines(ax, dataset_score, normalised, horizontal=False)
    ax.set(title="normalised score" if normalised else "return")
    if normalised:
        ax.legend(fontsize=7, loc="lower right")
    return figure_bytes(fig)


class Panel(TypedDict):
    """One data set's entry of :func:`scores_figure`'s table."""

    policies: dict[str, dict[str, float]]  # name -> {"mean", "std"}
    dataset_score: float | None  # the data set's own normalised score (a reference line)


def scores_figure(table: dict[str, Panel], labels: dict[str, str] | None = None) -> bytes:
    """``table[dataset] = {"policies": {name: {"mean", "std"}}, "dataset_score": float | None}``:
    one panel per data set, a bar per method with its value, reference lines."""
    plt = pyplot()
    labels = labels or {}
    height = 0.45 * max(len(entry["policies"]) for entry in table.values()) + 1.6
    fig, axes = plt.subplots(1, len(table), figsize=(5.2 * len(table), height), squeeze=False)
    for ax, (dataset, entry) in zip(axes[0], table.items(), strict=True):
        names = list(entry["policies"])
        means = np.array([entry["policies"][n]["mean"] for n in names])
        stds = np.array([entry["policies"][n]["std"] for n in names])
        ax.barh(range(len(names)), means, xerr=stds, color="tab:blue", alpha=0.8)
        for i, (m, s) in enumerate(zip(means, stds, strict=True)):
            ax.text(max(m, 0.0), i, f" {m:.1f} ± {s:.1f}", va="center", fontsize=7)
        ax.set_yticks(range(len(names)), [labels.get(n, n) for n in names], fontsize=7)
        ax.invert_yaxis()
        _reference_lines(ax, entry.get("dataset_score"), True, horizontal=False)
        ax.set(title=dataset, xlabel="normalised score")
        ax.legend(fontsize=7, loc="lower right")
    return figure_bytes(fig)
