"""Out-of-core preparation: the prepared dataset of :mod:`data_prep.prepare`, in bounded memory.

``prepare_partitioned(raw_parquet, spec, out_dir, options)`` writes the same folder (same arrays,
same dtypes, same row order, same fitted state and manifest fields) as
``prepare(pl.read_parquet(raw_parquet), spec, out_dir, options)``, but never holds more than one
partition of the events in memory:

1. **split pass** (one streaming read of the raw Parquet, in row slices): each row gets its global
   row index ``_row`` and the partition ``hash(user) % P``; rows are appended to per-partition
   Parquet files. The timestamps (8 bytes / event) are kept for the global time cuts, and the row
   hashes feed the source checksum (identical to :func:`data_prep.dataset.checksum`).
2. **fit pass** (one partition at a time, each a :func:`data_prep.transform.log_frame`): per-user
   event counts (global row offsets) and the partition's :class:`data_prep.fit.FitStats`, merged
   into the :class:`data_prep.fit.FittedState` the in-memory prep fits (a value's index is its rank
   by first appearance in the sorted train rows; moments merge up to float rounding).
3. **transform pass** (one partition at a time): :func:`data_prep.transform.transform` of the
   partition with the global fit (a user's whole stream lies in one partition, so histories and
   past-only counts are local), written at each user's global rows into arrays preallocated with
   ``np.lib.format.open_memmap``. Each partition's mappings are closed after writing, so written
   pages leave the process (they stay in the page cache, not in its RSS).
4. the per-stream arrays from the global user offsets, in blocks of users; then the fitted state,
   ``users.parquet`` and the manifest, and the temp folder is swapped in atomically
   (:func:`data_prep.dataset.finish_dataset`).

Peak memory is about ``rows_per_partition`` events of transform work plus 8-16 bytes per event for
the timestamps of the cut (pass 1); ``rows_per_partition=2_000_000`` keeps 1e8 events under 8 GB.

    python -m data_prep.partitioned RAW_DIR OUT_DIR --data conf/data/synthetic.yaml [--engine processes]

Every pass is a list of tasks (one per row slice, one per partition) that :class:`Engine` runs here,
in a process pool or as Ray tasks (``data.prep.engine``): fit = the merge of per-partition
statistics, transform = per-partition tasks, all writing into the same preallocated arrays; the
driver keeps the timestamps for the split assignment (computed once, shipped to every task as a Polars
expression), the per-user counts and the stream pass.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl

from data_prep.arrays import row_shapes
from data_prep.dataset import config_hash, finish_dataset, load_fitted, manifest_fields, new_temp, open_output
from data_prep.fit import FitStats, FittedState, finish, fit_stats
from data_prep.options import PrepOptions
from data_prep.schema import FILE, FILE_ROW, TS, USER, EventSpec, SchemaError, validate
from data_prep.sequences import user_runs
from data_prep.split import N_CODES, SplitOptions, check_splits, label_ranges, split_assignment
from data_prep.transform import log_frame, stream_arrays, transform
from data_prep.vocab import unknown_shares


def raw_files(raw: str | Path | list) -> list[Path]:
    """The Parquet files of ``raw`` (a file, a folder of ``*.parquet`` read in name order, or a list)."""
    if isinstance(raw, (list, tuple)):
        return [Path(f) for f in raw]
    raw = Path(raw)
    files = sorted(raw.glob("*.parquet")) if raw.is_dir() else [raw]
    if not files:
        raise FileNotFoundError(f"no *.parquet files in {raw}")
    return files


def _scan(source) -> pl.LazyFrame:
    """The raw events of ``source`` (a list of Parquet files, or a callable returning a LazyFrame), lazily."""
    return pl.scan_parquet(source) if isinstance(source, list) else source()


def _ray():
    try:
        import ray
    except ImportError:
        raise SchemaError("data.prep.engine=ray needs Ray: pip install 'mose[ray]'") from None
    return ray


class Engine:
    """Runs the tasks of a pass (a module-level function and its argument tuples), results in task order:
    here (``local``), in a ``ProcessPoolExecutor`` of ``options.workers`` (``processes``), or as Ray tasks
    (``ray``: in the running Ray instance, or ``ray.init(address=options.ray_address)``, shut down again by
    :meth:`close`). Task arguments and results travel pickled; the partition files and arrays are paths every
    worker reads and writes (a shared folder on a cluster)."""

    def __init__(self, options: PrepOptions):
        self.name, self._pool, self._started = options.engine, None, False
        if self.name == "processes":  # spawn: forking a process that holds Polars' thread pool can deadlock
            self._pool = ProcessPoolExecutor(options.workers or os.cpu_count() or 1,
                                             mp_context=multiprocessing.get_context("spawn"))
        elif self.name == "ray":
            ray = _ray()
            if not ray.is_initialized():
                ray.init(address=options.ray_address, include_dashboard=False, log_to_driver=False)
                self._started = True

    def map(self, fn, args: list[tuple]) -> list:
        if self.name == "processes":
            futures = [self._pool.submit(fn, *a) for a in args]
            return [f.result() for f in futures]
        if self.name == "ray":
            ray = _ray()
            task = ray.remote(fn)
            return ray.get([task.remote(*a) for a in args])
        return [fn(*a) for a in args]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        if self._started:
            _ray().shutdown()


def _split_slice(source, i: int, start: int, rows: int, n: int, parts_dir: Path, n_partitions: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``[start, start + rows)`` of the log into ``parts_dir/<p>/<i>.parquet``; their timestamps and row hashes."""
    chunk = _scan(source).slice(start, rows).collect()
    hashes = chunk.hash_rows(seed=0).to_numpy()
    ts = chunk[TS].cast(pl.Int64).to_numpy()
    chunk = chunk.with_columns(
        pl.int_range(start, start + chunk.height, dtype=pl.UInt32 if n < 2**32 else pl.UInt64).alias("_row"),
        (pl.col(USER).hash(seed=0) % n_partitions).alias("_part"),
    )
    for (p,), piece in chunk.partition_by("_part", as_dict=True, include_key=False).items():
        (parts_dir / str(p)).mkdir(parents=True, exist_ok=True)
        piece.write_parquet(parts_dir / str(p) / f"{i:06d}.parquet", compression="lz4", statistics=False)
    return ts, hashes


def _split_pass(source, parts_dir: Path, n_partitions: int, slice_rows: int, n: int, run: Engine
                ) -> tuple[np.ndarray, str]:
    """Stream the raw rows into ``parts_dir/<p>/<slice>.parquet`` (one task per slice); return all timestamps and
    the source checksum (the slices' row hashes in row order)."""
    starts = list(range(0, n, slice_rows))
    ts = np.empty(n, dtype=np.int64)
    digest = hashlib.sha256()
    for i, (t, h) in enumerate(run.map(_split_slice, [(source, i, a, slice_rows, n, parts_dir, n_partitions)
                                                      for i, a in enumerate(starts)])):
        ts[starts[i]:starts[i] + len(t)] = t
        digest.update(h.tobytes())
    return ts, digest.hexdigest()[:16]


def _with_file_rows(df: pl.DataFrame, files: list[Path]) -> pl.DataFrame:
    """A partition with its global ``_row`` replaced by each event's raw file and 1-based data row there
    (``FILE`` / ``FILE_ROW``, as the sources record them), for validation errors."""
    starts = np.cumsum([0] + [pl.scan_parquet(f).select(pl.len()).collect().item() for f in files])
    row = df["_row"].to_numpy().astype(np.int64)
    idx = np.searchsorted(starts, row, side="right") - 1
    names = [str(f) for f in files]
    return df.drop("_row").with_columns(pl.Series(FILE_ROW, row - starts[idx] + 1),
                                        pl.Series(FILE, np.array(names)[idx]).cast(pl.Enum(names)))


def _fit_partition(files: list[Path], spec: EventSpec, options: PrepOptions, assign: pl.Expr | None,
                   raw) -> tuple[pl.DataFrame, FitStats | None, pl.DataFrame]:
    """Validate one partition (errors name the ``raw`` files' rows); its users' event counts (``user_id``,
    ``count``, in id order), with ``assign`` (the split column of :func:`data_prep.split.split_assignment`, computed
    once by the driver; no earlier fit) its fit statistics, and its label ranges."""
    df = pl.read_parquet(files)
    try:
        validate(df, spec)
    except SchemaError:
        if isinstance(raw, list):
            validate(_with_file_rows(df, raw), spec)  # the same error, naming the raw file's rows
        raise
    frame = log_frame(df, assign, options)
    del df
    runs = frame.select(pl.col(USER).rle()).unnest(USER)  # users in sorted order, consecutive
    users = runs.select(pl.col("value").alias(USER), pl.col("len").cast(pl.Int64).alias("count"))
    return users, fit_stats(frame, spec, options) if assign is not None else None, label_ranges(frame, spec)


def _fit_pass(part_files: list[list[Path]], spec: EventSpec, options: PrepOptions, assign: pl.Expr | None,
              raw, run: Engine, split: SplitOptions) -> tuple[list[pl.DataFrame], list[FitStats]]:
    """:func:`_fit_partition` of every partition (one task each): each partition's users' counts and the
    partitions' fit statistics. Checks the splits (:func:`data_prep.split.check_splits`: none left empty, tasks
    with one class in a split)."""
    results = run.map(_fit_partition, [(files, spec, options, assign, raw) for files in part_files])
    check_splits(pl.concat([r[2] for r in results]), spec, split if assign is not None else None, options.val_frac,
                 options.test_frac)
    return [r[0] for r in results], [r[1] for r in results if r[1] is not None]


def _transform_partition(files: list[Path], assign: pl.Expr | None, options: PrepOptions, fitted: FittedState,
                         users: pl.DataFrame, tmp: Path, sync: bool) -> np.ndarray:
    """Transform one partition with the global fit and write it at its users' global rows (``users``: this
    partition's ``user_id``, ``_key``, ``_offset``) of the preallocated arrays in ``tmp``; its split counts
    ``(N_CODES,)`` (``assign``: the driver's split column; ``options``: its new-user downsampling).
    ``sync``: flush the written pages to the file (other nodes read it through shared storage)."""
    frame = log_frame(pl.read_parquet(files), assign, options)
    arrays = transform(frame, fitted)
    keys = frame.select(pl.col(USER)).join(users, on=USER, how="left", maintain_order="left")
    arrays["user_key"] = keys["_key"].to_numpy()
    dest = keys["_offset"].to_numpy() + (np.arange(frame.height) - user_runs(frame[USER])[1])
    split_counts = np.bincount(arrays["split"], minlength=N_CODES)
    del frame, keys
    contiguous = dest[-1] - dest[0] + 1 == len(dest)  # one partition, or users in one block
    for name, arr in arrays.items():
        mm = np.load(tmp / f"{name}.npy", mmap_mode="r+")
        if contiguous:
            mm[dest[0]:dest[-1] + 1] = arr
        else:
            mm[dest] = arr
        if sync:
            mm.flush()
        del mm  # unmap (no msync on one machine: like np.save, the page cache writes back): pages leave this RSS
    return split_counts


def prepare_partitioned(raw, spec: EventSpec, out_dir: str | Path, options: PrepOptions | None = None,
                        config: dict | None = None, fit_from: str | Path | None = None,
                        rows_per_partition: int | None = None, n_partitions: int | None = None,
                        slice_rows: int = 5_000_000, timings: dict | None = None,
                        split: SplitOptions | None = None) -> Path:
    """Prepare the events of ``raw`` at ``out_dir``, one user-hash partition per task.

    ``raw``: canonical Parquet file(s) (a file, a folder of ``*.parquet``, a list) or a picklable callable
    returning a ``pl.LazyFrame`` of canonical events (e.g. ``functools.partial(events.scan, path, columns)``),
    read in slices of ``slice_rows``. Same arguments and result as :func:`data_prep.prepare.prepare` (the
    events are not deduplicated: run ``drop_duplicates`` upstream if the log may repeat rows).
    ``options.engine`` runs the tasks here (``local``), in a process pool (``processes``) or on Ray (``ray``);
    ``rows_per_partition`` (default ``options.rows_per_partition`` or 2,000,000) sets ``n_partitions``
    (default ``ceil(N / rows_per_partition)``). ``timings`` (a dict) receives seconds per pass:
    ``split_pass``, ``stats_pass`` (the fit pass), ``build_pass`` (the transform pass), ``streams``, ``total``.
    """
    t0 = time.perf_counter()
    options, split = options or PrepOptions(), split or SplitOptions()
    rows_per_partition = rows_per_partition or options.rows_per_partition or 2_000_000
    timings = timings if timings is not None else {}
    source, out_dir = raw if callable(raw) else raw_files(raw), Path(out_dir)
    fitted = load_fitted(fit_from) if fit_from is not None else None
    if fitted is not None:
        fitted.check_compatible(spec, options)
    tmp = new_temp(out_dir)
    parts_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.parts-", dir=out_dir.parent))
    run = Engine(options)
    try:
        n = _scan(source).select(pl.len()).collect().item()
        if n == 0:
            raise SchemaError(f"{'the source' if callable(source) else source[0]}: no events")
        n_part = n_partitions or max(1, math.ceil(n / rows_per_partition))
        ts, source_checksum = _split_pass(source, parts_dir, n_part, slice_rows, n, run)
        # the split column, computed once here and shipped to every partition task (a Polars expression pickles)
        expr, cuts = split_assignment(split, options.val_frac, options.test_frac, pl.Series(TS, ts)) \
            if fitted is None else (None, None)
        first_ts = int(ts.min())
        del ts
        part_files = [sorted(d.glob("*.parquet")) for d in sorted(parts_dir.iterdir(), key=lambda d: int(d.name))]
        timings["split_pass"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        part_users, stats = _fit_pass(part_files, spec, options, expr, source, run, split)
        fitted = fitted or finish(FitStats.merge(stats), spec, options, cuts)
        del stats
        users = pl.concat(part_users).sort(USER)
        counts = users["count"].to_numpy()
        user_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        users = users.select(USER, pl.int_range(0, pl.len(), dtype=pl.Int64).alias("_key"),
                             pl.Series("_offset", user_offsets[:-1]))
        timings["stats_pass"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        for name, (dtype, shape) in row_shapes(fitted).items():
            open_output(tmp, name, (n, *shape), dtype)  # preallocated file with its .npy header
        tasks = [(files, expr, options, fitted, pu.select(USER).join(users, on=USER, how="left"), tmp,
                  run.name == "ray") for files, pu in zip(part_files, part_users, strict=True)]
        del part_users
        split_counts = np.sum(run.map(_transform_partition, tasks), axis=0)
        del tasks
        timings["build_pass"] = time.perf_counter() - t2

        t3 = time.perf_counter()
        o = fitted.options
        n_chunks = 1 + np.ceil(np.maximum(counts - o.stream_len, 0) / (o.stream_len - o.chunk_overlap)).astype(np.int64)
        maps = {name: open_output(tmp, name, (int(n_chunks.sum()), o.stream_len), dtype)
                for name, dtype in (("stream_rows", np.int64), ("stream_scored", np.bool_))}
        block, at = 200_000, 0
        for a in range(0, len(counts), block):
            chunk = stream_arrays(user_offsets[a:min(a + block, len(counts)) + 1], fitted)
            for name, arr in chunk.items():
                maps[name][at:at + len(arr)] = arr
            at += len(chunk["stream_rows"])
        del maps
        np.save(tmp / "user_offsets.npy", user_offsets)
        timings["streams"] = time.perf_counter() - t3

        fields = manifest_fields(fitted, n_events=n, split_counts=split_counts,
                                 cuts=cuts or (first_ts, first_ts), n_user_keys=len(counts),
                                 fit_from=None if fit_from is None else str(fit_from),
                                 unknown=unknown_shares(*(np.load(tmp / f"{k}.npy", mmap_mode="r")
                                                          for k in ("user", "item", "split"))))
        fields["split"] = split.to_dict() if fit_from is None else {"by": "fit_from"}
        manifest = {**fields, "source_checksum": source_checksum, "config": config or {},
                    "config_hash": config_hash(config or {}), "partitions": n_part}
        shutil.rmtree(parts_dir, ignore_errors=True)
        finish_dataset(tmp, out_dir, manifest, fitted, users[USER])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(parts_dir, ignore_errors=True)
        raise
    finally:
        run.close()
    timings["total"] = time.perf_counter() - t0
    return out_dir


def main(argv: list[str] | None = None) -> None:
    import yaml

    from data_prep.build import clean_stale, dataset_lock, event_spec

    parser = argparse.ArgumentParser(description="Prepare a Parquet event log partition by partition.")
    parser.add_argument("raw", help="a Parquet file or a folder of *.parquet (canonical event columns)")
    parser.add_argument("out", help="the prepared dataset folder")
    parser.add_argument("--data", default="conf/data/synthetic.yaml", help="data config (tasks, features, prep)")
    parser.add_argument("--fit-from", help="a prepared folder whose fitted state transforms this log (all test)")
    parser.add_argument("--rows-per-partition", type=int, default=2_000_000)
    parser.add_argument("--engine", choices=["local", "processes", "ray"], help="overrides data.prep.engine")
    parser.add_argument("--workers", type=int, help="overrides data.prep.workers (engine processes)")
    parser.add_argument("--ray-address", help="overrides data.prep.ray_address (engine ray; auto: the running cluster)")
    args = parser.parse_args(argv)
    data = yaml.safe_load(Path(args.data).read_text())
    run = {"engine": args.engine, "workers": args.workers, "ray_address": args.ray_address}
    data["prep"] = {**(data.get("prep") or {}), **{k: v for k, v in run.items() if v is not None}}
    timings: dict = {}
    with dataset_lock(Path(args.out)):  # as ensure_prepared: one writer at a time, leftovers of killed runs tidied
        clean_stale(Path(args.out))
        prepare_partitioned(args.raw, event_spec(data), args.out, PrepOptions.from_config(data.get("prep")),
                            fit_from=args.fit_from, rows_per_partition=args.rows_per_partition, timings=timings,
                            split=SplitOptions.from_config(data.get("split")))
    print(json.dumps(timings))


if __name__ == "__main__":
    main()
