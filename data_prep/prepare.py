"""Canonical events -> prepared per-event dataset: a folder of ``.npy`` arrays and a ``manifest.json``.

Arrays (N events, sorted by user then time; K = history length, L = binary tasks):

    split (N,) int8            0 train, 1 val, 2 test (global time cuts)
    user (N,) int64            user vocabulary index (OOV = 1 for users unseen in train)
    user_key (N,) int64        dense id over all users, for per-user metrics (GAUC)
    item (N,) int64            item vocabulary index
    cat (N, C) int64           categorical context features, each its own vocabulary
    num (N, F) float32         numeric features standardised with train statistics
    labels (N, T) float32      task labels in ``manifest["spec"]["tasks"]`` order
    n_prior (N,) int64         the user's events strictly before this one
    prior_bucket (N,) int64    log2 bucket of n_prior (personalization code)
    cohorts (N, G) int64       cohort value codes, names in ``manifest["cohorts"]``
    hist_item (N, K) int64     last K items strictly before the event (0 = padding), oldest first
    hist_label (N, K, L) int8  the binary labels of those history events
    prev_label (N, L) int8     binary labels of the user's latest event strictly before (0 if none)
    user_offsets (U + 1,)      first row of each user (rows are sorted by user), then N
    stream_rows (S, Ts) int64  per-stream layout: rows of each chunk of a user's stream (-1 = pad)
    stream_scored (S, Ts) bool steps scored in that chunk (each event in exactly one chunk)

The folder is written under a temporary name and renamed when complete, so a crash never
leaves a half dataset behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from data_prep.schema import ITEM, TS, USER, EventSpec, validate
from data_prep.sequences import (
    N_PRIOR_BUCKETS,
    gather_history,
    history_positions,
    prior_bucket_expr,
    prior_count_expr,
    stream_chunks,
)
from data_prep.split import SPLITS, TRAIN, split_expr, time_cuts
from data_prep.vocab import encode, fit_standardizer, fit_vocab

FORMAT_VERSION = 1
NEW_USER = "new_user"


def checksum(events: pl.DataFrame) -> str:
    """Content hash of the events (row hashes, in order)."""
    return hashlib.sha256(events.hash_rows(seed=0).to_numpy().tobytes()).hexdigest()[:16]


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cohort_codes(df: pl.DataFrame, spec: EventSpec, new_user_max_prior: int) -> tuple[np.ndarray, dict]:
    """Cohort codes ``(N, G)`` and their value names; ``new_user`` derives from the past if not given."""
    if NEW_USER not in spec.cohorts:
        df = df.with_columns(
            pl.when(pl.col("n_prior") < new_user_max_prior).then(pl.lit("new")).otherwise(pl.lit("regular"))
            .alias(NEW_USER)
        )
    names, codes = {}, []
    for col in [NEW_USER, *[c for c in spec.cohorts if c != NEW_USER]]:
        values = df[col].cast(pl.String).fill_null("UNKNOWN")
        names[col] = sorted(values.unique().to_list())
        codes.append(values.replace_strict(names[col], list(range(len(names[col]))), return_dtype=pl.Int64))
    return np.stack([c.to_numpy() for c in codes], axis=1), names


def build_arrays(events: pl.DataFrame, spec: EventSpec, history_len: int, val_frac: float, test_frac: float,
                 new_user_max_prior: int, stream_len: int, stream_overlap: int, min_count: int = 1
                 ) -> tuple[dict[str, np.ndarray], dict]:
    """All arrays of the per-event layout and the manifest fields that describe them."""
    validate(events, spec)
    df = events.with_row_index("_row").sort([USER, TS, "_row"])
    val_start, test_start = time_cuts(df[TS], val_frac, test_frac)
    df = df.with_columns(split_expr(val_start, test_start), prior_count_expr()).with_columns(prior_bucket_expr())
    train = df.filter(pl.col("split") == TRAIN)

    vocab_sizes, cats = {}, []
    for col in [USER, ITEM, *spec.categorical]:
        vocab = fit_vocab(train, col, min_count if col in (USER, ITEM) else 1)
        vocab_sizes[col] = vocab.height + 2
        cats.append(encode(df, vocab, col).to_numpy())
    user, item, cat = cats[0], cats[1], np.stack(cats[2:], axis=1) if spec.categorical else np.zeros((df.height, 0))

    num_stats = fit_standardizer(train, list(spec.numeric))
    num = df.select([((pl.col(c).cast(pl.Float64) - m) / s).fill_null(0.0) for c, (m, s) in num_stats.items()])
    labels = df.select([pl.col(t).cast(pl.Float32) for t in spec.task_names]).to_numpy()
    task_stats = {}
    for t in spec.tasks:
        if t.kind == "regression":
            y = train[t.name].cast(pl.Float64)
            y = y.log1p() if t.transform == "log1p" else y
            task_stats[t.name] = {"mean": float(y.mean()), "std": float(y.std() or 1.0) or 1.0}

    cohorts, cohort_names = _cohort_codes(df, spec, new_user_max_prior)
    pos, valid = history_positions(df, history_len)
    binary = df.select(spec.binary_tasks).to_numpy().astype(np.int8).reshape(df.height, -1)
    user_key = (df[USER].rank("dense") - 1).cast(pl.Int64).to_numpy()
    user_offsets = np.searchsorted(user_key, np.arange(user_key.max() + 2))
    stream_rows, stream_scored = stream_chunks(user_offsets, stream_len, stream_overlap)
    arrays = {
        "split": df["split"].to_numpy(),
        "user": user.astype(np.int64),
        "user_key": user_key,
        "item": item.astype(np.int64),
        "cat": cat.astype(np.int64),
        "num": num.to_numpy().astype(np.float32).reshape(df.height, len(num_stats)),
        "labels": labels.astype(np.float32),
        "n_prior": df["n_prior"].to_numpy(),
        "prior_bucket": df["prior_bucket"].to_numpy(),
        "cohorts": cohorts.astype(np.int64),
        "hist_item": gather_history(item.astype(np.int64), pos, valid),
        "hist_label": gather_history(binary, pos, valid),
        "prev_label": gather_history(binary, pos[:, -1], valid[:, -1]),
        "user_offsets": user_offsets.astype(np.int64),
        "stream_rows": stream_rows,
        "stream_scored": stream_scored,
    }
    counts = np.bincount(arrays["split"], minlength=3)
    fields = {
        "layout": "per_event",
        "n_events": int(df.height),
        "splits": {name: int(n) for name, n in zip(SPLITS, counts)},
        "cuts": {"val_start": val_start, "test_start": test_start},
        "spec": spec.to_dict(),
        "vocab_sizes": vocab_sizes,
        "n_user_keys": int(arrays["user_key"].max()) + 1,
        "numeric_stats": {c: {"mean": m, "std": s} for c, (m, s) in num_stats.items()},
        "task_stats": task_stats,
        "min_count": min_count,
        "history_len": history_len,
        "stream_len": stream_len,
        "stream_overlap": stream_overlap,
        "history_labels": spec.binary_tasks,
        "prior_buckets": N_PRIOR_BUCKETS,
        "new_user_max_prior": new_user_max_prior,
        "cohorts": cohort_names,
    }
    return arrays, fields


def write_dataset(out_dir: Path, arrays: dict[str, np.ndarray], manifest: dict) -> Path:
    """Write arrays and manifest to a temp folder beside ``out_dir``, then swap it in."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        manifest = {**manifest, "format": FORMAT_VERSION,
                    "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()}}
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        if old.exists():
            os.rename(old, out_dir)  # put the previous dataset back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def prepare(events: pl.DataFrame, spec: EventSpec, out_dir: str | Path, history_len: int = 20,
            val_frac: float = 0.1, test_frac: float = 0.1, new_user_max_prior: int = 20,
            stream_len: int = 32, stream_overlap: int = 8, min_count: int = 1, config: dict | None = None) -> Path:
    """Validate, split, encode and write ``events`` as a prepared per-event dataset at ``out_dir``."""
    arrays, fields = build_arrays(events, spec, history_len, val_frac, test_frac, new_user_max_prior,
                                  stream_len, stream_overlap, min_count)
    manifest = {**fields, "source_checksum": checksum(events), "config": config or {},
                "config_hash": config_hash(config or {})}
    return write_dataset(Path(out_dir), arrays, manifest)


def read_manifest(path: str | Path) -> dict:
    return json.loads((Path(path) / "manifest.json").read_text())
