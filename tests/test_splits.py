"""data.split.by = time | user | file, and the seen_in_train cohort every dataset has."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import PREP, load, make_events

from data_prep.build import ensure_prepared
from data_prep.dataset import load_fitted, read_manifest
from data_prep.prepare import prepare
from data_prep.schema import SchemaError
from data_prep.split import SplitOptions, user_split_expr
from data_prep.vocab import OOV
from mose.config_checks import ConfigError, check_data

USER_SPLIT = SplitOptions(by="user", seed=0)


def seen_code(manifest: dict, root) -> np.ndarray:
    """Each event's seen_in_train value name."""
    j = list(manifest["cohorts"]).index("seen_in_train")
    names = np.array(manifest["cohorts"]["seen_in_train"])
    return names[load(root, "cohorts")[:, j]]


@pytest.fixture(scope="module")
def by_user(events, spec, tmp_path_factory):
    root = prepare(events, spec, tmp_path_factory.mktemp("split") / "user", PREP, split=USER_SPLIT)
    return root, read_manifest(root)


def test_user_split_puts_each_user_in_one_part_and_fits_on_train_users_only(by_user, events):
    root, manifest = by_user
    split, user_key, user = load(root, "split"), load(root, "user_key"), load(root, "user")
    parts = pl.DataFrame({"k": user_key, "s": split}).group_by("k").agg(pl.col("s").n_unique())
    assert parts["s"].max() == 1  # a user's events all in one part
    n_users = events["user_id"].n_unique()
    shares = pl.DataFrame({"k": user_key, "s": split}).unique("k")["s"].value_counts().sort("s")["count"].to_numpy()
    assert shares.sum() == n_users and abs(shares[0] / n_users - 0.8) < 0.08  # ~80 / 10 / 10 % of the users
    assert (user[split > 0] == OOV).all() and (user[split == 0] != OOV).all()  # the user vocabulary is train's
    assert load_fitted(root).vocabs["user_id"].height == shares[0]
    seen = seen_code(manifest, root)
    assert (seen[split == 0] == "seen").all() and (seen[split > 0] == "unseen").all()
    # histories still come from the user's own past in the whole log: n_prior counts every earlier event
    ts = load(root, "ts")
    for k in np.unique(user_key[split == 2])[:5]:
        rows = user_key == k
        expected = [(ts[rows] < t).sum() for t in ts[rows]]
        np.testing.assert_array_equal(load(root, "n_prior")[rows], expected)
    assert manifest["split"] == {"by": "user", "seed": 0, "files": None, "path_key": "path"}


def test_user_split_hash_is_the_users_alone_and_seeded(events):
    a = events.select("user_id", user_split_expr(0.1, 0.1, 0))
    shuffled = events.sample(fraction=1.0, shuffle=True, seed=9).select("user_id", user_split_expr(0.1, 0.1, 0))
    assert a.unique().sort("user_id").equals(shuffled.unique().sort("user_id"))  # row order does not matter
    other = events.select("user_id", user_split_expr(0.1, 0.1, 1)).unique().sort("user_id")
    assert (other["split"] != a.unique().sort("user_id")["split"]).sum() > 10  # another seed, other users


def test_time_split_seen_in_train_is_whether_the_user_has_train_events(prepared):
    root, manifest = prepared
    split, user_key = load(root, "split"), load(root, "user_key")
    has_train = pl.DataFrame({"k": user_key, "s": split}).with_columns(
        (pl.col("s") == 0).any().over("k").alias("t"))["t"].to_numpy()
    seen = seen_code(manifest, root)
    np.testing.assert_array_equal(seen == "seen", has_train)
    assert (~has_train[split == 2]).sum() > 0 and has_train[split == 2].sum() > 0  # both cohorts in test
    assert manifest["cohorts"]["seen_in_train"] == ["seen", "unseen"]


def test_file_split_reads_each_part_with_the_source(tmp_path):
    events = make_events(seed=5)
    users = events["user_id"].unique().sort()
    part = {u: i % 3 for i, u in enumerate(users.to_list())}
    paths = {}
    for code, name in enumerate(("train", "val", "test")):
        paths[name] = str(tmp_path / f"{name}.parquet")
        events.filter(pl.col("user_id").replace_strict(part) == code).write_parquet(paths[name])
    data = {"dir": str(tmp_path / "prepared"), "source": {"_target_": "data_prep.sources.events.load", "path": "???"},
            "tasks": {"click": {"kind": "binary"}}, "categorical": ["device"], "split": {"by": "file", "files": paths},
            "prep": {"history_len": 5, "min_count": 1}}
    root = ensure_prepared(data)
    manifest = read_manifest(root)
    ids = pl.read_parquet(root / "users.parquet")["user_id"].to_numpy()
    split = load(root, "split")
    expected = np.array([part[u] for u in ids[load(root, "user_key")]])
    np.testing.assert_array_equal(split, expected)
    assert manifest["splits"] == {n: int((expected == c).sum()) for c, n in enumerate(("train", "val", "test"))}
    assert (seen_code(manifest, root)[split > 0] == "unseen").all()


@pytest.mark.parametrize(("split", "key"), [
    ({"by": "random"}, "data.split.by=random"),
    ({"by": "user", "seed": -1}, "data.split.seed=-1"),
    ({"by": "file"}, "data.split.files.train is required"),
    ({"by": "file", "files": {"train": "a", "val": "b", "test": "c", "extra": "d"}}, "data.split.files.extra"),
    ({"by": "time", "files": {"train": "a"}}, "data.split.files is set but data.split.by=time"),
    ({"by": "user", "fraction": 0.5}, "data.split.fraction: unknown key"),
])
def test_bad_split_configs_name_the_key(split, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("=", "=")):
        check_data({"tasks": {"click": {"kind": "binary"}}, "split": split})


def test_user_split_with_too_few_users_is_refused(events, spec, tmp_path):
    few = events.filter(pl.col("user_id").is_in(events["user_id"].unique().sort()[:3].to_list()))
    with pytest.raises(SchemaError, match="the user split leaves the .* empty"):
        prepare(few, spec, tmp_path / "few", PREP, split=USER_SPLIT)


def test_new_user_train_fraction_drops_new_user_train_events_but_keeps_their_history(events, spec, prepared,
                                                                                     tmp_path):
    from dataclasses import replace

    from data_prep.split import DROPPED
    from mose.data.datasets import EventSplit

    full_root, full = prepared
    root = prepare(events, spec, tmp_path / "fewer", replace(PREP, new_user_train_fraction=0.25))
    split, n_prior, ref = load(root, "split"), load(root, "n_prior"), load(full_root, "split")
    new_train = (ref == 0) & (n_prior < PREP.new_user_max_prior)
    dropped = split == DROPPED
    assert (dropped <= new_train).all() and abs(dropped.sum() / new_train.sum() - 0.75) < 0.05
    np.testing.assert_array_equal(split[~dropped], ref[~dropped])  # nothing else moves
    for name in ("n_prior", "prior_bucket"):  # dropped events still count as history
        np.testing.assert_array_equal(load(root, name), load(full_root, name))
    # (item codes differ: the vocabulary is fitted without the dropped events; the history slots are the same)
    np.testing.assert_array_equal(load(root, "hist_item") > 0, load(full_root, "hist_item") > 0)
    manifest = read_manifest(root)
    assert manifest["dropped_train"] == dropped.sum()
    assert manifest["splits"]["train"] == full["splits"]["train"] - dropped.sum()
    assert len(EventSplit(root, "train")) == manifest["splits"]["train"]
    with pytest.raises(ConfigError, match=r"data\.prep\.new_user_train_fraction=1\.5"):
        check_data({"tasks": {"click": {"kind": "binary"}}, "prep": {"new_user_train_fraction": 1.5}})


def test_synthetic_default_new_users_sign_up_over_the_window_and_the_code_tells_them_apart(tmp_path):
    """conf/data/synthetic.yaml's generator settings, fewer events: ~6% new-user events, in train and test
    alike, and the days_since_signup code separates them from regulars with few earlier events in the log."""
    import yaml

    from data_prep.paths import CONF_DIR
    from data_prep.sources.synthetic import generate

    conf = yaml.safe_load((Path(CONF_DIR) / "data" / "synthetic.yaml").read_text())
    source = {k: v for k, v in conf["source"].items() if k != "_target_"}
    events = generate(**{**source, "n_events": 60_000, "n_users": 300})
    share = (events["user_group"] == "new").mean()
    assert 0.03 < share < 0.09
    ts = events["ts"]
    first_fifth = events.filter(ts < ts.quantile(0.2))
    assert (first_fifth["user_group"] == "new").sum() > 0  # truly new users early in the log (train) too
    assert conf["prep"]["personalization"] == ["days_since_signup"]
    regular_early = events.filter(pl.col("user_group") == "regular").group_by("user_id").agg(
        pl.col("days_since_signup").min())
    new = events.filter(pl.col("user_group") == "new")
    assert regular_early["days_since_signup"].min() >= 30 and new["days_since_signup"].max() < 30
