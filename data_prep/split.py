"""Time-based train / val / test split by global time cuts."""

from __future__ import annotations

import polars as pl

from data_prep.schema import TS, SchemaError

TRAIN, VAL, TEST = 0, 1, 2
SPLITS = ("train", "val", "test")


def time_cuts(ts: pl.Series, val_frac: float, test_frac: float) -> tuple[int, int]:
    """Cut points ``(val_start, test_start)`` at the global time quantiles ``1-val-test`` and ``1-test``.

    An event at time ``t`` is train if ``t < val_start``, val if ``t < test_start``, else test,
    so the three splits are disjoint in time.
    """
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise SchemaError(f"prep.val_frac={val_frac} and prep.test_frac={test_frac} must be >= 0 and sum below 1")
    val_start = int(ts.quantile(1 - val_frac - test_frac, "lower")) if val_frac + test_frac else int(ts.max()) + 1
    test_start = int(ts.quantile(1 - test_frac, "lower")) if test_frac else int(ts.max()) + 1
    if val_frac and val_start == ts.min():
        raise SchemaError("the time split leaves no training events: too many events share the first timestamp")
    return val_start, max(test_start, val_start)


def split_expr(val_start: int, test_start: int) -> pl.Expr:
    """Int8 split code per event: 0 train, 1 val, 2 test."""
    return (
        pl.when(pl.col(TS) < val_start).then(TRAIN)
        .when(pl.col(TS) < test_start).then(VAL)
        .otherwise(TEST)
        .cast(pl.Int8)
        .alias("split")
    )
