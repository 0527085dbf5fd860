"""data=movielens reads the three official layouts (tiny files written here: MovieLens is never shipped),
and experiment=poso_movielens runs end to end on an ML-100K-layout folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from data_prep.schema import SchemaError
from data_prep.sources.movielens import ML100K_GENRES, layout, load

GENRES = ("Action", "Comedy", "Drama", "Sci-Fi")


def ratings(n_users: int = 4, n_movies: int = 5, per_user: int = 6, seed: int = 0) -> pl.DataFrame:
    """user, movie, rating (1-5, halves where ``halves``), seconds: a small deterministic log."""
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(1, n_users + 1), per_user)
    movie = rng.integers(1, n_movies + 1, len(user))
    rating = rng.integers(1, 6, len(user))
    ts = 880_000_000 + rng.integers(0, 10_000, len(user))
    return pl.DataFrame({"user": user, "movie": movie, "rating": rating, "ts": ts})


def write_100k(folder, r: pl.DataFrame) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join(f"{u}\t{m}\t{x}\t{t}\n" for u, m, x, t in r.iter_rows()))
    (folder / "u.user").write_text("".join(f"{u}|{20 + u}|{'MF'[u % 2]}|job{u % 3}|0{u}000\n"
                                           for u in range(1, r["user"].max() + 1)))
    lines = []
    for m in range(1, r["movie"].max() + 1):
        flags = ["0"] * len(ML100K_GENRES)
        flags[ML100K_GENRES.index(GENRES[m % 4])] = "1"
        flags[ML100K_GENRES.index("War")] = "1"  # a second genre: the first listed one is kept
        lines.append(f"{m}|Movie {m} (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n")
    (folder / "u.item").write_bytes("".join(lines).replace("Movie 1 ", "Caf\xe9 1 ").encode("latin-1"))


def write_1m(folder, r: pl.DataFrame) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text("".join(f"{u}::{m}::{x}::{t}\n" for u, m, x, t in r.iter_rows()))
    (folder / "users.dat").write_text("".join(f"{u}::{'MF'[u % 2]}::{18 + u}::{u % 3}::0{u}000\n"
                                              for u in range(1, r["user"].max() + 1)))
    (folder / "movies.dat").write_bytes("".join(f"{m}::Star: Movie {m} (1995)::{GENRES[m % 4]}|War\n"
                                                for m in range(1, r["movie"].max() + 1)).encode("latin-1"))


def write_20m(folder, r: pl.DataFrame) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    r.select(pl.col("user").alias("userId"), pl.col("movie").alias("movieId"),
             (pl.col("rating") - 0.5 * (pl.col("rating") == 4)).alias("rating"), pl.col("ts").alias("timestamp")
             ).write_csv(folder / "ratings.csv")
    pl.DataFrame({"movieId": range(1, r["movie"].max() + 1),
                  "title": [f'"Movie, {m} (1995)"' for m in range(1, r["movie"].max() + 1)],
                  "genres": [f"{GENRES[m % 4]}|War" for m in range(1, r["movie"].max() + 1)]}).write_csv(
        folder / "movies.csv")
    (folder / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,1,funny,880000001\n")


@pytest.mark.parametrize(("writer", "kind"), [(write_100k, "ml-100k"), (write_1m, "ml-1m"), (write_20m, "ml-20m")])
def test_each_layout_reads_to_the_same_canonical_events(tmp_path, writer, kind):
    r = ratings()
    writer(tmp_path / kind, r)
    assert layout(tmp_path / kind) == kind
    events = load(str(tmp_path / kind))
    assert events.columns == ["user_id", "item_id", "ts", "favorite", "satisfied", "rating", "genre", "gender",
                              "age", "occupation"]
    assert events.height == r.height and events["ts"].is_sorted()
    expected = r.with_columns(pl.col("rating").cast(pl.Float64) - (0.5 * (pl.col("rating") == 4) if kind == "ml-20m"
                                                                   else 0.0), pl.col("ts") * 1000)
    joined = events.join(expected, left_on=["user_id", "item_id", "ts"], right_on=["user", "movie", "ts"])
    assert joined.height == r.height
    np.testing.assert_array_equal(joined["rating"], joined["rating_right"])
    np.testing.assert_array_equal(joined["favorite"], (joined["rating_right"] == 5).cast(pl.Int8))
    np.testing.assert_array_equal(joined["satisfied"], (joined["rating_right"] >= 4).cast(pl.Int8))
    genres = dict(events.select("item_id", "genre").unique().iter_rows())
    assert genres == {m: GENRES[m % 4] for m in genres}  # the first listed genre
    if kind == "ml-20m":  # no user file in this layout
        assert set(events["gender"]) == {"UNKNOWN"}
    else:
        users = dict(events.select("user_id", "gender").unique().iter_rows())
        assert users == {u: "MF"[u % 2] for u in users}


def test_a_folder_without_ratings_is_named(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(SchemaError, match="no MovieLens ratings file .* u.data, ratings.dat, ratings.csv"):
        load(str(tmp_path / "x"))


def test_poso_movielens_experiment_runs_end_to_end_on_an_ml100k_folder(tmp_path):
    folder = tmp_path / "ml-100k"
    write_100k(folder, ratings(n_users=60, n_movies=40, per_user=30, seed=1))
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mose.train", "experiment=poso_movielens", f"data.source.path={folder}",
           "model=poso_all", f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}",
           "trainer.max_epochs=1", "threads=1", "data.batch_size=256"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert "cohort/seen_in_train=unseen/favorite/gauc" in metrics and "rating/mse" in metrics
    assert "cohort/seen_in_train=seen/favorite/auc" not in metrics  # user split: no test user is in train
    manifest = json.loads(next((tmp_path / "data").rglob("manifest.json")).read_text())
    assert manifest["split"]["by"] == "user" and manifest["history_len"] == 30
    assert "-gauc" in json.loads((tmp_path / "run" / "metrics.json").read_text())["checkpoint"]
