"""PNG plots of a run or multirun folder for ``mose-report`` (beside its markdown).

* ``metric_<m>.png``: per-task test metric ``m`` (auc, mse) by model, mean ± std over runs (seeds);
* ``cohort_new_vs_regular.png``: per-task test AUC of new vs regular users, by model (a row per metric);
* ``gates_<model>.png``: expert utilization (mean test gate weight, task x expert) of each gated model.

The metrics are those :data:`mose.metrics.METRICS` shows in the report (``metric_<m>``) and in the
cohort breakdown.

Runs are the dicts of :func:`mose.report.load_runs` (``model``, ``data``, ``test`` metrics).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from data_prep.fit import NEW_USER, SEEN_IN_TRAIN
from mose.atomic import write_file
from mose.metrics import COHORTS, REPORT, metric_spec, shown_in
from mose.plots import gate_heatmap

GATE_KEY = re.compile(r"^gates/([^/]+)/e(\d+)$")


def _label(run: dict, several_data: bool) -> str:
    return f"{run['model']} ({run['data']})" if several_data else str(run["model"])


def group_runs(runs: list[dict]) -> dict[str, list[dict]]:
    """Runs by model label (``model`` or ``model (data)`` when several data sets), in first-seen order."""
    several = len({r["data"] for r in runs}) > 1
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        groups[_label(run, several)].append(run)
    return dict(groups)


def tasks_with(runs: list[dict], metric: str) -> list[str]:
    """Tasks that have ``<task>/<metric>`` in any run's test metrics, in first-seen order."""
    tasks: dict[str, None] = {}
    for run in runs:
        for key in run["test"]:
            parts = key.split("/")
            if len(parts) == 2 and parts[1] == metric:
                tasks[parts[0]] = None
    return list(tasks)


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = np.array([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if not len(v):
        return math.nan, 0.0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _grouped_bars(ax, labels: list[str], series: dict[str, list[tuple[float, float]]], ylabel: str) -> None:
    """Bars ``series[name][i]`` = (mean, std) at x position ``labels[i]``, one colour per series."""
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(labels))
    for k, (name, values) in enumerate(series.items()):
        means, stds = zip(*values) if values else ((), ())
        ax.bar(x + (k - (len(series) - 1) / 2) * width, means, width, yerr=stds, label=name, capsize=2)
    ax.set_xticks(x, labels)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def _from_chance(ax, metric: str, series: dict[str, list[tuple[float, float]]]) -> None:
    """A metric with a chance level (AUC: 0.5) gets a y axis from just below its lowest bar (or chance) to 1."""
    spec = metric_spec(metric)
    if spec is not None and spec.chance is not None:
        lo = np.nanmin([m for v in series.values() for m, _ in v] + [spec.chance])
        ax.set_ylim(max(0.0, lo - 0.05), 1.0)


def metric_by_model(runs: list[dict], metric: str) -> plt.Figure | None:
    """Per-task ``metric`` by model (grouped bars, mean ± std over runs); None if no task has it."""
    tasks = tasks_with(runs, metric)
    if not tasks:
        return None
    groups = group_runs(runs)
    series = {name: [_mean_std([r["test"].get(f"{t}/{metric}", math.nan) for r in group]) for t in tasks]
              for name, group in groups.items()}
    # wide enough for the title and a legend outside the axes (one task, as MSE often has, included)
    fig, ax = plt.subplots(figsize=(max(4.8, 2.6 + 1.2 * len(tasks) * max(1, len(groups) / 3)), 3.6),
                           layout="constrained")
    _grouped_bars(ax, tasks, series, f"test {metric}")
    _from_chance(ax, metric, series)
    ax.set_title(f"test {metric} per task by model\n(mean ± std over runs)", fontsize=9)
    fig.legend(fontsize=7, loc="outside right upper", ncol=max(1, len(groups) // 12))
    return fig


def cohort_breakdown(runs: list[dict], metrics: tuple[str, ...] | None = None,
                     cohort: str = NEW_USER) -> plt.Figure | None:
    """A row of panels per metric (default: those the cohort breakdown shows), a panel per task: the
    metric of each ``cohort`` value (new, regular) by model; None without such cohort metrics."""
    rows = []
    for metric in metrics or shown_in(COHORTS):
        values = sorted({k.split("/")[1].split("=", 1)[1] for r in runs for k in r["test"]
                         if k.startswith(f"cohort/{cohort}=") and k.endswith(f"/{metric}")})
        tasks = [t for t in tasks_with(runs, metric)
                 if any(f"cohort/{cohort}={v}/{t}/{metric}" in r["test"] for r in runs for v in values)]
        if values and tasks:
            rows.append((metric, values, tasks))
    if not rows:
        return None
    groups = group_runs(runs)
    n_cols = max(len(tasks) for _, _, tasks in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(0.8 + 2.8 * n_cols * max(1, len(groups) / 4),
                                                         3.6 * len(rows)), squeeze=False, layout="constrained")
    for ax_row, (metric, values, tasks) in zip(axes, rows):
        for ax, task in zip(ax_row, tasks):
            series = {v: [_mean_std([r["test"].get(f"cohort/{cohort}={v}/{task}/{metric}", math.nan) for r in group])
                          for group in groups.values()] for v in values}
            _grouped_bars(ax, list(groups), series, f"test {metric}")
            ax.set_title(task, fontsize=9)
            ax.tick_params(axis="x", rotation=30, labelsize=7)
            _from_chance(ax, metric, series)
        for ax in ax_row[len(tasks):]:
            ax.axis("off")
        ax_row[0].legend(title=cohort, fontsize=7)
    values = list(dict.fromkeys(v for _, vs, _ in rows for v in vs))
    fig.suptitle(f"test {', '.join(m for m, _, _ in rows)}: {' vs '.join(values)} users", fontsize=9)
    return fig


def gate_usage(runs: list[dict]) -> tuple[list[str], np.ndarray] | None:
    """Mean over runs of the test gate weights ``gates/<task>/e<k>``: ``(tasks, usage (T, E))``."""
    cells: dict[tuple[str, int], list[float]] = defaultdict(list)
    for run in runs:
        for key, value in run["test"].items():
            if m := GATE_KEY.match(key):
                cells[(m.group(1), int(m.group(2)))].append(value)
    if not cells:
        return None
    tasks = list(dict.fromkeys(t for t, _ in cells))
    n_experts = max(e for _, e in cells) + 1
    usage = np.full((len(tasks), n_experts), np.nan)
    for (task, e), values in cells.items():
        usage[tasks.index(task), e] = float(np.mean(values))
    return tasks, usage


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def render_plots(runs: list[dict], out_dir: str | Path, metrics: tuple[str, ...] | None = None) -> list[Path]:
    """Write every plot that the runs have data for into ``out_dir``; returns the PNG paths.

    ``metric_<m>.png`` for each of ``metrics`` (default: those the report shows), the cohort panels
    (``cohort_new_vs_regular.png``, ``cohort_seen_in_train.png``: GAUC of seen vs unseen users) and
    the gate heatmaps."""
    metrics = metrics or shown_in(REPORT)
    out_dir = Path(out_dir)
    figures: dict[str, plt.Figure | None] = {f"metric_{m}": metric_by_model(runs, m) for m in metrics}
    figures["cohort_new_vs_regular"] = cohort_breakdown(runs)
    figures["cohort_seen_in_train"] = cohort_breakdown(runs, ("gauc",), SEEN_IN_TRAIN)  # test users seen / unseen
    for name, group in group_runs(runs).items():
        if usage := gate_usage(group):
            tasks, values = usage
            figures[f"gates_{_safe(name)}"] = gate_heatmap(np.nan_to_num(values), tasks,
                                                           f"{name}: test expert utilization")
    paths = []
    for name, fig in figures.items():
        if fig is None:
            continue
        path = out_dir / f"{name}.png"
        write_file(path, "report plot", lambda f, fig=fig: fig.savefig(f, dpi=110, format="png"))
        plt.close(fig)
        paths.append(path)
    return paths
