"""Test results: ``metrics.json`` and the short per-task summary printed after a run."""

from __future__ import annotations

import json
import math
from pathlib import Path

from data_prep.fit import NEW_USER
from mose.atomic import write_file, write_text
from mose.metrics import COHORTS, SUMMARY, metric_spec, shown_in


def write_metrics(path: str | Path, test: dict[str, float], **info) -> Path:
    """Write ``{"test": {...flat metrics...}, **info}`` atomically to ``path``."""
    return write_text(path, json.dumps({**info, "test": test}, indent=2, sort_keys=False), "test metrics")


PER_USER = "per_user.parquet"  # beside metrics.json: per-user test AUCs (mose-report --ci bootstraps them)


def write_per_user(path: str | Path, per_user: dict) -> Path:
    """Write :attr:`mose.metrics.MultiTaskMetrics.per_user` (``group, task, user_key, auc, n``) as Parquet, atomically."""
    import polars as pl

    schema = {"group": pl.String, "task": pl.String, "user_key": pl.Int64, "auc": pl.Float64, "n": pl.Int64}
    frame = pl.DataFrame({c: per_user.get(c, []) for c in schema}, schema=schema)
    return write_file(path, "per-user test AUCs", frame.write_parquet)


def summary(test: dict[str, float], tasks: list[str]) -> str:
    """A per-task table of the test metrics shown in the summary (:data:`mose.metrics.METRICS`), with
    the new vs regular users columns of the cohort metrics when the run has the ``new_user`` cohort."""
    columns = shown_in(SUMMARY)
    values = list(dict.fromkeys(k.split("/")[1].split("=", 1)[1] for k in test
                                if k.startswith(f"cohort/{NEW_USER}=")))
    by_cohort = [(m, v) for m in shown_in(COHORTS) for v in values]  # new, regular (the manifest's order)
    header = ["task", *columns] + [f"{m} {v}" for m, v in by_cohort]
    rows = []
    for t in tasks:
        row = [t] + [test.get(f"{t}/{c}", math.nan) for c in columns]
        row += [test.get(f"cohort/{NEW_USER}={v}/{t}/{m}", math.nan) for m, v in by_cohort]
        rows.append(row)
    fmt = lambda v: v if isinstance(v, str) else ("-" if math.isnan(v) else f"{v:.4f}")
    table = [header] + [[fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in table]
    means = [f"{m} {fmt(test[f'{m}_mean'])}" for m in columns if metric_spec(m).mean and f"{m}_mean" in test]
    return "\n".join(lines + (["mean test " + ", ".join(means)] if means else []))
