"""A generic event log (CSV, TSV or Parquet) -> canonical events, through a column map.

    load("clicks.parquet", columns={"user_id": "uid", "item_id": "iid", "ts": "time", "click": "clicked"},
         ts_unit="s")

Mapped columns are renamed to their canonical names, every other column is kept as it is, and ``ts``
becomes Int64 milliseconds. Each row also records its file and 1-based data row
(``data_prep.schema.with_file_rows``), so validation errors name the rows of the file.
"""

from __future__ import annotations

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


def _ids_fit_int64(df: pl.DataFrame) -> pl.DataFrame:
    """Integer id columns wider than int64 (``Int128``/``UInt64`` from large ids) become strings, losslessly."""
    wide = [c for c in ("user_id", "item_id") if c in df.columns and df.schema[c] in (pl.Int128, pl.UInt64, pl.UInt128)]
    return df.with_columns(pl.col(c).cast(pl.String) for c in wide) if wide else df


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
    df = with_file_rows(read(path, separator, encoding), path)
    columns = dict(columns or {})
    missing = {canon: src for canon, src in columns.items() if src not in df.columns}
    if missing:
        which = ", ".join(f"'{src}' (for '{canon}')" for canon, src in missing.items())
        raise SchemaError(f"{path}: mapped column(s) {which} not found; the file has {df.columns}")
    repeated = sorted({src for src in columns.values() if list(columns.values()).count(src) > 1})
    if repeated:
        raise SchemaError(f"{path}: column(s) {repeated} are mapped to more than one canonical name")
    clash = [c for c, src in columns.items() if c != src and c in df.columns and c not in columns.values()]
    if clash:
        raise SchemaError(f"{path}: column(s) {clash} exist in the file and are also mapped from another column")
    df = _ids_fit_int64(df.rename({src: canon for canon, src in columns.items()}))
    if TS not in df.columns:
        raise SchemaError(f"{path}: no '{TS}' column; map one with columns={{'ts': ...}}; the file has {df.columns}")
    try:
        df = df.with_columns(to_ms(df[TS], ts_unit))
    except SchemaError as err:
        raise SchemaError(f"{path}: {err} (file column '{columns.get(TS, TS)}')") from None
    first = [c for c in ("user_id", "item_id", TS) if c in df.columns]
    return df.select(*first, pl.exclude(*first, FILE_ROW, FILE), FILE_ROW, FILE).sort(TS, maintain_order=True)
