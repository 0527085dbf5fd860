"""The train / val / test split (``data.split``): by global time, by user or by file; checks that each split can be used.

    split = SplitOptions.from_config(data.get("split"))        # errors name data.split.<key>
    expr, cuts = split_assignment(split, options, events[TS])  # the Int8 ``split`` column of the log frame

* ``by=time`` (default): global time quantiles (:func:`time_cuts`); a user's later events are val / test.
* ``by=user``: each user hashed with ``seed`` into train / val / test with the fractions
  ``data.prep.val_frac`` / ``test_frac`` (:func:`user_split_expr`); all of a user's events are in
  one part, so val and test users are unseen in train (the cold-start protocol of POSO). The hash
  is of the user id alone, so every prep path (in memory, partitioned by user hash) agrees.
* ``by=file``: ``files: {train, val, test}``, each read with the source (its path key replaced),
  the part recorded per event in :data:`SPLIT_COLUMN`.

Histories and past-only counts always come from the user's own earlier events in the whole log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timezone

import polars as pl

from data_prep.schema import TS, USER, EventSpec, SchemaError

TRAIN, VAL, TEST = 0, 1, 2
SPLITS = ("train", "val", "test")
DROPPED = 3  # a train event left out by data.prep.new_user_train_fraction: in histories, never trained on
N_CODES = 4  # split codes: the three splits and DROPPED
SPLIT_BY = ("time", "user", "file")  # data.split.by; the first is the default
SPLIT_COLUMN = "_split"  # by=file: each event's part (0 train, 1 val, 2 test), set when its file is read
USER_HASH_SEED = 7_919  # added to data.split.seed: the split hash is independent of the partition hash (seed 0)
HASH_BINS = 1 << 30
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitOptions:
    """``data.split``: ``by`` (time | user | file), ``seed`` of the user hash, ``files`` ``{train, val, test}`` paths
    (``by=file``) and ``path_key``, the source key each file replaces (default ``path``)."""

    by: str = "time"
    seed: int = 0
    files: Mapping | None = None
    path_key: str = "path"

    def __post_init__(self) -> None:
        if self.by not in SPLIT_BY:
            raise SchemaError(f"data.split.by={self.by}: must be one of {', '.join(SPLIT_BY)}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise SchemaError(f"data.split.seed={self.seed}: must be an integer >= 0")
        files = dict(self.files or {})
        if self.by == "file":
            missing = [s for s in SPLITS if not files.get(s)]
            if missing:
                raise SchemaError(f"data.split.files.{missing[0]} is required with data.split.by=file "
                                  "(data.split.files={train: PATH, val: PATH, test: PATH})")
            unknown = sorted(set(files) - set(SPLITS))
            if unknown:
                raise SchemaError(f"data.split.files.{unknown[0]}: unknown key (the parts are {', '.join(SPLITS)})")
        elif files:
            raise SchemaError(f"data.split.files is set but data.split.by={self.by}: files split only with by=file")
        object.__setattr__(self, "files", {s: str(files[s]) for s in SPLITS} if self.by == "file" else None)

    @classmethod
    def from_config(cls, split: Mapping | None) -> SplitOptions:
        """From the plain ``data.split`` mapping (missing keys take the defaults; unknown keys are refused)."""
        split = dict(split or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(split) - set(known))
        if unknown:
            raise SchemaError(f"data.split.{unknown[0]}: unknown key (data.split has {', '.join(known)})")
        return cls(**split)

    def to_dict(self) -> dict:
        return {"by": self.by, "seed": self.seed, "files": self.files, "path_key": self.path_key}


def user_split_expr(val_frac: float, test_frac: float, seed: int = 0) -> pl.Expr:
    """Int8 split code per event from its user id alone: ``u = hash(user) / 2^30`` in ``[0, 1)``, train if
    ``u < 1 - val - test``, val if ``u < 1 - test``, else test (a user's events all in one part)."""
    u = (pl.col(USER).hash(seed=USER_HASH_SEED + seed) % HASH_BINS).cast(pl.Float64) / HASH_BINS
    return (pl.when(u < 1 - val_frac - test_frac).then(TRAIN).when(u < 1 - test_frac).then(VAL).otherwise(TEST)
            .cast(pl.Int8).alias("split"))


def split_assignment(split: SplitOptions, val_frac: float, test_frac: float, ts: pl.Series
                     ) -> tuple[pl.Expr, tuple[int, int]]:
    """The expression of the ``split`` column and the recorded cuts (by time: :func:`time_cuts`; otherwise the
    first timestamp twice: no time cut). ``ts``: every event's timestamp (for the time quantiles)."""
    if split.by == "time":
        cuts = time_cuts(ts, val_frac, test_frac)
        return split_expr(*cuts), cuts
    first = int(ts.min())
    if split.by == "user":
        return user_split_expr(val_frac, test_frac, split.seed), (first, first)
    return pl.col(SPLIT_COLUMN).cast(pl.Int8).alias("split"), (first, first)


def downsample_new_users(frame: pl.DataFrame, fraction: float, max_prior: int) -> pl.DataFrame:
    """``data.prep.new_user_train_fraction``: keep a ``fraction`` of the new-user train events (``n_prior <
    max_prior``), chosen by a hash of the user and the event's row; the others get :data:`DROPPED` (they stay
    in later events' histories and counts, as events that happened, but are neither trained on nor fitted).
    ``frame`` is a :func:`data_prep.transform.log_frame` (``_row`` is the event's row in the whole log, so every
    prep path drops the same events)."""
    if fraction >= 1:
        return frame
    u = (pl.struct(USER, "_row").hash(seed=USER_HASH_SEED) % HASH_BINS).cast(pl.Float64) / HASH_BINS
    drop = (pl.col("split") == TRAIN) & (pl.col("n_prior") < max_prior) & (u >= fraction)
    return frame.with_columns(pl.when(drop).then(pl.lit(DROPPED, dtype=pl.Int8)).otherwise(pl.col("split"))
                              .alias("split"))


def check_splits(ranges: pl.DataFrame, spec: EventSpec, split: SplitOptions | None, val_frac: float,
                 test_frac: float) -> list[str]:
    """:func:`check_nonempty` (with ``split``: a fitted split), then :func:`warn_degenerate_tasks`; returns its warnings."""
    if split is not None:
        check_nonempty(ranges, split, val_frac, test_frac)
    return warn_degenerate_tasks(ranges, spec)


def check_nonempty(ranges: pl.DataFrame, split: SplitOptions, val_frac: float, test_frac: float) -> None:
    """Refuse a user or file split that leaves train, or val / test with a fraction > 0, without events
    (``ranges``: :func:`label_ranges` of one or several partitions)."""
    if split.by == "time":
        return  # time_cuts checked its own cuts
    n = dict(ranges.group_by("split").agg(pl.col("n").sum()).iter_rows())
    wanted = {"train": True, "val": split.by == "file" or val_frac > 0, "test": split.by == "file" or test_frac > 0}
    empty = [name for code, name in enumerate(SPLITS) if wanted[name] and not n.get(code)]
    if empty:
        counts = ", ".join(f"{name} {n.get(code, 0):,}" for code, name in enumerate(SPLITS))
        hint = ("check data.split.files" if split.by == "file" else
                "too few users for the fractions: change data.prep.val_frac / test_frac or data.split.seed")
        raise SchemaError(f"the {split.by} split leaves the {' and '.join(empty)} split{'s' if len(empty) > 1 else ''}"
                          f" empty (events: {counts}); {hint}")


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
    merged = ranges.filter(pl.col("split") < len(SPLITS)).group_by("split").agg(
        pl.col("n").sum(), pl.col("^.*:min$").min(), pl.col("^.*:max$").max())
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
