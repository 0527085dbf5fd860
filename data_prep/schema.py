"""The canonical event schema and its validation.

Canonical events are one row per exposure with the columns

    user_id, item_id     ids (any integer or string type)
    ts                   integer timestamp in milliseconds
    <categorical>        optional context features (ids, e.g. position, device)
    <numeric>            optional numeric context features
    <task>               one label column per task (binary: 0/1, regression: finite float)
    <cohort>             optional user-cohort columns (categorical, e.g. activity level)

Which optional columns exist is described by an :class:`EventSpec`, built from the data config.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import polars as pl

USER, ITEM, TS = "user_id", "item_id", "ts"
TaskKind = Literal["binary", "regression"]
TASK_KINDS: tuple[str, ...] = get_args(TaskKind)
TRANSFORMS = ("none", "log1p")
# Added by the sources at read time, before any sort or dedup: each event's file and 1-based data
# row there (header excluded), so errors name the rows of the input file, not positions after sorting.
FILE_ROW, FILE = "_file_row", "_file"
FLOAT32_MAX = float(np.finfo(np.float32).max)


class SchemaError(ValueError):
    """Raised when events do not follow the canonical schema; the message names column and rows."""


@dataclass(frozen=True)
class TaskSpec:
    """One prediction task: its label column, kind, loss weight, regression target transform and the
    task it happens after.

    ``after`` (``data.tasks.<task>.after=<parent>``) declares a sequential dependency, e.g. a
    conversion that can only follow a click (ESMM, AITM). Both tasks are binary, and the task is then
    trained and scored as the joint event over all exposures: its label is ``parent AND task`` (the
    parent's own dependencies included) and every model's ``p_<task>`` is ``P(parent, task)``, ESMM's
    pCTCVR. It changes no prepared array.
    """

    name: str
    kind: TaskKind = "binary"
    weight: float = 1.0
    transform: str = "none"
    after: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise SchemaError(f"task '{self.name}': kind must be one of {TASK_KINDS}, got '{self.kind}'")
        if self.transform not in TRANSFORMS:
            raise SchemaError(f"task '{self.name}': transform must be one of {TRANSFORMS}, got '{self.transform}'")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise SchemaError(f"data.tasks.{self.name}.weight={w!r}: a task weight must be a finite number >= 0")
        if self.after is not None and not isinstance(self.after, str):
            raise SchemaError(f"data.tasks.{self.name}.after={self.after!r}: must name another task")


def task_ancestors(after: dict[str, str | None]) -> dict[str, list[str]]:
    """Each task's chain of ``after`` parents, nearest first: ``{"buy": "convert", "convert": "click",
    "click": None}`` -> ``{"buy": ["convert", "click"], "convert": ["click"], "click": []}``.

    Raises :class:`SchemaError` naming ``data.tasks.<task>.after`` for a parent that is not a task,
    the task itself, or a cycle.
    """
    out: dict[str, list[str]] = {}
    for task in after:
        chain, node = [], after[task]
        while node is not None:
            if node not in after:
                raise SchemaError(f"data.tasks.{chain[-1] if chain else task}.after={node}: no task '{node}' "
                                  f"(tasks: {list(after)})")
            if node == task or node in chain:
                raise SchemaError(f"data.tasks.{task}.after={after[task]}: the dependencies form a cycle "
                                  f"({' -> '.join([task, *chain, node])})")
            chain.append(node)
            node = after[node]
        out[task] = chain
    return out


@dataclass(frozen=True)
class EventSpec:
    """Which columns of the canonical events are tasks, features and cohorts."""

    tasks: tuple[TaskSpec, ...]
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    cohorts: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        kinds = {t.name: t.kind for t in self.tasks}
        task_ancestors({t.name: t.after for t in self.tasks})
        for t in self.tasks:
            if t.after is not None and (t.kind != "binary" or kinds[t.after] != "binary"):
                bad = t.name if t.kind != "binary" else t.after
                raise SchemaError(f"data.tasks.{t.name}.after={t.after}: both tasks must be binary (the label is "
                                  f"'{t.after}' and '{t.name}'), but '{bad}' is {kinds[bad]}")

    @classmethod
    def from_config(cls, tasks: dict, categorical=(), numeric=(), cohorts=()) -> EventSpec:
        """Build from plain config: ``tasks`` maps name -> {kind, weight, transform, after}."""
        if not tasks:
            raise SchemaError("data.tasks is empty: at least one task label column is needed")
        specs = tuple(TaskSpec(name=str(n), **dict(t or {})) for n, t in tasks.items())
        return cls(specs, tuple(categorical or ()), tuple(numeric or ()), tuple(cohorts or ()))

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def binary_tasks(self) -> list[str]:
        return [t.name for t in self.tasks if t.kind == "binary"]

    @property
    def binary_index(self) -> list[int]:
        """Positions of the binary tasks among all tasks (their columns of ``labels``)."""
        return [i for i, t in enumerate(self.tasks) if t.kind == "binary"]

    @property
    def after(self) -> dict[str, str]:
        """``{task: parent}`` of the tasks declared ``after`` another."""
        return {t.name: t.after for t in self.tasks if t.after is not None}

    def to_dict(self, weights: bool = True) -> dict:
        """Plain data; a task's ``after`` only where it is set. ``weights=False`` leaves out what the
        prepared arrays do not depend on: the loss weights and the task dependencies (``after``)."""
        drop = {"name"} if weights else {"name", "weight", "after"}
        return {
            "tasks": {t.name: {k: v for k, v in asdict(t).items() if k not in drop and (k != "after" or v is not None)}
                      for t in self.tasks},
            "categorical": list(self.categorical),
            "numeric": list(self.numeric),
            "cohorts": list(self.cohorts),
        }


def with_file_rows(frame: pl.DataFrame | pl.LazyFrame, path: str | Path, files: list[str] | None = None
                   ) -> pl.DataFrame | pl.LazyFrame:
    """``frame`` (as read from ``path``, in file order) with :data:`FILE_ROW` (1-based data row) and
    :data:`FILE` (``path`` as an ``Enum`` over ``files``, all the files a source reads) columns."""
    enum = pl.Enum(list(dict.fromkeys([*(files or []), str(path)])))
    return frame.with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.UInt32).alias(FILE_ROW),
                              pl.lit(str(path)).cast(enum).alias(FILE))


def event_columns(df: pl.DataFrame) -> list[str]:
    """The columns of ``df`` that are event data (not the :data:`FILE_ROW` / :data:`FILE` bookkeeping)."""
    return [c for c in df.columns if c not in (FILE_ROW, FILE)]


def _rows(df: pl.DataFrame, mask: pl.Expr, col: str, limit: int = 5) -> str:
    """``"row 3: None, row 9: None"``: the first rows where ``mask`` holds and their ``col`` value.

    Rows are the input file's 1-based data rows when the source recorded them (:func:`with_file_rows`,
    the file named first), else 0-based positions in ``df``.
    """
    if FILE_ROW not in df.columns:
        bad = df.with_row_index("row").filter(mask).select("row", col).head(limit)
        return ", ".join(f"row {r}: {v!r}" for r, v in bad.iter_rows())
    bad = df.filter(mask).select(pl.col(FILE).cast(pl.String), FILE_ROW, col).head(limit)
    files = bad[FILE].unique(maintain_order=True).to_list()
    if len(files) == 1:
        return ", ".join(f"row {r}: {v!r}" for _, r, v in bad.iter_rows()) + f" (1-based data rows of {files[0]})"
    return ", ".join(f"row {r} of {f}: {v!r}" for f, r, v in bad.iter_rows()) + " (1-based data rows)"


MAX_TS_MS = 7_258_118_400_000  # 2200-01-01: a later "ms" timestamp is almost surely in us / ns (see ts_unit)
ID_DTYPES = "integer or string"


def config_key(col: str, spec: EventSpec) -> str:
    """The data config key that asks for column ``col`` (named in errors)."""
    if col in (USER, ITEM, TS):
        return f"data.source.columns.{col}"
    if col in spec.task_names:
        return f"data.tasks.{col}"
    for key in ("categorical", "numeric", "cohorts"):
        if col in getattr(spec, key):
            return f"data.{key}"
    return col


def _is_id_dtype(dtype: pl.DataType) -> bool:
    return dtype.is_integer() or dtype in (pl.String, pl.Categorical, pl.Enum) or isinstance(
        dtype, (pl.Categorical, pl.Enum))


def _check_id_dtypes(df: pl.DataFrame) -> None:
    for col in (USER, ITEM):
        if not _is_id_dtype(df.schema[col]):
            raise SchemaError(f"column '{col}' must hold {ID_DTYPES} ids, got {df.schema[col]} "
                              f"({_rows(df, pl.lit(True), col, 3)}); ids too large for int64/int128 are read as "
                              "floats and lose digits: read them as strings")


def _check_ts_dtype(df: pl.DataFrame) -> None:
    if not df.schema[TS].is_integer():
        raise SchemaError(f"column '{TS}' must be an integer timestamp in ms, got {df.schema[TS]}")


def _check_nulls(df: pl.DataFrame, cols: list[str]) -> None:
    for col in cols:
        if df[col].null_count():
            raise SchemaError(f"column '{col}' has {df[col].null_count()} null(s): {_rows(df, pl.col(col).is_null(), col)}")


def _check_ts_range(df: pl.DataFrame) -> None:
    negative = pl.col(TS) < 0
    if df.select(negative.any()).item():
        raise SchemaError(f"column '{TS}' has negative timestamps: {_rows(df, negative, TS)}; "
                          "timestamps are ms since 1970 (see data.source.ts_unit)")
    future = pl.col(TS) > MAX_TS_MS
    if df.select(future.any()).item():
        raise SchemaError(f"column '{TS}' has timestamps after the year 2200 in ms: {_rows(df, future, TS)}; "
                          "is data.source.ts_unit right (us or ns logs read as ms look like this)?")


def _check_numeric(df: pl.DataFrame, cols: tuple[str, ...] | list[str]) -> None:
    for col in cols:
        dtype = df.schema[col]
        if not dtype.is_numeric():
            raise SchemaError(f"numeric feature column '{col}' must be numeric, got {dtype}: "
                              f"{_rows(df, pl.lit(True), col, 3)}")
        bad = pl.col(col).is_not_null() & ~pl.col(col).cast(pl.Float64).is_finite()
        if df.select(bad.any()).item():
            raise SchemaError(f"numeric feature column '{col}' has NaN or infinite values: {_rows(df, bad, col)}")


def validate(df: pl.DataFrame, spec: EventSpec) -> None:
    """Check ``df`` against the canonical schema; raise :class:`SchemaError` naming column and rows.

    Allowed and handled later (documented in docs/reliability.md): rows in any order (sorted by
    user and time when prepared), nulls in numeric features (0 after standardising) and cohort
    columns ("UNKNOWN"), exact duplicate rows (dropped by :func:`drop_duplicates` before this).
    """
    if df.height == 0:
        raise SchemaError("the event log is empty: no rows to prepare")
    needed = [USER, ITEM, TS, *spec.task_names, *spec.categorical, *spec.numeric, *spec.cohorts]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        keys = ", ".join(f"'{c}' (asked for by {config_key(c, spec)})" for c in missing)
        raise SchemaError(f"missing column(s) {missing}: {keys}; the events have {event_columns(df)}")
    _check_id_dtypes(df)
    _check_ts_dtype(df)
    _check_nulls(df, [USER, ITEM, TS, *spec.task_names, *spec.categorical])
    _check_ts_range(df)
    for t in spec.tasks:
        dtype = df.schema[t.name]
        if not (dtype.is_numeric() or dtype == pl.Boolean):
            raise SchemaError(f"task column '{t.name}' must be numeric, got {dtype}: "
                              f"{_rows(df, pl.lit(True), t.name, 3)}")
        if t.kind == "binary":
            bad = ~pl.col(t.name).cast(pl.Float64).is_in([0.0, 1.0])
            if df.select(bad.any()).item():
                raise SchemaError(f"binary task column '{t.name}' must hold 0/1: {_rows(df, bad, t.name)}")
        else:
            bad = ~pl.col(t.name).cast(pl.Float64).is_finite()
            if df.select(bad.any()).item():
                raise SchemaError(f"regression task column '{t.name}' has non-finite values: {_rows(df, bad, t.name)}")
            big = pl.col(t.name).cast(pl.Float64).abs() > FLOAT32_MAX
            if df.select(big.any()).item():
                raise SchemaError(f"regression task column '{t.name}' has values beyond the float32 range "
                                  f"(|y| > {FLOAT32_MAX:.3g}; labels are stored as float32): {_rows(df, big, t.name)}")
            if t.transform == "log1p" and df.select((pl.col(t.name) < 0).any()).item():
                raise SchemaError(f"task '{t.name}' uses transform log1p but has negative values: "
                                  f"{_rows(df, pl.col(t.name) < 0, t.name)}")
    _check_numeric(df, spec.numeric)


def id_kind(dtype: pl.DataType) -> str:
    """``"integer"`` or ``"string"``: the kind of id a vocabulary holds (as :mod:`data_prep.fingerprint` records it)."""
    return "integer" if dtype.is_integer() else "string"


def validate_candidates(df: pl.DataFrame, categorical: list[str], numeric: list[str],
                        id_kinds: dict[str, str] | None = None, others: list[str] | tuple[str, ...] = ()) -> None:
    """Check candidate events for scoring like :func:`validate` checks events (labels are not needed).

    Columns ``user_id``, ``item_id``, ``ts``, the model's ``categorical`` / ``numeric`` features and
    ``others`` (the personalization-code columns, nulls allowed) must be there, ids and categorical
    values not null, timestamps integer ms in range, numerics finite (nulls allowed). ``id_kinds``
    (``{column: "integer" | "string"}``, the trained vocabularies' kinds) refuses ids of the other
    kind, which would silently all be unknown. Ids the vocabulary lacks are fine: they score as
    unknown (the OOV index).
    """
    if df.height == 0:
        raise SchemaError("the candidates are empty: no rows to score")
    needed = [USER, ITEM, TS, *categorical, *numeric]
    missing = [c for c in dict.fromkeys([*needed, *others]) if c not in df.columns]
    if missing:
        raise SchemaError(f"candidates lack column(s) {missing} (the model was trained with them); "
                          f"they have {event_columns(df)}")
    _check_id_dtypes(df)
    _check_ts_dtype(df)
    _check_nulls(df, [USER, ITEM, TS, *categorical])
    _check_ts_range(df)
    _check_numeric(df, numeric)
    for col, kind in (id_kinds or {}).items():
        if col in df.columns and id_kind(df.schema[col]) != kind:
            raise SchemaError(f"candidate column '{col}' holds {id_kind(df.schema[col])} values "
                              f"({df.schema[col]}: {_rows(df, pl.lit(True), col, 3)}), but the model's "
                              f"'{col}' vocabulary holds {kind} ids: give the ids as they are in the training log")


def drop_duplicates(df: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """``df`` without exact duplicate rows (the first of each kept, order kept) and how many were dropped.

    A row repeated in every column (same user, item, time, labels and features; the file row
    bookkeeping of :func:`with_file_rows` aside) is a logging artefact, not a second exposure:
    kept, it would count twice in training and in the metrics.
    """
    out = df.unique(subset=event_columns(df), maintain_order=True, keep="first")
    return out, df.height - out.height
