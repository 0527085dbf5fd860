"""Fit: the train split's vocabularies and statistics as one plain-data object, saved beside the dataset.

    stats = fit_stats(frame, spec, options)          # one frame, or one partition of the log
    fitted = finish(FitStats.merge([...]), spec, options, cuts)
    fitted.to_dir(root / "fit");  FittedState.from_dir(root / "fit")

``frame`` is a log sorted by ``(user, ts, _row)`` with its ``split`` and ``n_prior`` columns
(:func:`data_prep.transform.log_frame`). Vocabularies, standardisation moments and
personalization values come from its train rows; cohort value names from all its rows (metrics
report every split). Per-partition :class:`FitStats` merge into the same state as one frame's: a
value's index is its rank by first appearance in the sorted train rows, moments merge exactly up
to float rounding.

On disk (``fit/``, :data:`FIT_VERSION`): ``fit.json`` (spec, options, cuts, numeric and task
stats, cohort names, personalization columns, vocabulary files and sizes, fingerprint) and one
Parquet per vocabulary, ``vocab/<column>.parquet`` (columns ``value``: the raw id, ``index``: its
code, ``count``: its train events) and ``pcode/<column>.parquet`` (``value``, ``index``). No
pickle: any language can map raw ids.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from data_prep.fingerprint import fingerprint
from data_prep.options import PrepOptions
from data_prep.schema import ITEM, USER, EventSpec, SchemaError
from data_prep.sequences import HIST_ITEM_DTYPE, N_PRIOR_BUCKETS
from data_prep.split import TRAIN
from data_prep.vocab import (
    FIRST,
    UNSEEN,
    merge_moments,
    merge_vocab,
    moments,
    standardizer,
    vocab_counts,
)

FIT_VERSION = 1
NEW_USER = "new_user"
ACTIVITY = "activity"
SEEN_IN_TRAIN = "seen_in_train"  # always a cohort: "seen" (the user has train events) | "unseen"
SEEN_NAMES = ["seen", "unseen"]
UNKNOWN = "UNKNOWN"  # the cohort value name of a null


def activity_names(bounds: list[int] | tuple[int, ...]) -> list[str]:
    """Names of the activity buckets cut at ``bounds`` (prior-event counts): ``["0-19", "20-99", "100+"]``."""
    edges = [0, *bounds]
    return [f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(edges)] + [f"{edges[-1]}+"]


def cohort_columns(spec: EventSpec) -> list[str]:
    """The cohort columns before ``activity``: ``new_user`` first (from ``n_prior`` unless the events have it)."""
    return [NEW_USER, *[c for c in spec.cohorts if c != NEW_USER]]


def vocab_columns(spec: EventSpec) -> list[str]:
    """The columns with a vocabulary: user, item, then the categorical features."""
    return [USER, ITEM, *spec.categorical]


@dataclass
class FitStats:
    """Mergeable train statistics of one frame: vocabulary counts, moments, value sets."""

    vocabs: dict[str, list[pl.DataFrame]]            # column -> per-part counts and first-seen keys
    numeric: dict[str, list[tuple[int, float, float]]]
    tasks: dict[str, list[tuple[int, float, float]]]  # regression targets, after their transform
    cohorts: dict[str, set[str]]                      # value names seen (all splits)
    pcode: dict[str, set[str] | None] = field(default_factory=dict)  # None: a numeric column

    @classmethod
    def merge(cls, parts: list[FitStats]) -> FitStats:
        first = parts[0]
        return cls(
            vocabs={c: [f for p in parts for f in p.vocabs[c]] for c in first.vocabs},
            numeric={c: [m for p in parts for m in p.numeric[c]] for c in first.numeric},
            tasks={t: [m for p in parts for m in p.tasks[t]] for t in first.tasks},
            cohorts={c: set().union(*(p.cohorts[c] for p in parts)) for c in first.cohorts},
            pcode={c: None if v is None else set().union(*(p.pcode[c] for p in parts)) for c, v in first.pcode.items()},
        )


def fit_stats(frame: pl.DataFrame, spec: EventSpec, options: PrepOptions) -> FitStats:
    """The :class:`FitStats` of one sorted frame (or partition) with ``split`` and ``n_prior``."""
    if options.activity_buckets and ACTIVITY in spec.cohorts:
        raise SchemaError(f"data.cohorts names a column '{ACTIVITY}', the cohort data.prep.activity_buckets adds: "
                          "rename the column")
    if SEEN_IN_TRAIN in spec.cohorts:
        raise SchemaError(f"data.cohorts names a column '{SEEN_IN_TRAIN}', the cohort every dataset has "
                          "(the user has train events or not): rename the column")
    train = frame.filter(pl.col("split") == TRAIN)
    regular = frame["n_prior"] >= options.new_user_max_prior
    cohorts = {}
    for col in cohort_columns(spec):
        cohorts[col] = set(frame[col].unique().cast(pl.String).fill_null(UNKNOWN).to_list()) \
            if col in spec.cohorts else {v for v, seen in (("new", not regular.all()), ("regular", regular.any())) if seen}
    pcode = {}
    for col in options.personalization:
        if col not in frame.columns:
            raise SchemaError(f"data.prep.personalization: column '{col}' is not in the events ({frame.columns})")
        numeric = frame.schema[col].is_numeric()
        pcode[col] = None if numeric else set(train[col].unique().cast(pl.String).drop_nulls().to_list())
    tasks = {}
    for t in spec.tasks:
        if t.kind == "regression":
            y = train[t.name].cast(pl.Float64)
            tasks[t.name] = [moments(y.log1p() if t.transform == "log1p" else y)]
    return FitStats(
        vocabs={c: [vocab_counts(train, c)] for c in vocab_columns(spec)},
        numeric={c: [moments(train[c])] for c in spec.numeric},
        tasks=tasks, cohorts=cohorts, pcode=pcode,
    )


def _file_name(col: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", col).lstrip(".") or "_"


@dataclass(frozen=True, eq=False)  # no ==: vocabularies are frames (compare with .equals or fingerprint())
class FittedState:
    """Everything the transform needs, fitted on the train split of ``cuts`` (train = ``ts < cuts[0]``).

    ``vocabs``: column -> ``(column, "count")``, its values in index order (index ``FIRST + row``; OOV
    otherwise) and their train counts;
    ``numeric_stats`` / ``task_stats``: ``{mean, std}`` per numeric feature / regression target
    (after its transform); ``cohorts``: value names per cohort column (code = position);
    ``pcode``: personalization column -> its train string values (code 1 + position, 0 unseen),
    or ``None`` for a numeric column (log2 buckets).
    """

    spec: EventSpec
    options: PrepOptions
    cuts: tuple[int, int]
    vocabs: dict[str, pl.DataFrame]
    numeric_stats: dict[str, dict[str, float]]
    task_stats: dict[str, dict[str, float]]
    cohorts: dict[str, list[str]]
    pcode: dict[str, pl.Series | None]

    @property
    def vocab_sizes(self) -> dict[str, int]:
        return {c: v.height + FIRST for c, v in self.vocabs.items()}

    @property
    def pcode_info(self) -> dict:
        """``{names, sizes}`` of the POSO code columns: prior_bucket, the new-user flag, then each personalization column."""
        sizes = [N_PRIOR_BUCKETS + 1 if v is None else len(v) + 1 for v in self.pcode.values()]
        return {"names": ["prior_bucket", "new", *self.pcode], "sizes": [N_PRIOR_BUCKETS, 2, *sizes]}

    def fingerprint(self) -> dict:
        """The dataset fingerprint of these vocabularies and task specs (:func:`data_prep.fingerprint.fingerprint`)."""
        return fingerprint(self.vocabs, self.spec)

    def check_compatible(self, spec: EventSpec, options: PrepOptions) -> None:
        """Refuse to transform events of another spec, or with other transform options, than this fit's."""
        mine, theirs = self.spec.to_dict(weights=False), spec.to_dict(weights=False)
        for key in mine:
            if mine[key] != theirs[key]:
                raise SchemaError(f"fit_from: data.{key} is {theirs[key]}, the fitted dataset's is {mine[key]}")
        for key, value in options.to_dict().items():
            fitted = self.options.to_dict()[key]
            if key not in ("val_frac", "test_frac", "new_user_train_fraction") and value != fitted:
                raise SchemaError(f"fit_from: data.prep.{key}={value}, the fitted dataset used {fitted}")

    def to_dir(self, path: str | Path) -> Path:
        """Write ``fit.json`` and the vocabulary Parquet files into the folder ``path`` (created)."""
        path = Path(path)
        files = {}
        tables = {("vocab", c): (v[c], v["count"], FIRST) for c, v in self.vocabs.items()}
        tables |= {("pcode", c): (v, None, UNSEEN + 1) for c, v in self.pcode.items() if v is not None}
        for (group, col), (values, counts, start) in tables.items():
            (path / group).mkdir(parents=True, exist_ok=True)
            name = f"{group}/{_file_name(col)}.parquet"
            if name in files.values():
                raise SchemaError(f"columns '{col}' and another map to the same file name {name}")
            files[f"{group}:{col}"] = name
            index = pl.int_range(start, len(values) + start, dtype=pl.Int64, eager=True)
            table = pl.DataFrame({"value": values, "index": index})
            (table if counts is None else table.with_columns(counts)).write_parquet(path / name)
        meta = {
            "version": FIT_VERSION, "fingerprint": self.fingerprint(),
            "spec": self.spec.to_dict(), "options": self.options.to_dict(), "cuts": list(self.cuts),
            "vocabs": {c: {"file": files[f"vocab:{c}"], "size": n} for c, n in self.vocab_sizes.items()},
            "numeric_stats": self.numeric_stats, "task_stats": self.task_stats, "cohorts": self.cohorts,
            "pcode": {c: (files[f"pcode:{c}"] if v is not None else "numeric") for c, v in self.pcode.items()},
        }
        (path / "fit.json").write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def from_dir(cls, path: str | Path) -> FittedState:
        """Read a fitted state written by :meth:`to_dir`; an unknown version asks to re-prepare."""
        path = Path(path)
        if not (path / "fit.json").is_file():
            raise SchemaError(f"{path}: no fitted state (fit.json); re-prepare the dataset with mose-prep")
        meta = json.loads((path / "fit.json").read_text())
        if meta.get("version") != FIT_VERSION:
            raise SchemaError(f"{path}: fitted state version {meta.get('version')}, this code reads {FIT_VERSION}; "
                              "re-prepare the dataset with mose-prep")

        def values(col: str, name: str) -> pl.Series:
            return pl.read_parquet(path / name, columns=["value"])["value"].alias(col)

        def vocab(col: str, name: str) -> pl.DataFrame:
            return pl.read_parquet(path / name, columns=["value", "count"]).rename({"value": col})

        s = meta["spec"]
        return cls(
            spec=EventSpec.from_config(s["tasks"], s["categorical"], s["numeric"], s["cohorts"]),
            options=PrepOptions.from_config(meta["options"]), cuts=tuple(meta["cuts"]),
            vocabs={c: vocab(c, v["file"]) for c, v in meta["vocabs"].items()},
            numeric_stats=meta["numeric_stats"], task_stats=meta["task_stats"], cohorts=meta["cohorts"],
            pcode={c: None if f == "numeric" else values(c, f) for c, f in meta["pcode"].items()},
        )


def check_item_vocab(n_items: int) -> None:
    """``hist_item`` stores item codes as ``HIST_ITEM_DTYPE``: refuse a vocabulary that does not fit."""
    if n_items > np.iinfo(HIST_ITEM_DTYPE).max:
        raise SchemaError(f"column '{ITEM}': {n_items:,} item codes do not fit hist_item's {np.dtype(HIST_ITEM_DTYPE)}")


def finish(stats: FitStats, spec: EventSpec, options: PrepOptions, cuts: tuple[int, int]) -> FittedState:
    """The :class:`FittedState` of (merged) statistics; refuses an item vocabulary ``hist_item`` cannot hold."""
    vocabs = {c: merge_vocab(parts, c, options.min_count if c in (USER, ITEM) else 1)
              for c, parts in stats.vocabs.items()}
    check_item_vocab(vocabs[ITEM].height + FIRST)
    cohorts = {}
    for col, values in stats.cohorts.items():
        cohorts[col] = [v for v in ("new", "regular") if v in values] if col == NEW_USER and NEW_USER not in \
            spec.cohorts else sorted(values)
    if options.activity_buckets:
        cohorts[ACTIVITY] = activity_names(options.activity_buckets)
    cohorts[SEEN_IN_TRAIN] = list(SEEN_NAMES)
    return FittedState(
        spec=spec, options=options, cuts=(int(cuts[0]), int(cuts[1])), vocabs=vocabs,
        numeric_stats={c: standardizer(merge_moments(m)) for c, m in stats.numeric.items()},
        task_stats={t: standardizer(merge_moments(m)) for t, m in stats.tasks.items()},
        cohorts=cohorts,
        pcode={c: None if v is None else pl.Series(c, sorted(v), dtype=pl.String) for c, v in stats.pcode.items()},
    )


def fit(frame: pl.DataFrame, spec: EventSpec, options: PrepOptions, cuts: tuple[int, int]) -> FittedState:
    """The fitted state of one sorted frame (the in-memory prep): ``finish(fit_stats(frame))``."""
    return finish(fit_stats(frame, spec, options), spec, options, cuts)
