"""MovieLens ratings (GroupLens) -> canonical events, from the official layouts, detected by the files present.

    load("~/data/ml-100k")   # u.data (+ u.user, u.item)
    load("~/data/ml-1m")     # ratings.dat (+ users.dat, movies.dat)
    load("~/data/ml-20m")    # ratings.csv (+ movies.csv; tags.csv is accepted, not read)   (also ML-25M)

One event per rating: ``user_id``, ``item_id`` (movie id), ``ts`` (Int64 ms, from the files'
seconds), ``rating`` (Float64), the tasks of the POSO paper ``favorite`` (rating = 5) and
``satisfied`` (rating >= 4) (Int8 0/1); ``genre`` (String: the movie's first listed genre,
"UNKNOWN" without a movie file); ``gender``, ``age``, ``occupation`` (String, "UNKNOWN" where the
layout has no user file, as ML-20M/25M). Sorted by ``ts`` then user. The licence of MovieLens
forbids redistribution: the suite never ships its files; point ``data.source.path`` at your copy.
Tags (``tags.csv``) are written after the rating, so as a feature they would leak: they are not read.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from data_prep.schema import SchemaError

ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western")
LAYOUTS = {"ml-100k": "u.data", "ml-1m": "ratings.dat", "ml-20m": "ratings.csv"}  # layout -> its ratings file
USER_COLUMNS = ("gender", "age", "occupation")
UNKNOWN = "UNKNOWN"


def layout(folder: str | Path) -> str:
    """The layout of ``folder``: ``ml-100k``, ``ml-1m`` or ``ml-20m`` (also ML-25M), by its ratings file."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise SchemaError(f"MovieLens folder not found: {folder}")
    found = [name for name, f in LAYOUTS.items() if (folder / f).is_file()]
    if not found:
        raise SchemaError(f"no MovieLens ratings file in {folder}: expected one of {', '.join(LAYOUTS.values())} "
                          "(ML-100K, ML-1M, ML-20M/25M layouts)")
    return found[0]


def _fields(path: Path, sep: str, names: list[str]) -> pl.DataFrame:
    """A file of ``sep``-separated lines (no header, no quoting; latin-1 bytes read lossily) as String columns."""
    lines = pl.read_csv(path, has_header=False, separator="\x1f", quote_char=None, new_columns=["_line"],
                        encoding="utf8-lossy", schema_overrides={"_line": pl.String})
    parts = lines.select(pl.col("_line").str.strip_chars_end("\r").str.split(sep).alias("_f"))
    short = parts.filter(pl.col("_f").list.len() < len(names))
    if short.height:
        raise SchemaError(f"MovieLens file {path}: a line has fewer than {len(names)} '{sep}'-separated fields "
                          f"({names})")
    return parts.select(*[pl.col("_f").list.get(i).alias(n) for i, n in enumerate(names)])


def _ratings(folder: Path, kind: str) -> pl.DataFrame:
    if kind == "ml-100k":
        df = _fields(folder / "u.data", "\t", ["user_id", "item_id", "rating", "ts"])
    elif kind == "ml-1m":
        df = _fields(folder / "ratings.dat", "::", ["user_id", "item_id", "rating", "ts"])
    else:
        df = pl.read_csv(folder / "ratings.csv", schema_overrides={"userId": pl.String, "movieId": pl.String,
                                                                    "rating": pl.String, "timestamp": pl.String})
        df = df.rename({"userId": "user_id", "movieId": "item_id", "timestamp": "ts"})
    try:
        return df.select(pl.col("user_id").cast(pl.Int64), pl.col("item_id").cast(pl.Int64),
                         (pl.col("ts").cast(pl.Int64) * 1000).alias("ts"), pl.col("rating").cast(pl.Float64))
    except pl.exceptions.InvalidOperationError as err:
        raise SchemaError(f"MovieLens ratings in {folder}: a user id, movie id, rating or timestamp is not a "
                          f"number ({str(err).splitlines()[0]})") from None


def _movies(folder: Path, kind: str) -> pl.DataFrame | None:
    """``item_id``, ``genre`` (first listed genre) of the layout's movie file, if present."""
    if kind == "ml-100k" and (folder / "u.item").is_file():
        df = _fields(folder / "u.item", "|", ["item_id", "title", "date", "video", "url", *ML100K_GENRES])
        first = pl.coalesce([pl.when(pl.col(g) == "1").then(pl.lit(g)) for g in ML100K_GENRES])
        return df.select(pl.col("item_id").cast(pl.Int64), first.alias("genre"))
    if kind == "ml-1m" and (folder / "movies.dat").is_file():
        df = _fields(folder / "movies.dat", "::", ["item_id", "title", "genres"])
    elif kind == "ml-20m" and (folder / "movies.csv").is_file():
        df = pl.read_csv(folder / "movies.csv", schema_overrides={"movieId": pl.String, "title": pl.String,
                                                                   "genres": pl.String}).rename({"movieId": "item_id"})
    else:
        return None
    return df.select(pl.col("item_id").cast(pl.Int64), pl.col("genres").str.split("|").list.first().alias("genre"))


def _users(folder: Path, kind: str) -> pl.DataFrame | None:
    """``user_id``, ``gender``, ``age``, ``occupation`` (Strings) of the layout's user file, if present."""
    if kind == "ml-100k" and (folder / "u.user").is_file():
        df = _fields(folder / "u.user", "|", ["user_id", "age", "gender", "occupation", "zip"])
    elif kind == "ml-1m" and (folder / "users.dat").is_file():
        df = _fields(folder / "users.dat", "::", ["user_id", "gender", "age", "occupation", "zip"])
    else:
        return None
    return df.select(pl.col("user_id").cast(pl.Int64), *USER_COLUMNS)


def load(path: str) -> pl.DataFrame:
    """The ratings of the MovieLens folder ``path`` as canonical events (module docstring), sorted by ``ts``."""
    folder = Path(path).expanduser()
    kind = layout(folder)
    events = _ratings(folder, kind)
    movies, users = _movies(folder, kind), _users(folder, kind)
    if movies is not None:
        events = events.join(movies.unique("item_id", keep="first"), on="item_id", how="left", maintain_order="left")
    else:
        events = events.with_columns(pl.lit(None, dtype=pl.String).alias("genre"))
    if users is not None:
        events = events.join(users.unique("user_id", keep="first"), on="user_id", how="left", maintain_order="left")
    else:
        events = events.with_columns(*[pl.lit(None, dtype=pl.String).alias(c) for c in USER_COLUMNS])
    return (events.with_columns(
        (pl.col("rating") == 5).cast(pl.Int8).alias("favorite"),
        (pl.col("rating") >= 4).cast(pl.Int8).alias("satisfied"),
        *[pl.col(c).fill_null(UNKNOWN) for c in ("genre", *USER_COLUMNS)])
        .sort("ts", "user_id", maintain_order=True)
        .select("user_id", "item_id", "ts", "favorite", "satisfied", "rating", "genre", *USER_COLUMNS))
