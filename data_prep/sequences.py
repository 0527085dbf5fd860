"""Leakage-free histories: what a user did strictly before each event.

Events must be sorted by ``(user, ts)``. ``rank("min")`` over the user counts only events with
a strictly smaller timestamp, so events that share a timestamp never see each other (a plain
``shift`` over the user would leak them).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from data_prep.schema import TS, USER
from data_prep.vocab import PAD

N_PRIOR_BUCKETS = 16


def prior_count_expr() -> pl.Expr:
    """Number of the user's events strictly before this one (past only): ``rank("min") - 1``."""
    return (pl.col(TS).rank("min").over(USER) - 1).cast(pl.Int64).alias("n_prior")


def prior_bucket_expr() -> pl.Expr:
    """Log2 bucket of ``n_prior``: 0 for none, 1 for one, 2 for 2-3, ... capped at 15."""
    return (
        (pl.col("n_prior") + 1).log(2).floor().clip(0, N_PRIOR_BUCKETS - 1).cast(pl.Int64).alias("prior_bucket")
    )


def history_positions(df: pl.DataFrame, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of each event's last ``length`` earlier events.

    ``df`` is sorted by ``(user, ts)`` and has ``n_prior``. Returns ``(pos, valid)``, both
    ``(N, length)``: ``pos`` indexes rows of ``df`` (oldest first, most recent last) and ``valid``
    marks real history; invalid slots hold position 0 and are left-padding.
    """
    ends = df.select(USER, "n_prior").with_row_index("_pos").select(
        (pl.col("_pos").cast(pl.Int64).min().over(USER) + pl.col("n_prior")).alias("end")
    )["end"].to_numpy()
    starts = ends - df["n_prior"].to_numpy()
    pos = ends[:, None] - length + np.arange(length)[None, :]
    valid = pos >= starts[:, None]
    return np.where(valid, pos, 0), valid


def gather_history(values: np.ndarray, pos: np.ndarray, valid: np.ndarray, pad=PAD) -> np.ndarray:
    """``values[pos]`` with padding where not ``valid``: ``(N, ...) -> (N, length, ...)``."""
    out = values[pos]
    mask = valid.reshape(valid.shape + (1,) * (out.ndim - valid.ndim))
    return np.where(mask, out, np.asarray(pad, dtype=out.dtype))


def stream_chunks(user_offsets: np.ndarray, length: int, overlap: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cut each user's time-ordered events into chunks of ``length`` steps.

    ``user_offsets`` ``(U + 1,)`` are the start rows of each user's events (rows sorted by user,
    time) and the total count. Chunks start every ``length - overlap`` events; the first
    ``overlap`` steps of every chunk but a user's first are context only (already scored in the
    previous chunk). Returns ``rows (n_chunks, length)`` (-1 = padding) and ``scored`` ``(n_chunks,
    length)``: every event is scored in exactly one chunk.
    """
    if not 0 <= overlap < length:
        raise ValueError(f"prep.stream_overlap={overlap} must be >= 0 and < prep.stream_len={length}")
    stride = length - overlap
    sizes = np.diff(user_offsets)
    n_chunks = 1 + np.ceil(np.maximum(sizes - length, 0) / stride).astype(np.int64)
    owner = np.repeat(np.arange(len(sizes)), n_chunks)
    first_chunk = np.repeat(np.cumsum(n_chunks) - n_chunks, n_chunks)
    k = np.arange(len(owner)) - first_chunk  # chunk number within its user
    start = user_offsets[owner] + k * stride
    rows = start[:, None] + np.arange(length)[None, :]
    valid = rows < user_offsets[owner + 1][:, None]
    scored = valid & ((np.arange(length)[None, :] >= overlap) | (k == 0)[:, None])
    return np.where(valid, rows, -1), scored
