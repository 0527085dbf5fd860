"""Time-based train / val / test split by global time cuts; checks that each split can be used."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import polars as pl

from data_prep.schema import TS, EventSpec, SchemaError

TRAIN, VAL, TEST = 0, 1, 2
SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)


def _when(ts_ms: int) -> str:
    return f"{ts_ms} ({datetime.fromtimestamp(ts_ms / 1000, timezone.utc):%Y-%m-%d %H:%M:%S} UTC)"


def time_cuts(ts: pl.Series, val_frac: float, test_frac: float) -> tuple[int, int]:
    """Cut points ``(val_start, test_start)`` at the global time quantiles ``1-val-test`` and ``1-test``.

    An event at time ``t`` is train if ``t < val_start``, val if ``t < test_start``, else test,
    so the three splits are disjoint in time. The fractions are checked by ``PrepOptions``.
    """
    val_start = int(ts.quantile(1 - val_frac - test_frac, "lower")) if val_frac + test_frac else int(ts.max()) + 1
    test_start = int(ts.quantile(1 - test_frac, "lower")) if test_frac else int(ts.max()) + 1
    if val_frac and val_start == ts.min():
        raise SchemaError("the time split leaves no training events: too many events share the first timestamp")
    test_start = max(test_start, val_start)
    check_split_sizes(ts, val_start, test_start, val_frac, test_frac)
    return val_start, test_start


def check_split_sizes(ts: pl.Series, val_start: int, test_start: int, val_frac: float, test_frac: float) -> None:
    """Refuse cuts that leave the val or test split empty although its fraction is > 0, naming cuts and counts.

    (Ties at the end of time do this: when more than ``test_frac`` of the events share the last
    timestamps, both quantile cuts land on the same time and no event falls between them.)
    """
    counts = pl.DataFrame({TS: ts}).select(
        (pl.col(TS) < val_start).sum().alias("train"),
        ((pl.col(TS) >= val_start) & (pl.col(TS) < test_start)).sum().alias("val"),
        (pl.col(TS) >= test_start).sum().alias("test")).row(0, named=True)
    empty = [name for name, frac in (("val", val_frac), ("test", test_frac)) if frac and counts[name] == 0]
    if empty:
        last = int(ts.max())
        raise SchemaError(
            f"the time split leaves the {' and '.join(empty)} split{'s' if len(empty) > 1 else ''} empty: cuts "
            f"val_start={_when(val_start)}, test_start={_when(test_start)} give train {counts['train']:,}, val "
            f"{counts['val']:,}, test {counts['test']:,} events ({int((ts == last).sum()):,} share the last "
            f"timestamp {_when(last)}); change data.prep.val_frac / data.prep.test_frac, or check the timestamps "
            "(data.source.ts_unit)")


def label_ranges(df: pl.DataFrame, spec: EventSpec) -> pl.DataFrame:
    """Per split (``df`` has a ``split`` column): the event count ``n`` and each task's ``<task>:min`` / ``:max``.

    Frames of several partitions concatenate and :func:`warn_degenerate_tasks` merges them.
    """
    return df.group_by("split").agg(
        pl.len().alias("n"),
        *[pl.col(t).cast(pl.Float64).min().alias(f"{t}:min") for t in spec.task_names],
        *[pl.col(t).cast(pl.Float64).max().alias(f"{t}:max") for t in spec.task_names])


def warn_degenerate_tasks(ranges: pl.DataFrame, spec: EventSpec) -> list[str]:
    """Log a warning for each task with one class (binary) or one value (regression) in a split; returns them.

    One class in train: the task cannot be learned. A binary task without positives (or
    negatives) in val / test: its AUC and GAUC there are undefined (NaN, left out of ``auc_mean``).
    """
    merged = ranges.group_by("split").agg(pl.col("n").sum(), pl.col("^.*:min$").min(), pl.col("^.*:max$").max())
    warnings = []
    for row in merged.sort("split").iter_rows(named=True):  # at most 3 splits
        split, n = SPLITS[row["split"]], row["n"]
        for t in spec.tasks:
            lo, hi = row[f"{t.name}:min"], row[f"{t.name}:max"]
            if lo != hi:
                continue
            if split == "train":
                what = "one class" if t.kind == "binary" else "one value"
                msg = (f"task '{t.name}' has {what} in the train split (every label is {lo:g}, {n:,} events): "
                       "the model cannot learn it; check the label column")
            elif t.kind == "binary":
                msg = (f"task '{t.name}' has no {'positive' if lo == 0 else 'negative'} labels in the {split} split "
                       f"({n:,} events): its {split} AUC and GAUC are undefined (reported as nan and left out of "
                       f"{split}/auc_mean)")
            else:
                continue
            log.warning(msg)
            warnings.append(msg)
    return warnings


def split_expr(val_start: int, test_start: int) -> pl.Expr:
    """Int8 split code per event: 0 train, 1 val, 2 test."""
    return (
        pl.when(pl.col(TS) < val_start).then(TRAIN)
        .when(pl.col(TS) < test_start).then(VAL)
        .otherwise(TEST)
        .cast(pl.Int8)
        .alias("split")
    )
