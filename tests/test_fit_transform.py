"""Fit, then transform: events outside the prepared log (candidates, a history file, a later log) get the
arrays the prep gives the same events, from the saved fitted state alone."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import PREP, load
from polars.testing import assert_frame_equal

from data_prep.arrays import ARRAYS, STEP_FIELDS
from data_prep.dataset import load_fitted, read_manifest
from data_prep.fit import FittedState
from data_prep.history import HistoryLog, take
from data_prep.prepare import prepare
from data_prep.schema import SchemaError
from data_prep.sequences import sort_events
from data_prep.transform import transform
from data_prep.vocab import OOV

OPTIONS = replace(PREP, activity_buckets=(2, 8), personalization=("user_group", "duration"))
COMPARED = [n for n in ARRAYS if n not in ("split", "user_key")]  # candidates have no split or user key


@pytest.fixture(scope="module")
def root(events, spec, tmp_path_factory) -> Path:
    return prepare(events, spec, tmp_path_factory.mktemp("fit") / "d", OPTIONS)


def test_candidates_get_the_prepared_arrays_of_the_same_events(events, root):
    """Every logged event scored as a candidate (no labels, any order): its arrays are its prepared row."""
    fitted = load_fitted(root)
    ordered = sort_events(events).drop("_row")  # prepared row order
    shuffled = ordered.with_row_index("_r").sample(fraction=1.0, shuffle=True, seed=1)
    got = transform(shuffled.drop("_r", "click", "like", "watch_time"), fitted, HistoryLog.from_prepared(root))
    rows = shuffled["_r"].to_numpy()
    for name in COMPARED:
        want = load(root, name)[rows]
        if name == "labels":
            want = np.zeros_like(want)  # candidates carry none
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    assert (got["split"] == 2).all() and (load(root, "n_prior")[rows] > 0).any()


def test_history_file_and_a_later_log_with_the_same_fit(events, spec, tmp_path):
    """Log A = events before t1; a history file holds the events in [t0, t_last) (those before t1 are already in A,
    and dropped); candidates are the events at t_last. B = all events transformed with A's fit (fit_from):
    every candidate's arrays, and every merged history row's step fields, equal B's rows."""
    ts = np.sort(events["ts"].unique().to_numpy())
    t0, t1, t_last = ts[len(ts) // 2], ts[len(ts) * 3 // 4], ts[-1]
    a = prepare(events.filter(pl.col("ts") < t1), spec, tmp_path / "a", OPTIONS)
    b = prepare(events, spec, tmp_path / "b", OPTIONS, fit_from=a)
    mb = read_manifest(b)
    assert mb["splits"]["test"] == events.height and mb["fingerprint"] == read_manifest(a)["fingerprint"]
    assert (load(b, "user") == OOV).any()  # users A's fit never saw map to the unknown row

    fitted = load_fitted(a)
    history = events.filter((pl.col("ts") >= t0) & (pl.col("ts") < t_last))
    log = HistoryLog.from_prepared(a).with_recent(history, fitted)
    ordered = sort_events(events).drop("_row")  # B's row order
    is_cand = (ordered["ts"] == t_last).to_numpy()
    got = transform(ordered.filter(pl.col("ts") == t_last), fitted, log)
    for name in COMPARED:
        np.testing.assert_array_equal(got[name], load(b, name)[is_cand], err_msg=name)
    assert (got["n_prior"] > 0).any()

    user_offsets = load(b, "user_offsets")
    users = pl.read_parquet(b / "users.parquet")["user_id"]
    start, end = log.ranges(users)
    for u in np.flatnonzero(end > start):  # each user's merged history = its B rows before t_last
        rows = np.arange(user_offsets[u], user_offsets[u + 1])
        rows = rows[load(b, "ts")[rows] < t_last]
        merged = np.arange(start[u], end[u])
        assert len(merged) == len(rows), u
        for name in STEP_FIELDS:
            if name != "user_key":
                np.testing.assert_array_equal(take(log.fields[name], merged), load(b, name)[rows], err_msg=name)


def test_fitted_state_round_trip_and_old_formats(root, tmp_path):
    fitted = load_fitted(root)
    again = FittedState.from_dir(fitted.to_dir(tmp_path / "fit"))
    assert again.fingerprint() == fitted.fingerprint() and again.cohorts == fitted.cohorts
    for col, vocab in fitted.vocabs.items():
        assert_frame_equal(again.vocabs[col], vocab)
    meta = json.loads((root / "fit" / "fit.json").read_text())
    assert meta["vocabs"]["item_id"]["file"] == "vocab/item_id.parquet" and meta["pcode"]["duration"] == "numeric"

    old = tmp_path / "old"
    shutil.copytree(root, old)
    manifest = read_manifest(old)
    (old / "manifest.json").write_text(json.dumps({**manifest, "format": 2}))
    with pytest.raises(SchemaError, match="format 2.*re-prepare"):
        load_fitted(old)
