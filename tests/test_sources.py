"""Event sources: synthetic generator, KuaiRand loader, generic CSV/Parquet loader."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from data_prep.schema import SchemaError
from data_prep.sources import events, kuairand, synthetic

KUAIRAND_SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kuairand"


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of binary labels ``y (n,)`` for continuous scores ``(n,)`` (rank statistic)."""
    ranks = np.argsort(np.argsort(score)) + 1.0
    n_pos = y.sum()
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(y) - n_pos)))


# ---------------------------------------------------------------- synthetic


@pytest.fixture(scope="module")
def syn() -> pl.DataFrame:
    return synthetic.generate(n_events=200_000, return_scores=True)


def test_synthetic_columns_and_dtypes():
    df = synthetic.generate(n_events=5_000, n_users=300, n_items=200)
    assert df.schema == pl.Schema({
        "user_id": pl.Int64, "item_id": pl.Int64, "ts": pl.Int64, "position": pl.Int64, "device": pl.Int64,
        "click": pl.Int8, "like": pl.Int8, "watch_time": pl.Float64, "convert": pl.Int8, "user_group": pl.String,
        "days_since_signup": pl.Int64,
    })
    assert df.height == 5_000


def test_synthetic_deterministic_per_seed():
    a = synthetic.generate(n_events=20_000, n_users=500, n_items=300, seed=1)
    b = synthetic.generate(n_events=20_000, n_users=500, n_items=300, seed=1)
    c = synthetic.generate(n_events=20_000, n_users=500, n_items=300, seed=2)
    assert a.equals(b)
    assert not a.equals(c)


def test_synthetic_ranges(syn: pl.DataFrame):
    assert syn.height == 200_000
    assert syn["ts"].is_sorted()
    assert (syn["ts"] % 1000 == 0).all() and syn["ts"].min() >= synthetic.EPOCH_MS
    assert syn["ts"].max() < synthetic.EPOCH_MS + 30 * synthetic.DAY_S * 1000
    assert set(syn["position"].unique()) == set(range(10))
    assert set(syn["device"].unique()) == {0, 1, 2}
    assert set(syn["click"].unique()) == {0, 1} and set(syn["like"].unique()) == {0, 1}
    assert syn["watch_time"].is_finite().all() and syn["watch_time"].min() >= 0
    assert set(syn["user_group"].unique()) == {"new", "regular"}
    assert syn["days_since_signup"].min() >= 0
    assert 0.2 <= syn["click"].mean() <= 0.4
    assert 0.05 <= syn["like"].mean() <= 0.2
    assert syn.null_count().sum_horizontal().item() == 0


def test_synthetic_shared_timestamps(syn: pl.DataFrame):
    assert syn["ts"].n_unique() < syn.height * 0.9
    # feed pages: one user sees several items at the same timestamp
    assert syn.select("user_id", "ts").n_unique() < syn.height * 0.9


def test_synthetic_days_since_signup_is_past_only(syn: pl.DataFrame):
    steps = syn.sort("user_id", "ts").select(pl.col("days_since_signup").diff().over("user_id").drop_nulls())
    assert steps.min().item() >= 0


def test_synthetic_new_users_are_late_and_short(syn: pl.DataFrame):
    users = syn.group_by("user_id", "user_group").agg(
        n=pl.len(), first=pl.col("ts").min(), age=pl.col("days_since_signup").max())
    assert users["user_id"].is_unique().all()  # a user is in one group
    new, regular = (users.filter(pl.col("user_group") == g) for g in ("new", "regular"))
    assert 0.15 < new.height / users.height < 0.25
    assert new["n"].max() <= 30 and new["n"].mean() < regular["n"].mean() / 2
    late = synthetic.EPOCH_MS + int(0.7 * 30 * synthetic.DAY_S * 1000)
    assert new["first"].min() >= late and regular["first"].min() < late
    assert new["age"].max() < 10 and regular["age"].min() >= 30


def test_synthetic_position_biases_clicks(syn: pl.DataFrame):
    rate = syn.group_by("position").agg(pl.col("click").mean()).sort("position")["click"]
    assert rate[0] > rate[9] + 0.1


def test_synthetic_click_is_learnable(syn: pl.DataFrame):
    bayes = auc(syn["click"].to_numpy(), syn["score_click"].to_numpy())
    assert 0.75 <= bayes <= 0.88


def test_synthetic_latents_are_the_items_and_drive_the_scores():
    """``return_scores`` adds each event's item latent vector: one vector per item, absent without the flag, and
    the same data otherwise; within the regular users the like score depends on it (the user's taste times v)."""
    args = dict(n_events=20_000, n_users=300, n_items=200, latent_dim=4)
    df = synthetic.generate(**args, return_scores=True)
    latent = [f"latent_{j}" for j in range(4)]
    assert set(latent) <= set(df.columns)
    assert df.group_by("item_id").agg(pl.col(latent).n_unique()).select(pl.col(latent).max()).row(0) == (1,) * 4
    plain = synthetic.generate(**args)
    assert not any(c.startswith("latent_") for c in plain.columns)
    assert df.select(plain.columns).equals(plain)
    item_part = df["score_like"] - df.select(pl.col("score_like").mean().over("item_id"))["score_like"]
    assert item_part.std() > 0.5  # the taste part: not an item-only logit


def test_synthetic_task_correlation_has_an_effect():
    def corr(rho: float) -> tuple[float, float]:
        df = synthetic.generate(n_events=30_000, n_users=600, n_items=300, task_correlation=rho,
                                return_scores=True)
        return (np.corrcoef(df["score_click"], df["score_like"])[0, 1],
                np.corrcoef(df["click"], df["like"])[0, 1])

    (score_lo, label_lo), (score_hi, label_hi) = corr(0.0), corr(1.0)
    assert score_hi > score_lo + 0.5
    assert label_hi > label_lo + 0.1


def test_synthetic_rejects_bad_arguments():
    with pytest.raises(ValueError, match="new_user_fraction"):
        synthetic.generate(n_events=100, new_user_fraction=1.0)
    with pytest.raises(ValueError, match="task_correlation"):
        synthetic.generate(n_events=100, task_correlation=1.5)


# ---------------------------------------------------------------- KuaiRand

needs_sample = pytest.mark.skipif(not KUAIRAND_SAMPLE.is_dir(), reason="KuaiRand sample not available")


@pytest.fixture(scope="module")
def kr() -> pl.DataFrame:
    return kuairand.load(str(KUAIRAND_SAMPLE))


@needs_sample
def test_kuairand_sample_counts(kr: pl.DataFrame):
    assert kr.height == 41_828
    assert kr["user_id"].n_unique() == 664
    assert kr["item_id"].n_unique() == 9_359
    assert kr["ts"].is_sorted()
    assert kr.select(pl.col("user_id", "item_id", "ts", "like", "new_user").null_count()).sum_horizontal().item() == 0


@needs_sample
def test_kuairand_sample_schema(kr: pl.DataFrame):
    assert kr.schema == pl.Schema({
        "user_id": pl.Int64, "item_id": pl.Int64, "ts": pl.Int64, "hour": pl.Int64,
        **{t: pl.Int8 for t in ("is_click", "long_view", "like", "is_follow", "is_comment", "is_forward",
                                "is_profile_enter")},
        "play_time": pl.Float64, "duration": pl.Float64, "register_days": pl.Int64,
        "user_active_degree": pl.String, "new_user": pl.String,
        "_file_row": pl.UInt32, "_file": pl.Enum([str(KUAIRAND_SAMPLE / "log_likehate_kcore15.tsv.gz")]),
    })
    assert kuairand.task_columns(kr) == ["is_click", "long_view", "like", "is_follow", "is_comment",
                                         "is_forward", "is_profile_enter", "play_time"]
    assert kr["hour"].min() >= 0 and kr["hour"].max() <= 23


@needs_sample
def test_kuairand_like_is_label(kr: pl.DataFrame):
    raw = pl.read_csv(KUAIRAND_SAMPLE / "log_likehate_kcore15.tsv.gz", separator="\t")
    raw = raw.sort("time_ms", "user_id", "video_id")
    loaded = kr.sort("ts", "user_id", "item_id")
    assert (loaded["like"] == raw["label"]).all()
    assert (loaded["play_time"] * 1000 - raw["play_time_ms"]).abs().max() < 1e-6


@needs_sample
def test_kuairand_new_users(kr: pl.DataFrame):
    new = kr.filter(pl.col("new_user") == "new")
    assert new.height == 2_910 and new["user_id"].n_unique() == 40
    assert (new["register_days"] <= 180).all()
    more = kuairand.load(str(KUAIRAND_SAMPLE), new_user_max_register_days=365)
    assert (more["new_user"] == "new").sum() > new.height


@needs_sample
def test_kuairand_default_path_from_another_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # the relative default resolves against the repository root
    assert kuairand.load().height == 41_828


LOG_HEADER = ("user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate,"
              "long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,is_profile_enter,is_rand,tab")


def test_kuairand_official_layout(tmp_path: Path):
    (tmp_path / "log_standard_4_08_to_4_21_pure.csv").write_text(
        f"{LOG_HEADER}\n"
        "1,10,20220408,900,1649400000000,1,1,0,0,0,0,1,12500,20000,0,0,0,0,1\n"
        "2,11,20220409,2300,1649500000000,0,0,0,0,0,1,0,0,15000,0,0,0,0,2\n")
    (tmp_path / "log_random_4_22_to_5_08_pure.csv").write_text(
        f"{LOG_HEADER}\n"
        "1,12,20220422,1000,1650600000000,1,0,1,0,0,0,0,3000,8000,0,0,1,1,1\n")
    (tmp_path / "user_features_pure.csv").write_text(
        "user_id,user_active_degree,register_days\n1,full_active,900\n2,,30\n")
    df = kuairand.load(str(tmp_path))
    assert df.height == 3
    assert df["item_id"].to_list() == [10, 11, 12]  # both files, sorted by ts
    assert df["is_rand"].to_list() == [0, 0, 1] and df["tab"].to_list() == [1, 2, 1]
    assert df["like"].to_list() == [1, 0, 0] and df.schema["like"] == pl.Int8
    assert "is_like" not in df.columns and df["is_hate"].to_list() == [0, 1, 0]
    assert df["hour"].to_list() == [9, 23, 10]
    assert df["play_time"].to_list() == [12.5, 0.0, 3.0] and df["duration"].to_list() == [20.0, 15.0, 8.0]
    assert df["user_active_degree"].to_list() == ["full_active", "UNKNOWN", "full_active"]
    assert df["new_user"].to_list() == ["regular", "new", "regular"]
    assert "is_hate" in kuairand.task_columns(df)


def test_kuairand_errors_name_the_folder(tmp_path: Path):
    with pytest.raises(SchemaError, match="not found"):
        kuairand.load(str(tmp_path / "nowhere"))
    with pytest.raises(SchemaError, match=f"no KuaiRand log files.*{tmp_path.name}"):
        kuairand.load(str(tmp_path))
    (tmp_path / "log_standard_x.csv").write_text("user_id,video_id\n1,2\n")
    (tmp_path / "user_features_pure.csv").write_text("user_id,user_active_degree,register_days\n1,full_active,9\n")
    with pytest.raises(SchemaError, match=r"log_standard_x.csv: missing column\(s\) \['time_ms'"):
        kuairand.load(str(tmp_path))


# ---------------------------------------------------------------- generic events

RAW = pl.DataFrame({
    "uid": [3, 1, 2], "iid": [30, 10, 20], "time": [1_700_000_002, 1_700_000_000, 1_700_000_001],
    "clicked": [1, 0, 1], "extra": ["c", "a", "b"],
})
MAP = {"user_id": "uid", "item_id": "iid", "ts": "time", "click": "clicked"}


def _check_round_trip(df: pl.DataFrame) -> None:
    assert df.columns == ["user_id", "item_id", "ts", "click", "extra", "_file_row", "_file"]
    assert df["_file_row"].to_list() == [2, 3, 1]  # each event's data row in the file (sorted by ts here)
    assert df.schema["ts"] == pl.Int64
    assert df["ts"].to_list() == [1_700_000_000_000, 1_700_000_001_000, 1_700_000_002_000]
    assert df["user_id"].to_list() == [1, 2, 3] and df["extra"].to_list() == ["a", "b", "c"]


def test_events_csv_round_trip(tmp_path: Path):
    RAW.write_csv(tmp_path / "log.csv")
    _check_round_trip(events.load(str(tmp_path / "log.csv"), MAP, ts_unit="s"))


def test_events_parquet_round_trip(tmp_path: Path):
    RAW.write_parquet(tmp_path / "log.parquet")
    _check_round_trip(events.load(str(tmp_path / "log.parquet"), MAP, ts_unit="s"))


def test_events_gzipped_tsv(tmp_path: Path):
    with gzip.open(tmp_path / "log.tsv.gz", "wb") as f:
        RAW.write_csv(f, separator="\t")
    _check_round_trip(events.load(str(tmp_path / "log.tsv.gz"), MAP, ts_unit="s", separator="\t"))


def test_events_ts_units(tmp_path: Path):
    ms = [1_700_000_000_000, 1_700_000_000_500]
    cases = {
        "ms": ms, "s": [t / 1000 for t in ms], "us": [t * 1_000 for t in ms], "ns": [t * 1_000_000 for t in ms],
        "datetime": ["2023-11-14T22:13:20", "2023-11-14 22:13:20.500"],
    }
    for unit, ts in cases.items():
        pl.DataFrame({"user_id": [1, 2], "item_id": [1, 2], "ts": ts}).write_parquet(tmp_path / "e.parquet")
        assert events.load(str(tmp_path / "e.parquet"), ts_unit=unit)["ts"].to_list() == ms, unit
    zoned = pl.DataFrame({"user_id": [1], "item_id": [1], "ts": ["2023-11-15T00:13:20+02:00"]})
    zoned.write_csv(tmp_path / "z.csv")
    assert events.load(str(tmp_path / "z.csv"), ts_unit="datetime")["ts"].to_list() == ms[:1]
    native = pl.DataFrame({"user_id": [1], "item_id": [1]}).with_columns(ts=pl.from_epoch(pl.lit(ms[0]), "ms"))
    native.write_parquet(tmp_path / "d.parquet")
    assert events.load(str(tmp_path / "d.parquet"), ts_unit="datetime")["ts"].to_list() == ms[:1]


def test_events_missing_mapped_column(tmp_path: Path):
    RAW.write_csv(tmp_path / "log.csv")
    with pytest.raises(SchemaError, match="'clicks'.*'click'.*uid"):
        events.load(str(tmp_path / "log.csv"), {**MAP, "click": "clicks"}, ts_unit="s")


def test_events_errors(tmp_path: Path):
    with pytest.raises(SchemaError, match="nope.csv"):
        events.load(str(tmp_path / "nope.csv"))
    RAW.write_csv(tmp_path / "log.csv")
    with pytest.raises(SchemaError, match="unknown ts_unit 'hours'"):
        events.load(str(tmp_path / "log.csv"), MAP, ts_unit="hours")
    with pytest.raises(SchemaError, match="no 'ts' column"):
        events.load(str(tmp_path / "log.csv"))
    with pytest.raises(SchemaError, match="datetime"):
        events.load(str(tmp_path / "log.csv"), {"ts": "extra"})
    (tmp_path / "log.json").write_text("{}")
    with pytest.raises(SchemaError, match="unknown format"):
        events.load(str(tmp_path / "log.json"))
