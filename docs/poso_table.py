"""Cohort x task x model table (mean ± std over seeds) for the POSO experiments (docs/poso.md).

    python docs/poso_table.py outputs/multirun/poso_synthetic [--metric gauc] [--baseline mmoe --poso poso_all]

Reads every ``metrics.json`` under the folder (runs grouped by their ``model=`` choice, as
``mose-report`` does) and prints a markdown table of ``cohort/<name>=<value>/<task>/<metric>``,
then the check of docs/poso.md: does POSO beat the baseline on new users by more than the seeds'
spread (the larger of the two standard deviations), and stay within it on regular users?
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict

from mose.report import load_runs

ORDER = ["mmoe", "poso", "poso_mlp", "poso_mha", "poso_mmoe", "poso_all"]
NAMES = {"mmoe": "MMoE", "poso": "MMoE+MHA", "poso_mlp": "+MLP-POSO", "poso_mha": "+MHA-POSO",
         "poso_mmoe": "+MMoE-POSO", "poso_all": "+all POSO"}


def stats(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cohorts_of(runs: list[dict]) -> list[str]:
    """``""`` (all events) then every ``cohort/<name>=<value>`` prefix, in first-seen order."""
    seen: dict[str, None] = {"": None}
    for run in runs:
        for key in run["test"]:
            if key.startswith("cohort/"):
                seen["/".join(key.split("/")[:2])] = None
    return list(seen)


def table(runs: list[dict], metric: str) -> tuple[str, dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        groups[run["model"]].append(run)
    models = [m for m in ORDER if m in groups] + sorted(m for m in groups if m not in ORDER)
    tasks = [k.split("/")[0] for k in runs[0]["test"] if k.count("/") == 1 and k.endswith(f"/{metric}")]
    cells: dict[tuple[str, str, str], tuple[float, float]] = {}
    lines = ["| cohort | n events | task | " + " | ".join(f"{NAMES.get(m, m)} ({len(groups[m])})" for m in models) + " |",
             "|---|---|---|" + "---|" * len(models)]
    for cohort in cohorts_of(runs):
        prefix = f"{cohort}/" if cohort else ""
        n = runs[0]["test"].get(f"{prefix}n_events") if cohort else None
        for task in tasks:
            row = []
            for m in models:
                cells[(cohort, task, m)] = mean, std = stats([r["test"].get(f"{prefix}{task}/{metric}", math.nan)
                                                              for r in groups[m]])
                row.append("-" if math.isnan(mean) else f"{mean:.4f} ± {std:.4f}")
            name = cohort.removeprefix("cohort/") or "all"
            lines.append(f"| {name} | {'' if n is None else int(n)} | {task} | " + " | ".join(row) + " |")
    return "\n".join(lines), cells


def verdict(cells: dict, tasks: list[str], baseline: str, poso: str, new: str, regular: str) -> list[str]:
    out = []
    for cohort, want in ((new, "win"), (regular, "hold")):
        for task in tasks:
            (mb, sb), (mp, sp) = cells[(cohort, task, baseline)], cells[(cohort, task, poso)]
            spread, diff = max(sb, sp), mp - mb
            ok = diff > spread if want == "win" else diff >= -spread
            rule = "> +spread" if want == "win" else ">= -spread"
            out.append(f"- {cohort.removeprefix('cohort/')} {task}: {NAMES.get(poso, poso)} - {NAMES.get(baseline, baseline)}"
                       f" = {diff:+.4f} (spread {spread:.4f}; needs {rule}): {'yes' if ok else 'NO'}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir")
    parser.add_argument("--metric", default="gauc")
    parser.add_argument("--baseline", default="mmoe")
    parser.add_argument("--poso", default="poso_all")
    parser.add_argument("--new", default="cohort/new_user=new")
    parser.add_argument("--regular", default="cohort/new_user=regular")
    args = parser.parse_args(argv)
    runs = load_runs(args.dir)
    if not runs:
        raise SystemExit(f"no metrics.json under {args.dir}")
    text, cells = table(runs, args.metric)
    print(text)
    tasks = sorted({t for (_, t, _) in cells}, key=[k for (_, k, _) in cells].index)
    if any(m == args.baseline for (_, _, m) in cells) and any(m == args.poso for (_, _, m) in cells):
        print(f"\n{args.metric.upper()}, {NAMES.get(args.poso, args.poso)} vs {NAMES.get(args.baseline, args.baseline)}:")
        print("\n".join(verdict(cells, tasks, args.baseline, args.poso, args.new, args.regular)))


if __name__ == "__main__":
    main()
