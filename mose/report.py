"""``mose-report DIR``: a markdown table of test metrics (model x task, mean ± std over seeds) from runs.

Every ``metrics.json`` below ``DIR`` is one run (a single run folder or a Hydra multirun folder);
runs are grouped by the model config chosen (``model=...``) and the data set, and with
``--by KEY`` also by a config value (e.g. ``data.source.task_correlation``); ``--plot PNG`` draws
a metric against that value per model. ``--negative-transfer`` compares every multi-task model
with the single-task baseline per task (the seesaw effect). The markdown always has a model x cohort x task
table (``--cohorts`` prints it too). ``--ci A,B`` adds the paired difference A - B of test GAUC per task and
cohort with a 95% bootstrap interval over users (and over seeds when there are several): each run's
``per_user.parquet`` (per-user AUCs, what GAUC averages) is resampled, runs paired by seed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from mose.atomic import write_file, write_text
from data_prep.errors import ConfigError, InputError, cli_errors
from mose.metrics import REPORT, metric_spec, shown_in
from mose.results import PER_USER

N_BOOT = 2000


def _run_order(path: Path) -> tuple:
    """Multirun job folders (``0``, ``1``, ..., ``10``) in job order, not text order."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parent.parts)


def load_runs(root: str | Path) -> list[dict]:
    """One dict per run: ``model`` (config choice), ``data``, ``seed``, ``test`` metrics, ``checkpoint`` (the
    tested one, None if not recorded), ``dir``.

    A ``metrics.json`` (or its run's ``.hydra/hydra.yaml``) that cannot be parsed raises :class:`InputError`
    naming the file.
    """
    if not Path(root).is_dir():
        raise InputError(f"{root}: no such folder (give a run or multirun folder)")
    runs = []
    for path in sorted(Path(root).rglob("metrics.json"), key=_run_order):
        info = _read(path, json.loads)
        if not isinstance(info, dict) or not isinstance(info.get("test"), dict):
            raise InputError(f"{path}: not a mose metrics.json (no 'test' metrics)")
        model = info.get("model_name") or info.get("model", "?")
        hydra_file = path.parent / ".hydra" / "hydra.yaml"
        if hydra_file.exists():
            choices = (_read(hydra_file, yaml.safe_load) or {}).get("hydra", {}).get("runtime", {}).get("choices", {})
            model = choices.get("model", model)
        runs.append({"model": model, "data": info.get("data", "?"), "seed": info.get("seed"),
                     "test": info["test"], "checkpoint": info.get("checkpoint"), "dir": str(path.parent)})
    return runs


def _read(path: Path, parse):
    """``parse(text of path)``; a file that is unreadable or does not parse raises :class:`InputError` naming it."""
    try:
        return parse(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as err:  # JSONDecodeError is a ValueError
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise InputError(f"{path}: not valid {kind} ({str(err).splitlines()[0]}); "
                         "a run killed while writing it? Re-run that run or move the file away") from None


def config_value(run: dict, key: str):
    """The value of a dotted config ``key`` in a run's ``.hydra/config.yaml`` (None if absent)."""
    path = Path(run["dir"]) / ".hydra" / "config.yaml"
    if not path.exists():
        return None
    node = _read(path, yaml.safe_load)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {std:.4f}"


def task_columns(runs: list[dict], metrics: tuple[str, ...]) -> list[str]:
    """Metric keys present in the runs, ``<task>/<metric>`` in first-seen order, then the means."""
    keys: dict[str, None] = {}
    for run in runs:
        for key in run["test"]:
            parts = key.split("/")
            if len(parts) == 2 and parts[1] in metrics:
                keys[key] = None
    return list(keys) + [f"{m}_mean" for m in metrics if any(f"{m}_mean" in r["test"] for r in runs)]


def markdown_table(runs: list[dict], metrics: tuple[str, ...] | None = None, by: str | None = None) -> str:
    """Model x task table; each cell ``mean ± std`` over the group's runs (seeds); ``by`` adds a column
    (and a grouping) for that config key. ``metrics`` default to those the report shows (``METRICS``)."""
    metrics = metrics or shown_in(REPORT)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["data"], *([config_value(run, by)] if by else []), run["model"])].append(run)
    if by:
        groups = dict(sorted(groups.items(), key=lambda kv: (kv[0][0], -_num(kv[0][1]))))
    columns = task_columns(runs, metrics)
    lines = [f"| data | {by + ' | ' if by else ''}model | runs | " + " | ".join(columns) + " |",
             "|---|---|---|" + "---|" * (len(columns) + bool(by))]
    for key, group in groups.items():
        cells = [_mean_std([r["test"].get(c, math.nan) for r in group]) for c in columns]
        lines.append("| " + " | ".join(str(k) for k in key) + f" | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def by_value(runs: list[dict], by: str, metric: str) -> dict[str, dict[float, list[float]]]:
    """``{model: {value of by: [metric of each run]}}``."""
    out: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        out[run["model"]][_num(config_value(run, by))].append(run["test"].get(metric, math.nan))
    return out


def _paired_std(runs: list[dict], base: list[dict], metric: str) -> float:
    """Standard deviation of ``runs`` minus ``base`` on ``metric`` over the seeds both have (nan below 2)."""
    ref = {r.get("seed"): r["test"].get(metric, math.nan) for r in base}
    diffs = [r["test"].get(metric, math.nan) - ref[r.get("seed")] for r in runs if r.get("seed") in ref]
    diffs = [d for d in diffs if not math.isnan(d)]
    if len(diffs) < 2:
        return math.nan
    mean = sum(diffs) / len(diffs)
    return math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))


def negative_transfer_table(runs: list[dict], baseline: str = "single_task",
                            metrics: tuple[str, ...] | None = None) -> str:
    """Every other model minus ``baseline`` per task, on the means over seeds, per data set.

    A cell is ``delta ± std (model mean)``: ``delta`` the difference of the means, ``std`` the standard
    deviation over seeds of the paired (same-seed) differences, shown where two or more seeds pair;
    ▼ marks negative transfer (worse than the single-task model: lower AUC, higher MSE, by each
    metric's ``higher_is_better``). The last column counts the tasks with negative transfer.
    ``metrics`` default to those the report shows.
    """
    metrics = metrics or shown_in(REPORT)
    lower_better = tuple(f"/{m}" for m in shown_in() if not metric_spec(m).higher_is_better)
    lines = []
    for data in dict.fromkeys(r["data"] for r in runs):
        sub = [r for r in runs if r["data"] == data]
        base = [r for r in sub if r["model"] == baseline]
        if not base:
            lines.append(f"\n{data}: no '{baseline}' runs to compare with\n")
            continue
        columns = [c for c in task_columns(sub, metrics) if "/" in c]
        ref = {c: _mean([r["test"].get(c, math.nan) for r in base]) for c in columns}
        lines += [f"\n**{data}** (baseline {baseline}: " + ", ".join(f"{c} {v:.4f}" for c, v in ref.items()) + ")\n",
                  "| model | runs | " + " | ".join(columns) + " | negative transfer |",
                  "|---|---|" + "---|" * (len(columns) + 1)]
        for model in dict.fromkeys(r["model"] for r in sub if r["model"] != baseline):
            group = [r for r in sub if r["model"] == model]
            cells, worse = [], 0
            for c in columns:
                m = _mean([r["test"].get(c, math.nan) for r in group])
                delta = m - ref[c]
                bad = delta > 0 if c.endswith(lower_better) else delta < 0
                worse += bool(bad) and not math.isnan(delta)
                spread = _paired_std(group, base, c)
                cells.append("-" if math.isnan(delta) else
                             f"{delta:+.4f}{'' if math.isnan(spread) else f' ± {spread:.4f}'}{' ▼' if bad else ''} ({m:.4f})")
            lines.append(f"| {model} | {len(group)} | " + " | ".join(cells) + f" | {worse}/{len(columns)} |")
    return "\n".join(lines)


def per_user(run: dict):
    """The run's per-user test AUCs (``group, task, user_key, auc, n``), or None if it has none."""
    import polars as pl

    path = Path(run["dir"]) / PER_USER
    return pl.read_parquet(path) if path.is_file() else None


def paired_bootstrap(diffs: list[np.ndarray], weights: list[np.ndarray], n_boot: int = N_BOOT, seed: int = 0
                     ) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the weighted mean difference (GAUC of A minus GAUC of B over the users both score,
    weights their event counts) averaged over seeds, and its 95% percentile interval from ``n_boot``
    replicates that resample the seeds and, within each, the users (with replacement)."""
    rng = np.random.default_rng(seed)
    point = float(np.mean([np.sum(w * d) / np.sum(w) for d, w in zip(diffs, weights)]))
    reps = np.empty((len(diffs), n_boot))
    for s, (d, w) in enumerate(zip(diffs, weights)):
        counts = rng.multinomial(len(d), np.full(len(d), 1.0 / len(d)), size=n_boot)  # (R, U) resampled users
        reps[s] = (counts * w) @ d / np.maximum((counts * w).sum(1), 1e-12)
    if len(diffs) > 1:
        pick = rng.integers(0, len(diffs), (n_boot, len(diffs)))  # resampled seeds
        boot = reps[pick, np.arange(n_boot)[:, None]].mean(1)
    else:
        boot = reps[0]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return point, float(lo), float(hi)


def ci_table(runs: list[dict], a: str, b: str, n_boot: int = N_BOOT) -> str:
    """Per data set, group (``all``, each cohort value) and binary task: GAUC of ``a`` and ``b`` (mean over the
    paired seeds) and ``a - b`` with its 95% bootstrap interval; ``*`` marks an interval without 0."""
    import polars as pl

    lines = []
    for data in dict.fromkeys(r["data"] for r in runs):
        sub = [r for r in runs if r["data"] == data]
        by_seed = {m: {r["seed"]: r for r in sub if r["model"] == m} for m in (a, b)}
        seeds = sorted(set(by_seed[a]) & set(by_seed[b]), key=str)
        pairs = [(per_user(by_seed[a][s]), per_user(by_seed[b][s])) for s in seeds]
        pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
        if not pairs:
            lines.append(f"\n{data}: no seeds with per_user.parquet for both {a} and {b}\n")
            continue
        over = "users and seeds" if len(pairs) > 1 else "users"
        title = (f"\n**{data}**: {a} - {b}, test GAUC, {len(pairs)} paired seed(s) ({', '.join(str(s) for s in seeds)}), "
                 f"95% bootstrap over {over} ({n_boot} replicates)\n")
        lines += [title,
                  f"| group | task | users | {a} | {b} | {a} - {b} [95% CI] |", "|---|---|---|---|---|---|"]
        joined = [x.join(y, on=["group", "task", "user_key"], suffix="_b") for x, y in pairs]
        keys = list(dict.fromkeys(joined[0].select("group", "task").iter_rows()))
        for group, task in sorted(keys, key=lambda k: (k[0] != "all", k[0])):
            parts = [j.filter((pl.col("group") == group) & (pl.col("task") == task)) for j in joined]
            if any(p.height == 0 for p in parts):
                continue
            w = [p["n"].to_numpy().astype(float) for p in parts]
            ga = np.mean([np.sum(wi * p["auc"].to_numpy()) / wi.sum() for p, wi in zip(parts, w)])
            gb = np.mean([np.sum(wi * p["auc_b"].to_numpy()) / wi.sum() for p, wi in zip(parts, w)])
            mean, lo, hi = paired_bootstrap([(p["auc"] - p["auc_b"]).to_numpy() for p in parts], w, n_boot)
            mark = " *" if lo > 0 or hi < 0 else ""
            lines.append(f"| {group} | {task} | {parts[0].height} | {ga:.4f} | {gb:.4f} | "
                         f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]{mark} |")
    return "\n".join(lines)


def cohort_table(runs: list[dict], metrics: tuple[str, ...]) -> str | None:
    """Model x cohort x task: a row per (data, model, ``<cohort>=<value>``), a column per ``<task>/<metric>``
    of ``metrics`` and GAUC, each cell ``mean ± std`` over the runs; None without per-cohort metrics."""
    metrics = tuple(dict.fromkeys([*metrics, "gauc"]))
    columns: dict[str, None] = {}
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        values = set()
        for key in run["test"]:
            parts = key.split("/")
            if len(parts) == 4 and parts[0] == "cohort" and parts[3] in metrics:
                columns[f"{parts[2]}/{parts[3]}"] = None
                values.add(parts[1])
        for value in sorted(values):
            groups[(run["data"], run["model"], value)].append(run)
    if not columns:
        return None
    lines = ["| data | model | cohort | runs | " + " | ".join(columns) + " |", "|---|---|---|---|" + "---|" * len(columns)]
    for (data, model, value), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        cells = [_mean_std([r["test"].get(f"cohort/{value}/{c}", math.nan) for r in group]) for c in columns]
        lines.append(f"| {data} | {model} | {value} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_text(runs: list[dict], root: str | Path, metrics: tuple[str, ...], by: str | None,
                pngs: list[Path], out: Path) -> str:
    """The markdown report: the model x task table, a GAUC table beside it (when ``metrics`` lack it), the
    model x cohort x task table, and the PNGs embedded (paths relative to ``out``)."""
    text = (f"# Test metrics ({len(runs)} runs from {root})\n\nmean ± std over runs (seeds)\n\n"
            f"{markdown_table(runs, metrics, by)}\n")
    if "gauc" not in metrics and any(k.endswith("/gauc") for r in runs for k in r["test"]):
        text += ("\n## GAUC (AUC within each user, averaged over users)\n\n"
                 f"{markdown_table(runs, ('gauc',), by)}\n")
    if table := cohort_table(runs, metrics):
        text += f"\n## Per cohort (model x cohort x task)\n\n{table}\n"
    if pngs:
        text += "\n## Plots\n\n" + "".join(f"![{p.stem}]({os.path.relpath(p, out.parent)})\n\n" for p in pngs)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mose-report", description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="a run or multirun folder (searched recursively for metrics.json)")
    parser.add_argument("--out", help="markdown file to write (default: DIR/report.md)")
    parser.add_argument("--metrics", default=",".join(shown_in(REPORT)),
                        help=f"comma-separated metrics per task ({','.join(shown_in())})")
    parser.add_argument("--by", help="also group by this config key, e.g. data.source.task_correlation")
    parser.add_argument("--plot", help="PNG: --plot-metric against the --by value, one line per model")
    parser.add_argument("--plot-metric", default="auc_mean", help="comma-separated metrics to plot (one panel each)")
    parser.add_argument("--negative-transfer", action="store_true",
                        help="add every model minus the --baseline model per task")
    parser.add_argument("--baseline", default="single_task", help="baseline model for --negative-transfer / --plot deltas")
    parser.add_argument("--cohorts", action="store_true", help="print the model x cohort x task table too (the markdown always has it)")
    parser.add_argument("--ci", help="A,B: paired A - B test GAUC per task and cohort with 95%% bootstrap intervals "
                                     "over users and seeds (several pairs: A,B;C,D)")
    parser.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap replicates of --ci")
    parser.add_argument("--no-plots", dest="plots", action="store_false",
                        help="skip the PNG plots written beside the markdown (mose/report_plots.py)")
    args = parser.parse_args(argv)
    with cli_errors():  # error: ... and exit 2 (a missing folder, a corrupt metrics.json, a full disk)
        report(args)


def report(args: argparse.Namespace) -> None:
    """Read the runs under ``args.dir``, write the markdown report and plots, print the table."""
    if args.plot and not args.by:
        raise ConfigError("--plot needs --by KEY (the x axis)")
    runs = load_runs(args.dir)
    if not runs:
        raise InputError(f"no metrics.json found under {args.dir}")
    metrics = tuple(args.metrics.split(","))
    out = Path(args.out or Path(args.dir) / "report.md")
    pngs = []
    if args.plots:
        from mose.report_plots import render_plots
        pngs = render_plots(runs, out.parent, metrics)  # metric_<m>.png for each of --metrics
        for png in pngs:
            print(f"plot: {png}")
    table = markdown_table(runs, metrics, args.by)
    text = report_text(runs, args.dir, metrics, args.by, pngs, out)
    if args.negative_transfer:
        nt = negative_transfer_table(runs, args.baseline, metrics)
        text += f"\n## Negative transfer: each model minus {args.baseline} (mean over seeds)\n{nt}\n"
        table += "\n" + nt
    if args.cohorts and (ct := cohort_table(runs, metrics)):
        table += "\n\n" + ct  # the markdown always has it (report_text)
    for pair in (args.ci.split(";") if args.ci else []):
        names = [m.strip() for m in pair.split(",")]
        known = sorted({r["model"] for r in runs})
        if len(names) != 2 or any(m not in known for m in names):
            raise SystemExit(f"error: --ci {pair}: must be two model names of these runs, A,B ({', '.join(known)})")
        ci = ci_table(runs, *names, n_boot=args.n_boot)
        text += f"\n## Paired differences: {names[0]} - {names[1]}\n{ci}\n"
        table += "\n" + ci
    if args.plot:
        from mose.plots import metric_vs
        series = {m: by_value(runs, args.by, m) for m in args.plot_metric.split(",")}
        fig = metric_vs(series, args.by, args.baseline)
        write_file(args.plot, "plot", lambda f: fig.savefig(f, dpi=120, format=Path(args.plot).suffix[1:] or "png"))
        print(f"plot: {args.plot}")
    out = write_text(out, text, "report")
    print(table)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
