"""Figures for TensorBoard and reports (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def gate_heatmap(usage: np.ndarray, tasks: list[str], title: str = "expert utilization") -> plt.Figure:
    """Heatmap of mean gate weight per task (rows) and expert (columns), values annotated."""
    n_tasks, n_experts = usage.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n_experts, 0.8 + 0.5 * n_tasks))
    im = ax.imshow(usage, vmin=0, vmax=max(float(usage.max()), 1e-6), cmap="viridis", aspect="auto")
    ax.set_xticks(range(n_experts), [f"e{e}" for e in range(n_experts)])
    ax.set_yticks(range(n_tasks), tasks)
    for (r, c), v in np.ndenumerate(usage):
        ax.text(c, r, f"{v:.2f}", ha="center", va="center", color="w" if v < usage.max() / 2 else "k", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    return fig
