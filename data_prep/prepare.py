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
    pcode (N, P) int64         POSO personalization code, past only: prior_bucket, new-user flag
                               (n_prior < new_user_max_prior), then one code per
                               ``personalization`` column; names/sizes in ``manifest["pcode"]``
    cohorts (N, G) int64       cohort value codes, names in ``manifest["cohorts"]``
    hist_item (N, K) int32     last K items strictly before the event (0 = padding), oldest first
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

from data_prep.fingerprint import fingerprint
from data_prep.schema import ITEM, TS, USER, EventSpec, event_columns, validate
from data_prep.sequences import (
    N_PRIOR_BUCKETS,
    HIST_ITEM_DTYPE,
    gather_windows,
    history_ends,
    prior_bucket_expr,
    prior_count_expr,
    sort_events,
    stream_chunks,
)
from data_prep.split import SPLITS, TRAIN, label_ranges, split_expr, time_cuts, warn_degenerate_tasks
from data_prep.vocab import encode, fit_standardizer, fit_vocab

FORMAT_VERSION = 2  # 2: hist_item int32 (1: int64; both load)
NEW_USER = "new_user"


def checksum(events: pl.DataFrame) -> str:
    """Content hash of the events (row hashes, in order; the file row bookkeeping left out)."""
    events = events.select(event_columns(events))
    return hashlib.sha256(events.hash_rows(seed=0).to_numpy().tobytes()).hexdigest()[:16]


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


ACTIVITY = "activity"


def activity_names(bounds: list[int]) -> list[str]:
    """Names of the activity buckets cut at ``bounds`` (prior-event counts): ``["0-19", "20-99", "100+"]``."""
    edges = [0, *bounds]
    return [f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:])] + [f"{edges[-1]}+"]


def _cohort_codes(df: pl.DataFrame, spec: EventSpec, new_user_max_prior: int,
                  activity_buckets: list[int] | None = None) -> tuple[np.ndarray, dict]:
    """Cohort codes ``(N, G)`` and their value names; ``new_user`` derives from the past if not given.

    With ``activity_buckets`` (ascending prior-event counts) an ``activity`` cohort is added last:
    the bucket of the user's count of strictly earlier events (past only, like ``n_prior``).
    """
    bounds = [int(b) for b in activity_buckets or []]
    if bounds and (bounds != sorted(set(bounds)) or bounds[0] <= 0):
        raise ValueError(f"prep.activity_buckets must be ascending positive counts, got {activity_buckets}")
    n_prior = df["n_prior"].to_numpy()
    names, codes = {}, []
    for col in [NEW_USER, *[c for c in spec.cohorts if c != NEW_USER]]:
        if col not in spec.cohorts:  # new_user derived from the past: codes straight from n_prior
            regular = n_prior >= new_user_max_prior
            names[col] = [v for v, seen in (("new", not regular.all()), ("regular", regular.any())) if seen]
            codes.append(regular.astype(np.int64) if len(names[col]) == 2 else np.zeros(len(regular), np.int64))
            continue
        values = df[col].cast(pl.String).fill_null("UNKNOWN")
        names[col] = sorted(values.unique().to_list())
        codes.append(values.replace_strict(names[col], list(range(len(names[col]))), return_dtype=pl.Int64).to_numpy())
    if bounds:  # the bucket index: how many bounds the user's earlier-event count has reached
        names[ACTIVITY] = activity_names(bounds)
        codes.append(np.searchsorted(np.array(bounds), n_prior, side="right").astype(np.int64))
    return np.stack(codes, axis=1), names


def _personalization_codes(df: pl.DataFrame, train: pl.DataFrame, new_user_max_prior: int,
                           columns: list[str]) -> tuple[np.ndarray, dict]:
    """POSO personalization codes ``(N, P)`` from the past only, and ``{names, sizes}``.

    Columns: ``prior_bucket`` (log2 count of earlier events), ``new`` (``n_prior <
    new_user_max_prior``), then each of ``columns``: a numeric column (e.g. days since sign-up) as
    the log2 bucket of ``max(x, 0) + 1``; any other column as its train vocabulary (0 = unseen/null).
    """
    codes = [df["prior_bucket"].to_numpy(), (df["n_prior"] < new_user_max_prior).cast(pl.Int64).to_numpy()]
    names, sizes = ["prior_bucket", "new"], [N_PRIOR_BUCKETS, 2]
    for col in columns:
        if col not in df.columns:
            raise ValueError(f"prep.personalization: column '{col}' is not in the events ({df.columns})")
        if df[col].dtype.is_numeric():
            x = df[col].cast(pl.Float64).fill_null(0.0).clip(0.0)
            code = (x + 1).log(2).floor().clip(0, N_PRIOR_BUCKETS - 1).cast(pl.Int64) + 1
            sizes.append(N_PRIOR_BUCKETS + 1)
        else:
            vocab = sorted(train[col].cast(pl.String).drop_nulls().unique().to_list())
            code = df[col].cast(pl.String).replace_strict(vocab, list(range(1, len(vocab) + 1)), default=0,
                                                          return_dtype=pl.Int64)
            sizes.append(len(vocab) + 1)
        codes.append(code.to_numpy())
        names.append(col)
    return np.stack(codes, axis=1).astype(np.int64), {"names": names, "sizes": sizes}


def build_arrays(events: pl.DataFrame, spec: EventSpec, history_len: int, val_frac: float, test_frac: float,
                 new_user_max_prior: int, stream_len: int, stream_overlap: int, min_count: int = 1,
                 activity_buckets: list[int] | None = None, personalization: list[str] | None = None
                 ) -> tuple[dict[str, np.ndarray], dict]:
    """All arrays of the per-event layout and the manifest fields that describe them.

    ``activity_buckets`` adds the past-only ``activity`` cohort; ``personalization`` names extra
    event columns (activity level, days since sign-up) for the POSO code ``pcode``.
    """
    validate(events, spec)
    df = sort_events(events)
    val_start, test_start = time_cuts(df[TS], val_frac, test_frac)
    df = df.with_columns(split_expr(val_start, test_start), prior_count_expr()).with_columns(prior_bucket_expr())
    train = df.filter(pl.col("split") == TRAIN)
    warn_degenerate_tasks(label_ranges(df, spec), spec)

    vocab_sizes, cats, vocabs = {}, [], {}
    for col in [USER, ITEM, *spec.categorical]:
        vocabs[col] = vocab = fit_vocab(train, col, min_count if col in (USER, ITEM) else 1)
        vocab_sizes[col] = vocab.height + 2
        cats.append(encode(df, vocab, col).to_numpy())
    check_item_vocab(vocab_sizes[ITEM])
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

    cohorts, cohort_names = _cohort_codes(df, spec, new_user_max_prior, activity_buckets)
    pcode, pcode_info = _personalization_codes(df, train, new_user_max_prior, list(personalization or []))
    ends, n_prior = history_ends(df)  # each event's history: rows [ends - n_prior, ends)
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
        "pcode": pcode,
        "hist_item": gather_windows(item.astype(HIST_ITEM_DTYPE), ends, n_prior, history_len),
        "hist_label": gather_windows(binary, ends, n_prior, history_len),
        "prev_label": gather_windows(binary, ends, n_prior, 1)[:, 0],
        "user_offsets": user_offsets.astype(np.int64),
        "stream_rows": stream_rows,
        "stream_scored": stream_scored,
    }
    fields = manifest_fields(
        n_events=df.height, split_counts=np.bincount(arrays["split"], minlength=3),
        cuts=(val_start, test_start), spec=spec, vocab_sizes=vocab_sizes,
        n_user_keys=int(arrays["user_key"].max()) + 1, num_stats=num_stats, task_stats=task_stats,
        min_count=min_count, history_len=history_len, stream_len=stream_len, stream_overlap=stream_overlap,
        new_user_max_prior=new_user_max_prior, cohort_names=cohort_names, pcode_info=pcode_info,
        fingerprint=fingerprint(vocabs, spec))
    return arrays, fields


def manifest_fields(*, n_events: int, split_counts, cuts: tuple, spec: EventSpec, vocab_sizes: dict,
                    n_user_keys: int, num_stats: dict, task_stats: dict, min_count: int, history_len: int,
                    stream_len: int, stream_overlap: int, new_user_max_prior: int, cohort_names: dict,
                    pcode_info: dict, fingerprint: dict) -> dict:
    """The manifest fields that describe a prepared dataset's arrays (in-memory and partitioned paths).

    ``fingerprint``: :func:`data_prep.fingerprint.fingerprint` of the fitted vocabularies and tasks.
    """
    return {
        "layout": "per_event",
        "n_events": int(n_events),
        "splits": {name: int(n) for name, n in zip(SPLITS, split_counts)},
        "cuts": {"val_start": cuts[0], "test_start": cuts[1]},
        "spec": spec.to_dict(),
        "vocab_sizes": vocab_sizes,
        "n_user_keys": int(n_user_keys),
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
        "pcode": pcode_info,
        "fingerprint": fingerprint,
    }


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
        return swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_in(tmp: Path, out_dir: Path) -> Path:
    """Rename the finished ``tmp`` folder to ``out_dir``; the previous dataset is put back on failure."""
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        if old.exists():
            os.rename(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def check_item_vocab(n_items: int) -> None:
    """``hist_item`` stores item codes as ``HIST_ITEM_DTYPE``: refuse a vocabulary that does not fit."""
    if n_items > np.iinfo(HIST_ITEM_DTYPE).max:
        raise ValueError(f"column '{ITEM}': {n_items:,} item codes do not fit hist_item's {np.dtype(HIST_ITEM_DTYPE)}")


def prepare(events: pl.DataFrame, spec: EventSpec, out_dir: str | Path, history_len: int = 20,
            val_frac: float = 0.1, test_frac: float = 0.1, new_user_max_prior: int = 20,
            stream_len: int = 32, stream_overlap: int = 8, min_count: int = 1,
            activity_buckets: list[int] | None = None, personalization: list[str] | None = None,
            config: dict | None = None) -> Path:
    """Validate, split, encode and write ``events`` as a prepared per-event dataset at ``out_dir``."""
    arrays, fields = build_arrays(events, spec, history_len, val_frac, test_frac, new_user_max_prior,
                                  stream_len, stream_overlap, min_count, activity_buckets, personalization)
    manifest = {**fields, "source_checksum": checksum(events), "config": config or {},
                "config_hash": config_hash(config or {})}
    return write_dataset(Path(out_dir), arrays, manifest)


def read_manifest(path: str | Path) -> dict:
    return json.loads((Path(path) / "manifest.json").read_text())
