"""A generic event log (CSV, TSV or Parquet) -> canonical events, through a column map.

    load("clicks.parquet", columns={"user_id": "uid", "item_id": "iid", "ts": "time", "click": "clicked"},
         ts_unit="s")

Mapped columns are renamed to their canonical names, every other column is kept as it is, and ``ts``
becomes Int64 milliseconds. Each row also records its file and 1-based data row
(``data_prep.schema.with_file_rows``), so validation errors name the rows of the file.

At scale, ``path`` may be a Parquet dataset: a folder of Parquet files (read recursively in path
order; a hive-partitioned one, ``day=2024-01-01/part-0.parquet``, adds its keys as columns) or a
glob (``logs/*.parquet``), or an object-store URL Polars reads (``s3://bucket/logs/``, credentials
from the environment). ``scan`` reads one lazily (``pl.scan_parquet``): the partitioned prep
(``data.prep.engine=processes|ray`` or ``data.prep.rows_per_partition``) slices it and never holds
the whole log; ``load`` collects it.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import polars as pl

from data_prep.schema import FILE, FILE_ROW, TS, SchemaError, with_file_rows

TS_UNITS = ("ms", "s", "us", "ns", "datetime")
MS_PER_UNIT = {"ms": 1.0, "s": 1_000.0, "us": 1e-3, "ns": 1e-6}
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")


def read(path: str | Path, separator: str = ",", encoding: str = "utf8") -> pl.DataFrame:
    """Read a CSV / TSV (optionally gzipped) or Parquet file, chosen by extension; ``.tsv`` defaults to tabs.

    Unreadable files (empty, truncated, not UTF-8, not Parquet) raise :class:`SchemaError` naming the file;
    ``encoding="utf8-lossy"`` reads a CSV with invalid UTF-8 bytes replaced.
    """
    p = Path(path)
    if not p.is_file():
        raise SchemaError(f"event file not found: {path}")
    name = p.name.lower()
    if not name.endswith(PARQUET_SUFFIXES + CSV_SUFFIXES):
        raise SchemaError(f"event file {path}: unknown format; expected one of {CSV_SUFFIXES + PARQUET_SUFFIXES}")
    if p.stat().st_size == 0:
        raise SchemaError(f"event file {path} is empty (0 bytes)")
    try:
        if name.endswith(PARQUET_SUFFIXES):
            return pl.read_parquet(p)
        sep = "\t" if separator == "," and ".tsv" in name else separator
        return pl.read_csv(p, separator=sep, infer_schema_length=10_000, encoding=encoding)
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = ""
        if "utf-8" in first.lower() or "utf8" in first.lower():
            hint = "; the file is not UTF-8 text: re-encode it, or pass +data.source.encoding=utf8-lossy"
        elif name.endswith(PARQUET_SUFFIXES):
            hint = "; the Parquet file is truncated or corrupt"
        elif "fields" in first or "parse" in first:
            hint = "; a line has a different number of fields or an unparsable value (truncated file?)"
        raise SchemaError(f"event file {path} cannot be read ({type(err).__name__}: {first}){hint}") from None


def _ids_fit_int64(df: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame | pl.LazyFrame:
    """Integer id columns wider than int64 (``Int128``/``UInt64`` from large ids) become strings, losslessly."""
    schema = df.collect_schema()
    wide = [c for c in ("user_id", "item_id") if c in schema and schema[c] in (pl.Int128, pl.UInt64, pl.UInt128)]
    return df.with_columns(pl.col(c).cast(pl.String) for c in wide) if wide else df


def is_url(path: str | Path) -> bool:
    """Whether ``path`` is an object-store or file URL (``s3://bucket/logs/``, ``gs://...``, ``file:///...``)."""
    return "://" in str(path)


def is_parquet_dataset(path: str | Path) -> bool:
    """Whether ``path`` is a folder (of Parquet files) or a glob pattern, not one file."""
    return Path(path).is_dir() or glob.has_magic(str(path))


def dataset_files(path: str | Path) -> list[str]:
    """The Parquet files of a folder (recursively) or glob, in path order; :class:`SchemaError` if there are none."""
    p = str(path)
    pattern = os.path.join(p, "**", "*") if Path(p).is_dir() else p
    files = sorted(f for f in glob.glob(pattern, recursive=True) if f.lower().endswith(PARQUET_SUFFIXES)
                   and os.path.isfile(f))
    if not files:
        raise SchemaError(f"event path {path}: no Parquet files ({', '.join(PARQUET_SUFFIXES)}) in it")
    return files


def _canonical(lf: pl.LazyFrame, path: str, columns: dict[str, str] | None, ts_unit: str,
               convert_ts: bool = True) -> pl.LazyFrame:
    """``columns`` renamed to their canonical names, wide ids as strings, ``ts`` as Int64 ms (lazily; with
    ``convert_ts``)."""
    if ts_unit not in TS_UNITS:
        raise SchemaError(f"unknown ts_unit '{ts_unit}'; expected one of {TS_UNITS}")
    names = lf.collect_schema().names()
    columns = dict(columns or {})
    missing = {canon: src for canon, src in columns.items() if src not in names}
    if missing:
        which = ", ".join(f"'{src}' (for '{canon}')" for canon, src in missing.items())
        raise SchemaError(f"{path}: mapped column(s) {which} not found; the file has {names}")
    repeated = sorted({src for src in columns.values() if list(columns.values()).count(src) > 1})
    if repeated:
        raise SchemaError(f"{path}: column(s) {repeated} are mapped to more than one canonical name")
    clash = [c for c, src in columns.items() if c != src and c in names and c not in columns.values()]
    if clash:
        raise SchemaError(f"{path}: column(s) {clash} exist in the file and are also mapped from another column")
    lf = _ids_fit_int64(lf.rename({src: canon for canon, src in columns.items()}))
    if TS not in lf.collect_schema():
        raise SchemaError(f"{path}: no '{TS}' column; map one with columns={{'ts': ...}}; the file has {names}")
    if convert_ts and (lf.collect_schema()[TS] != pl.Int64 or ts_unit != "ms"):
        lf = lf.with_columns(pl.col(TS).map_batches(lambda ts: to_ms(ts, ts_unit), return_dtype=pl.Int64))
    return lf


def scan(path: str | Path, columns: dict[str, str] | None = None, ts_unit: str = "ms") -> pl.LazyFrame:
    """A Parquet file, folder (hive-partitioned or not) or glob as canonical events, lazily, in file order.

    Canonical id/ts columns first; the column map and ``ts_unit`` as in :func:`load` (no file-row columns:
    the partitioned prep numbers the rows of the whole dataset).
    """
    src = str(path)
    if not is_url(src) and not is_parquet_dataset(src) and not src.lower().endswith(PARQUET_SUFFIXES):
        raise SchemaError(f"event path {path}: a lazy scan reads Parquet (a file, folder or glob)")
    try:  # a folder: its hive keys (key=value subfolders) become columns; a URL: Polars' object-store reader
        if is_url(src):
            lf = pl.scan_parquet(src)
        else:
            lf = pl.scan_parquet(src if Path(src).is_dir() else dataset_files(src) if is_parquet_dataset(src) else [src])
        lf.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SchemaError(f"event path {path} cannot be read ({type(err).__name__}: {first})") from None
    lf = _canonical(lf, src, columns, ts_unit)
    first = [c for c in ("user_id", "item_id", TS) if c in lf.collect_schema()]
    return lf.select(*first, pl.exclude(*first))


def to_ms(ts: pl.Series, unit: str) -> pl.Series:
    """Timestamps ``(n,)`` in ``unit`` (a number, or a Date/Datetime/ISO string for "datetime") -> Int64 ms."""
    if unit not in TS_UNITS:
        raise SchemaError(f"unknown ts_unit '{unit}'; expected one of {TS_UNITS}")
    if ts.dtype == pl.String and unit == "datetime":
        try:
            ts = ts.str.to_datetime(time_zone="UTC")  # naive strings are read as UTC
        except pl.exceptions.PolarsError as err:
            raise SchemaError(f"column '{ts.name}': cannot parse as datetime ({str(err).splitlines()[0]})") from None
    if ts.dtype.is_temporal():
        if ts.dtype not in (pl.Date, pl.Datetime):
            raise SchemaError(f"column '{ts.name}' has dtype {ts.dtype}, not a timestamp")
        return ts.dt.epoch("ms").cast(pl.Int64)
    if unit == "datetime":
        raise SchemaError(f"column '{ts.name}' has dtype {ts.dtype}; ts_unit='datetime' needs a Date/Datetime "
                          "or an ISO date string")
    if ts.dtype == pl.String:
        try:
            ts = ts.cast(pl.Float64)
        except pl.exceptions.PolarsError:
            raise SchemaError(f"column '{ts.name}' holds strings that are not numbers; "
                              "use ts_unit='datetime' for date strings") from None
    if not ts.dtype.is_numeric():
        raise SchemaError(f"column '{ts.name}' has dtype {ts.dtype}, not a timestamp")
    factor = MS_PER_UNIT[unit]
    x = ts.cast(pl.Float64)
    bad = x.is_nan() | x.is_infinite() | (x.abs() * factor >= 2.0**63)
    if bad.any():
        rows = ", ".join(f"row {i + 1}: {ts[i]!r}" for i in bad.arg_true().head(5).to_list())
        raise SchemaError(f"column '{ts.name}' has timestamps that are not finite or do not fit int64 ms "
                          f"with ts_unit='{unit}': {rows} (1-based data rows)")
    if ts.dtype.is_integer():
        ts = ts.cast(pl.Int64)
        return ts * int(factor) if factor >= 1 else ts // round(1 / factor)
    return (ts.cast(pl.Float64) * factor).floor().cast(pl.Int64)


def load(path: str, columns: dict[str, str] | None = None, ts_unit: str = "ms",
         separator: str = ",", encoding: str = "utf8") -> pl.DataFrame:
    """Load an event log as canonical events ``(n_events, k)``, sorted by ``ts`` (stable).

    ``columns`` maps canonical name -> column in the file; mapped columns are renamed, the others kept.
    ``ts`` is converted from ``ts_unit`` ("ms", "s", "us", "ns" or "datetime") to Int64 milliseconds;
    a Date/Datetime column is converted whatever the unit. Canonical id/ts columns come first.
    Integer ids beyond int64 are kept exactly, as strings. The file rows are in ``_file_row`` / ``_file``.
    """
    if ts_unit not in TS_UNITS:
        raise SchemaError(f"unknown ts_unit '{ts_unit}'; expected one of {TS_UNITS}")
    if is_parquet_dataset(path):  # a folder or glob of Parquet files: each row with its file and row there
        files = dataset_files(path)
        df = pl.scan_parquet(str(path) if Path(path).is_dir() else files, include_file_paths=FILE).collect()
        df = df.with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.UInt32).over(FILE).alias(FILE_ROW),
                             pl.col(FILE).cast(pl.Enum(files)))
    else:
        df = with_file_rows(read(path, separator, encoding), path)
    columns = dict(columns or {})
    df = _canonical(df.lazy(), str(path), columns, ts_unit, convert_ts=False).collect()
    try:
        df = df.with_columns(to_ms(df[TS], ts_unit))
    except SchemaError as err:
        raise SchemaError(f"{path}: {err} (file column '{columns.get(TS, TS)}')") from None
    first = [c for c in ("user_id", "item_id", TS) if c in df.columns]
    return df.select(*first, pl.exclude(*first, FILE_ROW, FILE), FILE_ROW, FILE).sort(TS, maintain_order=True)

