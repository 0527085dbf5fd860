"""Figures for TensorBoard and reports (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def gate_heatmap(usage: np.ndarray, rows: list[str], title: str = "expert utilization") -> plt.Figure:
    """Heatmap of mean gate weight per row (a task, or ``<cohort>=<value>/<task>``) and expert (columns),
    values annotated, on a fixed 0-1 colour scale (figures of two runs or splits compare by colour).

    Sized to its content: each cell is wide enough for its ``0.00`` label, the left margin fits the
    longest row label and each row gets its own line height (constrained layout: no label is cut).
    """
    n_rows, n_experts = usage.shape
    label_in = 0.075 * max((len(r) for r in rows), default=1)  # inches for the longest row label at 8 pt
    width = max(3.2, 0.6 + label_in + 0.48 * n_experts + 0.9)  # labels, cells, colour bar
    height = max(1.8, 1.0 + 0.3 * n_rows)
    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    im = ax.imshow(usage, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(n_experts), [f"e{e}" for e in range(n_experts)], fontsize=8)
    ax.set_yticks(range(n_rows), rows, fontsize=8)
    for (r, c), v in np.ndenumerate(usage):
        ax.text(c, r, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.5 else "k", fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.08, pad=0.02).ax.tick_params(labelsize=7)
    return fig


def metric_vs(series: dict[str, dict[str, dict[float, list[float]]]], xlabel: str,
              baseline: str | None = None) -> plt.Figure:
    """One panel per metric: ``{metric: {model: {x: [values over seeds]}}}`` as mean ± std lines against
    ``x``; with a ``baseline`` model present, a second row shows each model's mean minus the baseline's."""
    metrics = list(series)
    has_base = baseline is not None and all(baseline in series[m] for m in metrics)
    rows = 2 if has_base else 1
    fig, axes = plt.subplots(rows, len(metrics), figsize=(4.2 * len(metrics), 3.2 * rows), squeeze=False,
                             layout="constrained")
    for c, metric in enumerate(metrics):
        for k, (model, points) in enumerate(series[metric].items()):
            color = f"C{k}"  # one colour per model in both rows
            xs = sorted(points)
            values = [np.array([v for v in points[x] if not np.isnan(v)]) for x in xs]
            mean = np.array([v.mean() if len(v) else np.nan for v in values])
            std = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in values])
            axes[0, c].errorbar(xs, mean, yerr=std, marker="o", capsize=3, label=model, color=color)
            if has_base and model != baseline:
                base = series[metric][baseline]
                delta = [mean[i] - np.nanmean(base[x]) if x in base else np.nan for i, x in enumerate(xs)]
                axes[1, c].plot(xs, delta, marker="o", label=f"{model} - {baseline}", color=color)
        axes[0, c].set_title(metric, fontsize=10)
        axes[0, c].set_xlabel(xlabel, fontsize=8)
        axes[0, c].legend(fontsize=7)
        if has_base:
            axes[1, c].axhline(0, color="gray", lw=0.8)
            axes[1, c].set_title(f"{metric}: model - {baseline}", fontsize=10)
            axes[1, c].set_xlabel(xlabel, fontsize=8)
            axes[1, c].legend(fontsize=7)
    return fig
