"""Where the histories of events outside a prepared log come from: its rows, plus recent events.

    log = HistoryLog.from_prepared(root)               # memory-mapped, nothing read up front
    log = log.with_recent(recent_events, fitted)       # optional: a history file of later events
    n_prior, last = log.lookup(users, ts)              # (N,), (N,): strictly before each ts

A prepared folder holds every split's events, rows sorted by user then time (``user_offsets``,
``users.parquet``, ``ts.npy``), so a user's events strictly before ``t`` are found by a binary
search in the user's rows: ``log2(events per user)`` vectorised steps over all queries, with no
pass over the log. Values are gathered by batch indexing (:meth:`HistoryLog.gather`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from data_prep.arrays import STEP_FIELDS
from data_prep.dataset import load_arrays
from data_prep.fit import FittedState
from data_prep.schema import ITEM, TS, USER, SchemaError
from data_prep.sequences import sort_events
from data_prep.vocab import PAD, encode


class Stacked:
    """Two arrays as one along axis 0 (a memory-mapped log and a small overlay), for row gathers."""

    def __init__(self, base: np.ndarray | Stacked, extra: np.ndarray) -> None:
        self.base, self.extra = base, extra
        self.shape = (len(base) + len(extra), *extra.shape[1:])
        self.dtype = extra.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        out = np.empty(rows.shape + self.shape[1:], dtype=self.dtype)
        low = rows < len(self.base)
        out[low] = take(self.base, rows[low])
        out[~low] = self.extra[rows[~low] - len(self.base)]
        return out


def take(values: np.ndarray | Stacked, rows: np.ndarray) -> np.ndarray:
    """``values[rows]`` for an array or a :class:`Stacked` pair: ``(M, ...) -> (*rows.shape, ...)``."""
    return values.take(rows) if isinstance(values, Stacked) else np.take(values, rows, axis=0)


class HistoryLog:
    """Logged events, each user's rows ``[_start, _end)`` in time order.

    ``users`` ``(user_id, _start, _end)``; ``ts`` ``(M,)`` int64 ms; ``fields``: per-event arrays
    of the rows (``item``, ``labels`` and the per-stream step fields) ``(M, ...)``.
    """

    def __init__(self, users: pl.DataFrame, ts, fields: dict) -> None:
        self.users, self.ts, self.fields = users, ts, fields

    @classmethod
    def from_prepared(cls, root: str | Path) -> HistoryLog:
        root = Path(root)
        offsets = np.load(root / "user_offsets.npy")
        users = pl.read_parquet(root / "users.parquet").with_columns(
            pl.Series("_start", offsets[:-1]), pl.Series("_end", offsets[1:]))
        names = tuple(dict.fromkeys([*STEP_FIELDS, "item", "labels"]))
        return cls(users, np.load(root / "ts.npy", mmap_mode="r"), load_arrays(root, names))

    def ranges(self, user: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """Each query user's rows ``[start, end)`` ``(N,)`` each (empty for a user the log lacks)."""
        keys = pl.DataFrame({USER: user.cast(self.users.schema[USER], strict=False)})
        found = keys.join(self.users, on=USER, how="left", maintain_order="left")
        return tuple(found[c].fill_null(0).to_numpy(writable=True) for c in ("_start", "_end"))

    def lookup(self, user: pl.Series, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(n_prior, last)`` ``(N,)``: the user's logged events strictly before each ``ts``, and the row of the
        latest of them (-1 if none)."""
        start, hi = self.ranges(user)
        lo, ts = start.copy(), np.asarray(ts, dtype=np.int64)
        active = np.flatnonzero(lo < hi)
        while len(active):  # binary search within each user's rows: first row with ts >= the query's
            mid = (lo[active] + hi[active]) // 2
            before = take(self.ts, mid) < ts[active]
            lo[active] = np.where(before, mid + 1, lo[active])
            hi[active] = np.where(before, hi[active], mid)
            active = active[lo[active] < hi[active]]
        n_prior = lo - start
        return n_prior, np.where(n_prior > 0, lo - 1, -1)

    def gather(self, name: str, rows: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """``fields[name][rows]`` with ``PAD`` where not ``valid``: ``(*rows.shape, ...)``."""
        out = take(self.fields[name], np.where(valid, rows, 0))
        out[~valid] = PAD
        return out

    def with_recent(self, recent: pl.DataFrame, fitted: FittedState) -> HistoryLog:
        """This log with ``recent`` (canonical, validated events) added to their users' histories.

        A recent event equal to a logged one or an earlier recent one (same user, ts, item code and
        binary labels) is dropped. The recent events' own arrays come from the transform against the
        merged log, so they see the logged and the recent events strictly before them; logged rows
        keep their prepared arrays.
        """
        from data_prep.transform import transform

        spec = fitted.spec
        try:
            recent = sort_events(recent.with_columns(pl.col(USER).cast(self.users.schema[USER]))).drop("_row")
        except pl.exceptions.InvalidOperationError:
            raise SchemaError(f"history: column '{USER}' is {recent.schema[USER]}, the prepared log's ids are "
                              f"{self.users.schema[USER]}") from None
        affected = recent[USER].unique(maintain_order=True)
        start, end = self.ranges(affected)
        lengths = end - start
        rows = np.repeat(start - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        labels = recent.select([pl.col(t).cast(pl.Float32) for t in spec.task_names]).to_numpy()
        binary = spec.binary_index

        def part(users, ts, item, flags, src: int) -> pl.DataFrame:
            return pl.DataFrame({USER: users, "_ts": ts, "_item": item, "_src": np.full(len(ts), src, dtype=np.int8),
                                 "_idx": np.arange(len(ts)), **{f"_b{j}": flags[:, j] for j in range(flags.shape[1])}})

        base_labels = take(self.fields["labels"], rows)[:, binary].astype(np.int8)
        merged = pl.concat([
            part(affected.gather(np.repeat(np.arange(len(lengths)), lengths)),
                 take(self.ts, rows), take(self.fields["item"], rows), base_labels, 0),
            part(recent[USER], recent[TS].cast(pl.Int64).to_numpy(), encode(recent[ITEM], fitted.vocabs[ITEM][ITEM]),
                 labels[:, binary].astype(np.int8), 1)])
        key = [USER, "_ts", "_item", *[f"_b{j}" for j in range(len(binary))]]
        merged = merged.filter((pl.col("_src") == 0) | pl.struct(key).is_first_distinct()).sort(
            [USER, "_ts", "_src", "_idx"])
        src, idx = merged["_src"].to_numpy() == 1, merged["_idx"].to_numpy()
        m = len(self.ts)
        spans = merged.with_row_index("_r").group_by(USER, maintain_order=True).agg(
            (pl.col("_r").first() + m).cast(pl.Int64).alias("_start"), (pl.col("_r").last() + m + 1).cast(pl.Int64)
            .alias("_end"))
        users = pl.concat([self.users.join(spans.select(USER), on=USER, how="anti"), spans.cast(self.users.schema)])

        def overlay(base, extra: np.ndarray) -> Stacked:
            out = np.empty((merged.height, *extra.shape[1:]), dtype=extra.dtype)
            out[~src], out[src] = take(base, rows[idx[~src]]), extra
            return Stacked(base, out)

        kept = recent[idx[src]]  # the recent events, in merged order
        ts = overlay(self.ts, merged["_ts"].to_numpy()[src])
        first = HistoryLog(users, ts, {"item": overlay(self.fields["item"], encode(kept[ITEM], fitted.vocabs[ITEM][ITEM])),
                                       "labels": overlay(self.fields["labels"], labels[idx[src]])})
        arrays = transform(kept, fitted, first)
        arrays.setdefault("user_key", np.zeros(kept.height, dtype=np.int64))
        return HistoryLog(users, ts, {f: overlay(v, arrays[f].astype(v.dtype)) for f, v in self.fields.items()})
