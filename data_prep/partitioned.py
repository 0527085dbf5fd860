"""Out-of-core preparation: the prepared per-event dataset of :mod:`data_prep.prepare`, in bounded memory.

``prepare_partitioned(raw_parquet, spec, out_dir, ...)`` writes the same folder (same arrays, same
dtypes, same row order, same manifest fields) as ``prepare(pl.read_parquet(raw_parquet), spec,
out_dir, ...)``, but never holds more than one partition of the events in memory:

1. **split pass** (one streaming read of the raw Parquet, in row slices): each row gets its global
   row index ``_row`` and the partition ``hash(user) % P``; rows are appended to per-partition
   Parquet files. The timestamps (8 bytes / event) are kept for the global time cuts, and the row
   hashes feed the source checksum (identical to :func:`data_prep.prepare.checksum`).
2. **stats pass** (one partition at a time, each sorted by ``(user, ts, _row)``): per-user event
   counts (global row offsets), train-only vocabularies with their first-seen key ``(user, ts,
   _row)`` and train counts, train moments of numeric features and regression targets, cohort
   value names and personalization vocabularies. Merged, they give exactly the vocabularies of
   the in-memory prep: a value's index is its rank by first appearance in the sorted train rows.
3. **build pass** (one partition at a time): the ``build_arrays`` computations on the partition
   (a user's whole stream lies in one partition, so histories and past-only counts are local),
   with the global cuts/vocabularies/stats, written at each user's global rows into arrays
   preallocated with ``np.lib.format.open_memmap``. Each partition's mappings are closed after
   writing, so written pages leave the process (they stay in the page cache, not in its RSS).
4. the per-stream arrays (``stream_rows``, ``stream_scored``) from the global user offsets,
   in blocks of users; then the manifest, and the temp folder is swapped in atomically like
   :func:`data_prep.prepare.write_dataset`.

Peak memory is about ``rows_per_partition`` events of ``build_arrays`` work plus 8-16 bytes per
event for the timestamps of the cut (pass 1); ``rows_per_partition=2_000_000`` keeps 1e8 events
under 8 GB. Numeric standardisation statistics are merged from per-partition moments (equal to the
in-memory ones up to float rounding); everything else is bit-identical.

    python -m data_prep.partitioned RAW_DIR OUT_DIR --data conf/data/synthetic.yaml
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from data_prep.fingerprint import fingerprint
from data_prep.prepare import (
    FORMAT_VERSION,
    _cohort_codes,
    check_item_vocab,
    _personalization_codes,
    config_hash,
    manifest_fields,
    swap_in,
)
from data_prep.schema import FILE, FILE_ROW, ITEM, TS, USER, EventSpec, SchemaError, validate
from data_prep.sequences import (
    HIST_ITEM_DTYPE,
    N_PRIOR_BUCKETS,
    gather_windows,
    history_ends,
    prior_bucket_expr,
    prior_count_expr,
    stream_chunks,
    user_run_starts,
)
from data_prep.split import TRAIN, label_ranges, split_expr, time_cuts, warn_degenerate_tasks
from data_prep.vocab import encode

KEY = ("_ku", "_kt", "_kr")  # first-seen key of a vocabulary value: (user, ts, _row) of its first train row


def raw_files(raw: str | Path | list) -> list[Path]:
    """The Parquet files of ``raw`` (a file, a folder of ``*.parquet`` read in name order, or a list)."""
    if isinstance(raw, (list, tuple)):
        return [Path(f) for f in raw]
    raw = Path(raw)
    files = sorted(raw.glob("*.parquet")) if raw.is_dir() else [raw]
    if not files:
        raise FileNotFoundError(f"no *.parquet files in {raw}")
    return files


def _sorted_partition(files: list[Path]) -> pl.DataFrame:
    """A partition's rows (already in ``_row`` order), sorted by ``(user, ts, _row)``."""
    df = pl.read_parquet(files)
    if df.schema[USER].is_integer() and df.schema[TS].is_integer():
        return df[np.lexsort((df[TS].to_numpy(), df[USER].to_numpy()))]  # stable: ties keep _row order
    return df.sort([USER, TS, "_row"])


def _moments(x: pl.Series) -> tuple[int, float, float]:
    """``(n, mean, M2)`` of the non-null values (Chan et al.'s parallel variance merges them)."""
    x = x.cast(pl.Float64).drop_nulls()
    n = len(x)
    if n == 0:
        return 0, 0.0, 0.0
    mean = float(x.mean())
    return n, mean, float(((x - mean) ** 2).sum())


def _merge_moments(parts: list[tuple[int, float, float]]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1, like Polars) of the union of parts; ``None`` where undefined."""
    n, mean, m2 = 0, 0.0, 0.0
    for nb, mb, m2b in parts:
        if nb == 0:
            continue
        delta, tot = mb - mean, n + nb
        mean, m2, n = mean + delta * nb / tot, m2 + m2b + delta * delta * n * nb / tot, tot
    if n == 0:
        return None, None
    return mean, (math.sqrt(m2 / (n - 1)) if n > 1 else None)


def _split_pass(files: list[Path], parts_dir: Path, n_partitions: int, slice_rows: int
                ) -> tuple[int, np.ndarray, str]:
    """Stream the raw rows into ``parts_dir/<p>/<slice>.parquet``; return N, all timestamps, checksum."""
    lf = pl.scan_parquet(files)
    n = lf.select(pl.len()).collect().item()
    ts = np.empty(n, dtype=np.int64)
    digest = hashlib.sha256()
    for i, start in enumerate(range(0, n, slice_rows)):
        chunk = lf.slice(start, slice_rows).collect()
        digest.update(chunk.hash_rows(seed=0).to_numpy().tobytes())
        ts[start:start + chunk.height] = chunk[TS].cast(pl.Int64).to_numpy()
        chunk = chunk.with_columns(
            pl.int_range(start, start + chunk.height, dtype=pl.UInt32 if n < 2**32 else pl.UInt64).alias("_row"),
            (pl.col(USER).hash(seed=0) % n_partitions).alias("_part"),
        )
        for (p,), piece in chunk.partition_by("_part", as_dict=True, include_key=False).items():
            (parts_dir / str(p)).mkdir(parents=True, exist_ok=True)
            piece.write_parquet(parts_dir / str(p) / f"{i:06d}.parquet", compression="lz4", statistics=False)
        del chunk
    return n, ts, digest.hexdigest()[:16]


def _with_split(df: pl.DataFrame, val_start: int, test_start: int) -> pl.DataFrame:
    return df.with_columns(split_expr(val_start, test_start), prior_count_expr()).with_columns(prior_bucket_expr())


def _with_file_rows(df: pl.DataFrame, files: list[Path]) -> pl.DataFrame:
    """A partition with its global ``_row`` replaced by each event's raw file and 1-based data row there
    (``FILE`` / ``FILE_ROW``, as the sources record them), for validation errors."""
    starts = np.cumsum([0] + [pl.scan_parquet(f).select(pl.len()).collect().item() for f in files])
    row = df["_row"].to_numpy().astype(np.int64)
    idx = np.searchsorted(starts, row, side="right") - 1
    names = [str(f) for f in files]
    return df.drop("_row").with_columns(pl.Series(FILE_ROW, row - starts[idx] + 1),
                                        pl.Series(FILE, np.array(names)[idx]).cast(pl.Enum(names)))


def _stats_pass(part_files: list[list[Path]], spec: EventSpec, cuts: tuple[int, int],
                personalization: list[str], raw: list[Path]) -> dict:
    """Per-partition train statistics, merged (see the module docstring, step 2)."""
    vocab_cols = [USER, ITEM, *spec.categorical]
    firsts = {c: [] for c in vocab_cols}
    users, num_m, task_m, cohort_frames, pers_values = [], {c: [] for c in spec.numeric}, {}, [], {}
    ranges = []
    regression = [t for t in spec.tasks if t.kind == "regression"]
    for t in regression:
        task_m[t.name] = []
    for files in part_files:
        df = _sorted_partition(files)
        try:
            validate(df.drop("_row"), spec)
        except SchemaError:
            validate(_with_file_rows(df, raw), spec)  # the same error, naming the raw file's rows
            raise
        df = _with_split(df, *cuts)
        ranges.append(label_ranges(df, spec))
        runs = df.select(pl.col(USER).rle()).unnest(USER)  # users in sorted order, consecutive
        users.append(runs.select(pl.col("value").alias(USER), pl.col("len").cast(pl.Int64).alias("count")))
        train = df.filter(pl.col("split") == TRAIN)
        for c in vocab_cols:
            firsts[c].append(train.group_by(c, maintain_order=True).agg(
                pl.len().alias("_n"), pl.col(USER).first().alias(KEY[0]), pl.col(TS).first().alias(KEY[1]),
                pl.col("_row").first().cast(pl.UInt64).alias(KEY[2])))
        for c in spec.numeric:
            num_m[c].append(_moments(train[c]))
        for t in regression:
            y = train[t.name].cast(pl.Float64)
            task_m[t.name].append(_moments(y.log1p() if t.transform == "log1p" else y))
        keep = [c for c in dict.fromkeys([*spec.cohorts, *personalization, "n_prior"]) if c in df.columns]
        cohort_frames.append(df.select(keep).unique())
        for c in personalization:
            if c in df.columns and not df[c].dtype.is_numeric():
                pers_values.setdefault(c, set()).update(train[c].cast(pl.String).drop_nulls().unique().to_list())
        del df, train

    warn_degenerate_tasks(pl.concat(ranges), spec)
    return {
        "users": pl.concat(users).sort(USER),
        "firsts": {c: pl.concat(f) for c, f in firsts.items()},
        "num": {c: _merge_moments(m) for c, m in num_m.items()},
        "tasks": {t: _merge_moments(m) for t, m in task_m.items()},
        "cohort_values": pl.concat(cohort_frames).unique(),
        "pers_values": pers_values,
    }


def _vocab(first: pl.DataFrame, col: str, min_count: int) -> pl.DataFrame:
    """The global train vocabulary of ``col`` (``fit_vocab``'s frame) from per-partition first-seen rows."""
    merged = (first.sort(list(KEY)).group_by(col, maintain_order=True)
              .agg(pl.col("_n").sum(), *[pl.col(k).first() for k in KEY]))
    values = merged.filter(pl.col("_n") >= min_count).sort(list(KEY))
    return values.select(col, pl.int_range(2, values.height + 2, dtype=pl.Int64).alias(f"{col}_idx"),
                         pl.col("_n").cast(pl.Int64).alias(f"{col}_count"))


def _open(tmp: Path, name: str, shape: tuple, dtype) -> np.memmap:
    return np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)


def prepare_partitioned(raw: str | Path | list, spec: EventSpec, out_dir: str | Path, history_len: int = 20,
                        val_frac: float = 0.1, test_frac: float = 0.1, new_user_max_prior: int = 20,
                        stream_len: int = 32, stream_overlap: int = 8, min_count: int = 1,
                        activity_buckets: list[int] | None = None, personalization: list[str] | None = None,
                        config: dict | None = None, rows_per_partition: int = 2_000_000,
                        n_partitions: int | None = None, slice_rows: int = 5_000_000,
                        timings: dict | None = None) -> Path:
    """Prepare the events in the Parquet file(s) ``raw`` at ``out_dir``, one user-hash partition at a time.

    Same arguments and result as :func:`data_prep.prepare.prepare` (the events are not
    deduplicated: run ``drop_duplicates`` upstream if the log may repeat rows). ``n_partitions``
    defaults to ``ceil(N / rows_per_partition)``. ``timings`` (a dict) receives seconds per pass.
    """
    t0 = time.perf_counter()
    timings = timings if timings is not None else {}
    files, out_dir = raw_files(raw), Path(out_dir)
    personalization = list(personalization or [])
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    parts_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.parts-", dir=out_dir.parent))
    try:
        n_rows = pl.scan_parquet(files).select(pl.len()).collect().item()
        n_part = n_partitions or max(1, math.ceil(n_rows / rows_per_partition))
        n, ts, source_checksum = _split_pass(files, parts_dir, n_part, slice_rows)
        val_start, test_start = time_cuts(pl.Series(TS, ts), val_frac, test_frac)
        del ts
        part_files = [sorted(d.glob("*.parquet")) for d in sorted(parts_dir.iterdir(), key=lambda d: int(d.name))]
        timings["split_pass"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        stats = _stats_pass(part_files, spec, (val_start, test_start), personalization, files)
        vocabs = {c: _vocab(f, c, min_count if c in (USER, ITEM) else 1) for c, f in stats["firsts"].items()}
        check_item_vocab(vocabs[ITEM].height + 2)
        num_stats = {c: (float(m or 0.0), float(s) if s and s > 0 else 1.0) for c, (m, s) in stats["num"].items()}
        task_stats = {t: {"mean": float(m), "std": float(s or 1.0) or 1.0} for t, (m, s) in stats["tasks"].items()}
        users = stats["users"].with_columns(pl.int_range(0, pl.len(), dtype=pl.Int64).alias("_key"))
        counts = users["count"].to_numpy()
        user_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        users = users.with_columns(pl.Series("_offset", user_offsets[:-1]))
        _, cohort_names = _cohort_codes(stats["cohort_values"], spec, new_user_max_prior, activity_buckets)
        # _personalization_codes reads string vocabularies from its `train` frame: give it the merged values
        pv = {c: sorted(v) for c, v in stats["pers_values"].items()}
        width = max([len(v) for v in pv.values()] + [1])
        pers_train = pl.DataFrame({c: pl.Series(c, pv.get(c, []) + [None] * (width - len(pv.get(c, []))),
                                                dtype=pl.String) for c in personalization})
        timings["stats_pass"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        n_cat, n_num, n_tasks, n_bin = len(spec.categorical), len(spec.numeric), len(spec.tasks), len(spec.binary_tasks)
        shapes = {
            "split": ((n,), np.int8), "user": ((n,), np.int64), "user_key": ((n,), np.int64),
            "item": ((n,), np.int64), "cat": ((n, n_cat), np.int64), "num": ((n, n_num), np.float32),
            "labels": ((n, n_tasks), np.float32), "n_prior": ((n,), np.int64), "prior_bucket": ((n,), np.int64),
            "cohorts": ((n, len(cohort_names)), np.int64), "pcode": ((n, 2 + len(personalization)), np.int64),
            "hist_item": ((n, history_len), HIST_ITEM_DTYPE), "hist_label": ((n, history_len, n_bin), np.int8),
            "prev_label": ((n, n_bin), np.int8),
        }
        for name, (shape, dtype) in shapes.items():
            _open(tmp, name, shape, dtype)  # preallocated (sparse) file with its .npy header
        split_counts = np.zeros(3, dtype=np.int64)
        pcode_info = None
        for files in part_files:
            df = _with_split(_sorted_partition(files), val_start, test_start)
            arrays, pcode_info = _partition_arrays(df, spec, vocabs, num_stats, cohort_names, pers_train,
                                                   new_user_max_prior, activity_buckets, personalization,
                                                   history_len)
            keys = df.select(pl.col(USER)).join(users.select(USER, "_key", "_offset"), on=USER, how="left",
                                                maintain_order="left")
            arrays["user_key"] = keys["_key"].to_numpy()
            dest = keys["_offset"].to_numpy() + (np.arange(df.height) - user_run_starts(df[USER]))
            split_counts += np.bincount(arrays["split"], minlength=3)
            del df, keys
            contiguous = dest[-1] - dest[0] + 1 == len(dest)  # one partition, or users in one block
            for name, arr in arrays.items():
                mm = np.load(tmp / f"{name}.npy", mmap_mode="r+")
                if contiguous:
                    mm[dest[0]:dest[-1] + 1] = arr
                else:
                    mm[dest] = arr
                del mm  # unmap (no msync: like np.save, the page cache writes back): pages leave this RSS
            del arrays, dest
        timings["build_pass"] = time.perf_counter() - t2

        t3 = time.perf_counter()
        stride = stream_len - stream_overlap
        if not 0 <= stream_overlap < stream_len:
            stream_chunks(user_offsets[:2], stream_len, stream_overlap)  # raises its error
        n_chunks = 1 + np.ceil(np.maximum(counts - stream_len, 0) / stride).astype(np.int64)
        s_total = int(n_chunks.sum())
        rows_mm = _open(tmp, "stream_rows", (s_total, stream_len), np.int64)
        scored_mm = _open(tmp, "stream_scored", (s_total, stream_len), np.bool_)
        block, at = 200_000, 0
        for a in range(0, len(counts), block):
            b = min(a + block, len(counts))
            rows, scored = stream_chunks(user_offsets[a:b + 1], stream_len, stream_overlap)
            rows_mm[at:at + len(rows)], scored_mm[at:at + len(rows)] = rows, scored
            at += len(rows)
        del rows_mm, scored_mm
        np.save(tmp / "user_offsets.npy", user_offsets)
        timings["streams"] = time.perf_counter() - t3

        fields = manifest_fields(
            n_events=n, split_counts=split_counts, cuts=(val_start, test_start), spec=spec,
            vocab_sizes={c: v.height + 2 for c, v in vocabs.items()}, n_user_keys=len(counts), num_stats=num_stats,
            task_stats={t.name: task_stats[t.name] for t in spec.tasks if t.kind == "regression"},
            min_count=min_count, history_len=history_len, stream_len=stream_len, stream_overlap=stream_overlap,
            new_user_max_prior=new_user_max_prior, cohort_names=cohort_names,
            pcode_info=pcode_info or {"names": ["prior_bucket", "new", *personalization],
                                      "sizes": [N_PRIOR_BUCKETS, 2]},
            fingerprint=fingerprint(vocabs, spec))
        meta = {}
        for name in [*shapes, "user_offsets", "stream_rows", "stream_scored"]:
            arr = np.load(tmp / f"{name}.npy", mmap_mode="r")
            meta[name] = {"shape": list(arr.shape), "dtype": str(arr.dtype)}
            del arr
        manifest = {**fields, "source_checksum": source_checksum, "config": config or {},
                    "config_hash": config_hash(config or {}), "format": FORMAT_VERSION, "arrays": meta,
                    "partitions": n_part}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        shutil.rmtree(parts_dir, ignore_errors=True)
        swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(parts_dir, ignore_errors=True)
        raise
    timings["total"] = time.perf_counter() - t0
    return out_dir


def _partition_arrays(df: pl.DataFrame, spec: EventSpec, vocabs: dict, num_stats: dict, cohort_names: dict,
                      pers_train: pl.DataFrame, new_user_max_prior: int, activity_buckets, personalization,
                      history_len: int) -> tuple[dict[str, np.ndarray], dict]:
    """``build_arrays``' per-event arrays of one sorted partition, with global vocabularies and stats."""
    h = df.height
    cats = [encode(df, vocabs[c], c).to_numpy() for c in [USER, ITEM, *spec.categorical]]
    user, item = cats[0].astype(np.int64), cats[1].astype(np.int64)
    cat = np.stack(cats[2:], axis=1).astype(np.int64) if spec.categorical else np.zeros((h, 0), dtype=np.int64)
    num = df.select([((pl.col(c).cast(pl.Float64) - m) / s).fill_null(0.0) for c, (m, s) in num_stats.items()])
    labels = df.select([pl.col(t).cast(pl.Float32) for t in spec.task_names]).to_numpy().astype(np.float32)
    local, local_names = _cohort_codes(df, spec, new_user_max_prior, activity_buckets)
    cohorts = np.empty_like(local, dtype=np.int64)
    for j, (col, names) in enumerate(local_names.items()):
        lookup = np.array([cohort_names[col].index(v) for v in names], dtype=np.int64)
        cohorts[:, j] = lookup[local[:, j]] if len(lookup) else local[:, j]
    pcode, pcode_info = _personalization_codes(df, pers_train, new_user_max_prior, personalization)
    ends, n_prior = history_ends(df)
    binary = df.select(spec.binary_tasks).to_numpy().astype(np.int8).reshape(h, -1)
    arrays = {
        "split": df["split"].to_numpy(),
        "user": user,
        "item": item,
        "cat": cat,
        "num": num.to_numpy().astype(np.float32).reshape(h, len(num_stats)),
        "labels": labels,
        "n_prior": df["n_prior"].to_numpy(),
        "prior_bucket": df["prior_bucket"].to_numpy(),
        "cohorts": cohorts,
        "pcode": pcode,
        "hist_item": gather_windows(item.astype(HIST_ITEM_DTYPE), ends, n_prior, history_len),
        "hist_label": gather_windows(binary, ends, n_prior, history_len),
        "prev_label": gather_windows(binary, ends, n_prior, 1)[:, 0],
    }
    return arrays, pcode_info


def main(argv: list[str] | None = None) -> None:
    import yaml

    from data_prep.build import clean_stale, dataset_lock, event_spec

    parser = argparse.ArgumentParser(description="Prepare a Parquet event log partition by partition.")
    parser.add_argument("raw", help="a Parquet file or a folder of *.parquet (canonical event columns)")
    parser.add_argument("out", help="the prepared dataset folder")
    parser.add_argument("--data", default="conf/data/synthetic.yaml", help="data config (tasks, features, prep)")
    parser.add_argument("--rows-per-partition", type=int, default=2_000_000)
    args = parser.parse_args(argv)
    data = yaml.safe_load(Path(args.data).read_text())
    timings: dict = {}
    with dataset_lock(Path(args.out)):  # as ensure_prepared: one writer at a time, leftovers of killed runs tidied
        clean_stale(Path(args.out))
        prepare_partitioned(args.raw, event_spec(data), args.out, **data.get("prep", {}),
                            rows_per_partition=args.rows_per_partition, timings=timings)
    print(json.dumps(timings))


if __name__ == "__main__":
    main()
