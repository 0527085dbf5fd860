"""KuaiRand short-video logs (Gao et al., CIKM 2022) -> canonical events.

Reads the official layout (``log_standard_*.csv`` / ``log_random_*.csv`` and ``user_features*.csv``,
optionally gzipped) and the real sample in ``../shared/data/kuairand`` (``log_likehate_kcore15.tsv.gz``:
tab separated, ``label`` (1 like, 0 hate) instead of ``is_like``, no ``is_hate`` / ``tab`` / ``is_rand``).
All log files found are concatenated and joined with the user features on ``user_id``.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from data_prep.schema import FILE, FILE_ROW, SchemaError, with_file_rows

ROOT = Path(__file__).resolve().parents[2]
BINARY_TASKS = ("is_click", "long_view", "like", "is_follow", "is_comment", "is_forward", "is_profile_enter",
                "is_hate")
REGRESSION_TASKS = ("play_time",)
REQUIRED = ("user_id", "video_id", "time_ms", "hourmin", "play_time_ms", "duration_ms")
USER_FEATURES = ("user_id", "register_days", "user_active_degree")


def task_columns(events: pl.DataFrame) -> list[str]:
    """The task label columns present in a frame returned by :func:`load` (binary first, then regression)."""
    return [c for c in (*BINARY_TASKS, *REGRESSION_TASKS) if c in events.columns]


def _resolve(path: str | Path) -> Path:
    """``path`` as given, or relative to the repository root when that is where it exists."""
    p = Path(path)
    return p if p.exists() or p.is_absolute() else ROOT / p


def _files(folder: Path, prefix: str) -> list[Path]:
    return sorted(f for f in folder.glob(f"{prefix}*") if f.name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")))


def _scan(file: Path) -> pl.LazyFrame:
    return pl.scan_csv(file, separator="\t" if ".tsv" in file.name else ",", infer_schema_length=10_000)


def _unreadable(files: list[Path], err: BaseException) -> SchemaError:
    """The error naming the first of ``files`` that cannot be read whole (a truncated or corrupt download)."""
    for f in files:
        try:
            _scan(f).select(pl.len()).collect()
        except (OSError, pl.exceptions.PolarsError) as file_err:
            return SchemaError(f"KuaiRand file {f} cannot be read (truncated or corrupt? download it again): "
                               f"{str(file_err).strip().splitlines()[0]}")
    return SchemaError(f"KuaiRand files {[str(f) for f in files]}: {str(err).strip().splitlines()[0]}")


def _scan_all(files: list[Path], required: tuple[str, ...], rows: bool = False) -> pl.LazyFrame:
    """Concatenate the files (columns matched by name); each must have the ``required`` columns.

    ``rows``: each row records its file and 1-based data row (:func:`with_file_rows`).
    """
    frames = [with_file_rows(_scan(f), f, [str(g) for g in files]) if rows else _scan(f) for f in files]
    for f, lf in zip(files, frames):
        try:
            names = lf.collect_schema().names()
        except (OSError, pl.exceptions.PolarsError) as err:
            raise _unreadable([f], err) from None
        missing = [c for c in required if c not in names]
        if missing:
            raise SchemaError(f"KuaiRand file {f}: missing column(s) {missing}")
    return pl.concat(frames, how="diagonal_relaxed")


def load(path: str = "../shared/data/kuairand", new_user_max_register_days: int = 180) -> pl.DataFrame:
    """Load the KuaiRand logs in ``path`` as canonical events, sorted by ``ts``.

    Returns (n_events, k) with columns: user_id, item_id (= video_id), ts (= time_ms), hour (0..23)
    [Int64]; tab, is_rand [Int64, when present]; tasks is_click, long_view, like (= is_like, else
    ``label``), is_follow, is_comment, is_forward, is_profile_enter, is_hate [Int8, those present];
    play_time, duration [Float64 seconds]; register_days [Int64]; user_active_degree [String, null ->
    "UNKNOWN"]; new_user [String: "new" if register_days <= ``new_user_max_register_days`` else
    "regular"]; ``_file`` / ``_file_row``: each event's log file and 1-based data row. A relative ``path`` that does not exist from the working directory is taken relative
    to the repository root.
    """
    folder = _resolve(path)
    if not folder.is_dir():
        raise SchemaError(f"KuaiRand folder not found: {path}")
    logs = _files(folder, "log_")
    if not logs:
        raise SchemaError(f"no KuaiRand log files (log_*.csv[.gz] / log_*.tsv[.gz]) in {folder}")
    users = _files(folder, "user_features")
    if not users:
        raise SchemaError(f"no KuaiRand user features (user_features*.csv[.gz]) in {folder}")

    lf = _scan_all(logs, REQUIRED, rows=True)
    names = lf.collect_schema().names()
    like = "is_like" if "is_like" in names else "label"
    sources = {t: (like if t == "like" else t) for t in BINARY_TASKS}
    tasks = {t: src for t, src in sources.items() if src in names}
    events = lf.select(
        pl.col("user_id").cast(pl.Int64),
        pl.col("video_id").cast(pl.Int64).alias("item_id"),
        pl.col("time_ms").cast(pl.Int64).alias("ts"),
        (pl.col("hourmin").cast(pl.Int64) // 100 % 24).alias("hour"),
        *[pl.col(c).cast(pl.Int64) for c in ("tab", "is_rand") if c in names],
        *[pl.col(src).cast(pl.Int8).alias(t) for t, src in tasks.items()],
        (pl.col("play_time_ms").cast(pl.Float64) / 1000).alias("play_time"),
        (pl.col("duration_ms").cast(pl.Float64) / 1000).alias("duration"),
        FILE_ROW, FILE,
    )
    features = (
        _scan_all(users, USER_FEATURES)
        .select(pl.col("user_id").cast(pl.Int64), pl.col("register_days").cast(pl.Int64),
                pl.col("user_active_degree").cast(pl.String).fill_null("UNKNOWN"))
        .unique("user_id", keep="first", maintain_order=True)
    )
    new_user = (pl.when(pl.col("register_days") <= new_user_max_register_days)
                .then(pl.lit("new")).otherwise(pl.lit("regular")).alias("new_user"))
    joined = (
        events.join(features, on="user_id", how="left", maintain_order="left")  # deterministic tie order
        .with_columns(pl.col("user_active_degree").fill_null("UNKNOWN"), new_user)
        .sort("ts", "user_id", maintain_order=True)
        .select(pl.exclude(FILE_ROW, FILE), FILE_ROW, FILE)
    )
    try:
        return joined.collect()
    except (OSError, pl.exceptions.PolarsError) as err:  # e.g. a .gz cut short: name the file
        raise _unreadable([*logs, *users], err) from None
