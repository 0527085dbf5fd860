"""Transform: any frame of events -> the per-event arrays of :data:`data_prep.arrays.ARRAYS`, from a fitted state.

    frame = log_frame(events, cuts)           # sorted by (user, ts, _row), with split and n_prior
    arrays = transform(frame, fitted)         # prep: histories from the frame's own earlier rows
    arrays = transform(candidates, fitted, HistoryLog.from_prepared(root))   # serving

The in-memory prep, every partition of the partitioned prep, ``fit_from`` and ``mose-predict``
call this one function, so they encode alike by construction. Histories are the user's events
strictly before each event's ``ts`` (same-timestamp events never see each other); the past-only
count ``n_prior`` drives ``prior_bucket``, the ``new_user`` / ``activity`` cohorts and the POSO code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import polars as pl

from data_prep.arrays import ARRAYS
from data_prep.fit import ACTIVITY, NEW_USER, SEEN_IN_TRAIN, UNKNOWN, FittedState, vocab_columns
from data_prep.options import PrepOptions
from data_prep.schema import TS, USER
from data_prep.sequences import (
    HIST_ITEM_DTYPE,
    gather_windows,
    log2_bucket,
    prior_bucket_expr,
    prior_rows,
    sort_events,
    stream_chunks,
    run_ids,
)
from data_prep.split import TEST, TRAIN, downsample_new_users, split_expr
from data_prep.vocab import NO_COHORT, OOV, UNSEEN, encode

if TYPE_CHECKING:
    from data_prep.history import HistoryLog
    from data_prep.npy_writer import NpyWriter

# (array name, shape, dtype) -> the array to fill, or a writer appending its rows to the output file (NpyWriter)
Allocator = Callable[[str, tuple, np.dtype], "np.ndarray | NpyWriter"]


def log_frame(events: pl.DataFrame, split: tuple[int, int] | pl.Expr | None, options: PrepOptions | None = None
              ) -> pl.DataFrame:
    """``events`` sorted by ``(user, ts, _row)`` with ``split`` (time ``cuts``, or the expression of
    :func:`data_prep.split.split_assignment`; all test without), ``n_prior`` and ``_end`` (each event's
    history is rows ``[_end - n_prior, _end)``). With ``options`` (a split being fitted), new-user train
    events are downsampled by ``options.new_user_train_fraction`` (:func:`data_prep.split.downsample_new_users`)."""
    df = sort_events(events)
    ends, n_prior = prior_rows(df)
    if not isinstance(split, pl.Expr):
        split = split_expr(*split) if split is not None else pl.lit(TEST, dtype=pl.Int8).alias("split")
    df = df.with_columns(split, pl.Series("n_prior", n_prior), pl.Series("_end", ends))
    if options is None:
        return df
    return downsample_new_users(df, options.new_user_train_fraction, options.new_user_max_prior)


def seen_in_train(events: pl.DataFrame, user_codes: np.ndarray) -> np.ndarray:
    """Bool ``(N,)``: the event's user has train events. In a log frame, a user with a train row or with a
    known id; without a ``split`` column (serving, candidates) and in a ``fit_from`` log (all test), a user
    in the fitted user vocabulary (train count >= ``min_count``)."""
    known = user_codes != OOV
    if "split" not in events.columns or "_end" not in events.columns:
        return known
    return known | events.select((pl.col("split") == TRAIN).any().over(USER)).to_series().to_numpy()


def cohort_codes(events: pl.DataFrame, n_prior: np.ndarray, fitted: FittedState,
                 seen: np.ndarray | None = None) -> np.ndarray:
    """Cohort codes ``(N, G)``: position in the fitted names, ``NO_COHORT`` for a value outside them.

    ``new_user`` (unless the events have it) and ``activity`` come from the past-only count ``n_prior``;
    ``seen_in_train`` from ``seen`` (:func:`seen_in_train`).
    """
    spec, options = fitted.spec, fitted.options
    codes = []
    for col, names in fitted.cohorts.items():
        if col == SEEN_IN_TRAIN:
            codes.append(np.where(seen, names.index("seen"), names.index("unseen")))
            continue
        if col == ACTIVITY and col not in spec.cohorts:
            codes.append(np.searchsorted(np.array(options.activity_buckets), n_prior, side="right"))
            continue
        if col == NEW_USER and col not in spec.cohorts:
            new, regular = (names.index(v) if v in names else NO_COHORT for v in ("new", "regular"))
            codes.append(np.where(n_prior >= options.new_user_max_prior, regular, new))
            continue
        # a cohort column the candidates do not carry (metrics only) reads as null
        values = events[col].cast(pl.String) if col in events.columns else pl.repeat(None, len(n_prior), dtype=pl.String,
                                                                                      eager=True)
        code = values.replace_strict(names, list(range(len(names))), default=NO_COHORT,
                                     return_dtype=pl.Int64).to_numpy()
        if values.null_count():  # nulls are the value UNKNOWN (coded here, not by copying the strings with fill_null)
            code = np.where(values.is_null().to_numpy(), names.index(UNKNOWN) if UNKNOWN in names else NO_COHORT, code)
        codes.append(code)
    return np.stack(codes, axis=1) if codes else np.zeros((len(n_prior), 0), dtype=np.int64)


def personalization_codes(events: pl.DataFrame, n_prior: np.ndarray, prior_bucket: np.ndarray,
                          fitted: FittedState) -> np.ndarray:
    """POSO personalization codes ``(N, P)`` from the past only: ``prior_bucket``, the new-user flag, then each
    personalization column (a numeric one as ``1 + log2_bucket(max(x, 0))``, 0 null; a string one by its
    train vocabulary, ``UNSEEN`` = 0)."""
    codes = [prior_bucket, (n_prior < fitted.options.new_user_max_prior).astype(np.int64)]
    for col, vocab in fitted.pcode.items():
        if vocab is None:
            x = pl.col(col).cast(pl.Float64).fill_null(0.0).clip(0.0)
            codes.append(events.select(log2_bucket(x) + 1).to_series().to_numpy())
        else:
            codes.append(events[col].cast(pl.String).replace_strict(
                vocab, list(range(UNSEEN + 1, len(vocab) + UNSEEN + 1)), default=UNSEEN, return_dtype=pl.Int64)
                .to_numpy())
    return np.stack(codes, axis=1)


def transform(events: pl.DataFrame, fitted: FittedState, log: HistoryLog | None = None,
              alloc: Allocator | None = None) -> dict[str, np.ndarray]:
    """The per-event arrays of ``events`` (every entry of ``ARRAYS`` but ``user_key``), ``(N, ...)`` each.

    Without ``log``, ``events`` is a :func:`log_frame` and each event's history is its own earlier
    rows. With ``log``, ``events`` are in any order (candidates: no ``split`` or label columns needed,
    labels are 0 where absent) and histories are the ``log``'s events strictly before each ``ts``;
    the result then also has ``last`` ``(N,)``, the log row of the latest of them (-1 if none).
    ``alloc(name, shape, dtype)``: where the history arrays (the largest, ``(N, K)`` and ``(N, K, L)``) are
    gathered: an array to fill, or a :class:`data_prep.npy_writer.NpyWriter` of the output file (returned as
    it is, for the caller to close); default fresh memory.
    """
    spec, options = fitted.spec, fitted.options
    n, k = events.height, options.history_len
    if log is None:
        ends, n_prior = events["_end"].to_numpy(), events["n_prior"].to_numpy()
        split = events["split"].to_numpy()
    else:
        n_prior, last = log.lookup(events[USER], events[TS].to_numpy())
        split = np.full(n, TEST, dtype=np.int8)
    codes = [encode(events[c], fitted.vocabs[c][c]) for c in vocab_columns(spec)]
    prior_bucket = pl.DataFrame({"n_prior": n_prior}).select(prior_bucket_expr()).to_series().to_numpy()
    num = events.select([((pl.col(c).cast(pl.Float64) - s["mean"]) / s["std"]).fill_null(0.0)
                         for c, s in fitted.numeric_stats.items()])
    labels = events.select([(pl.col(t) if t in events.columns else pl.repeat(0, pl.len())).cast(pl.Float32)
                            .fill_null(0.0).alias(t) for t in spec.task_names]).to_numpy()
    out = {
        "split": split, "user": codes[0], "item": codes[1], "ts": events[TS].to_numpy(),
        "cat": np.stack(codes[2:], axis=1) if spec.categorical else np.zeros((n, 0)),
        "num": num.to_numpy().reshape(n, len(fitted.numeric_stats)), "labels": labels,
        "n_prior": n_prior, "prior_bucket": prior_bucket, "cohorts": cohort_codes(events, n_prior, fitted, seen_in_train(events, codes[0])),
        "pcode": personalization_codes(events, n_prior, prior_bucket, fitted),
    }
    if log is None:
        binary = labels[:, spec.binary_index].astype(np.int8)
        into = lambda name, v: alloc(name, (n, k, *v.shape[1:]), v.dtype) if alloc else None
        items = codes[1].astype(HIST_ITEM_DTYPE)
        out["hist_item"] = gather_windows(items, ends, n_prior, k, out=into("hist_item", items))
        out["hist_label"] = gather_windows(binary, ends, n_prior, k, out=into("hist_label", binary))
        out["prev_label"] = gather_windows(binary, ends, n_prior, 1)[:, 0]
    else:
        binary = spec.binary_index
        j = np.arange(k)[None, :]
        rows, valid = last[:, None] - k + 1 + j, j >= k - np.minimum(n_prior, k)[:, None]
        out["hist_item"] = log.gather("item", rows, valid)
        out["hist_label"] = log.gather("labels", rows, valid)[..., binary]
        out["prev_label"] = log.gather("labels", last, last >= 0)[..., binary]
        out["last"] = last
    return {name: np.asanyarray(v, dtype=ARRAYS[name].dtype) if name in ARRAYS and not hasattr(v, "write") else v
            for name, v in out.items()}


def user_layout(users: pl.Series) -> tuple[np.ndarray, np.ndarray, pl.Series]:
    """Of a sorted log's user column: ``user_key (N,)`` (dense, in id order), ``user_offsets (U + 1,)`` and the
    user id of each key ``(U,)`` (``users.parquet``)."""
    key = run_ids(users)
    offsets = np.append(np.flatnonzero(np.diff(key, prepend=-1) != 0), len(key)).astype(np.int64)
    return key, offsets, users.gather(offsets[:-1])


def stream_arrays(user_offsets: np.ndarray, fitted: FittedState) -> dict[str, np.ndarray]:
    """The per-stream arrays ``stream_rows``, ``stream_scored`` ``(S, stream_len)`` of users at ``user_offsets``."""
    rows, scored = stream_chunks(user_offsets, fitted.options.stream_len, fitted.options.chunk_overlap)
    return {"stream_rows": rows, "stream_scored": scored}
