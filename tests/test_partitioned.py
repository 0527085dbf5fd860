"""The partitioned (out-of-core) prep writes the same dataset as the in-memory prep, array by array."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
from conftest import CATEGORICAL, COHORTS, NUMERIC, TASKS, make_events
from polars.testing import assert_frame_equal

from data_prep.dataset import checksum, load_fitted, read_manifest
from data_prep.fit import FittedState
from data_prep.options import PrepOptions
from data_prep.partitioned import prepare_partitioned
from data_prep.prepare import prepare
from data_prep.schema import EventSpec
from data_prep.sources.synthetic import generate
from data_prep.split import SplitOptions
from mose.data.datamodule import EventDataModule

SAME_EXCEPT = {"partitions", "config", "config_hash"}


def write_parts(events: pl.DataFrame, folder, n_files: int) -> list:
    folder.mkdir()
    bounds = np.linspace(0, events.height, n_files + 1).astype(int)
    files = []
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        files.append(folder / f"part-{i:03d}.parquet")
        events.slice(a, b - a).write_parquet(files[-1])
    return files


def assert_same_fit(a: FittedState, b: FittedState) -> None:
    """The same fitted state: vocabularies (values, order, dtype), cohorts, codes, options, spec exactly; the
    merged moments up to float rounding."""
    for name in ("spec", "options", "cuts", "cohorts"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.vocabs.keys() == b.vocabs.keys() and a.pcode.keys() == b.pcode.keys()
    for col in a.vocabs:
        assert_frame_equal(a.vocabs[col], b.vocabs[col])  # values, order, dtypes and train counts
    for col in a.pcode:
        assert (a.pcode[col] is None and b.pcode[col] is None) or a.pcode[col].equals(b.pcode[col], check_dtypes=True)
    for stats in ("numeric_stats", "task_stats"):
        sa, sb = getattr(a, stats), getattr(b, stats)
        assert sa.keys() == sb.keys()
        for col in sa:
            assert sb[col] == pytest.approx(sa[col], rel=1e-9, abs=1e-12), col
    assert a.fingerprint() == b.fingerprint()


def assert_same_dataset(a, b) -> None:
    ma, mb = read_manifest(a), read_manifest(b)
    assert {k: v for k, v in ma.items() if k not in SAME_EXCEPT | {"numeric_stats", "task_stats"}} == \
        {k: v for k, v in mb.items() if k not in SAME_EXCEPT | {"numeric_stats", "task_stats"}}
    for key in ("numeric_stats", "task_stats"):  # merged moments: equal up to float rounding
        assert ma[key].keys() == mb[key].keys()
        for col, stats in ma[key].items():
            for s, v in stats.items():
                assert mb[key][col][s] == pytest.approx(v, rel=1e-9, abs=1e-12)
    assert_same_fit(load_fitted(a), load_fitted(b))
    assert pl.read_parquet(a / "users.parquet").equals(pl.read_parquet(b / "users.parquet"))
    for name in ma["arrays"]:
        x, y = np.load(a / f"{name}.npy"), np.load(b / f"{name}.npy")
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if name == "num":
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)


def test_partitioned_equals_in_memory_with_ties_string_ids_and_unseen(tmp_path):
    """conftest events: string items and devices, timestamp ties, users and items unseen in train."""
    events = make_events(seed=3)
    spec = EventSpec.from_config(TASKS, CATEGORICAL, NUMERIC, COHORTS)
    prep = PrepOptions(history_len=5, new_user_max_prior=5, stream_len=8, stream_overlap=2, min_count=2,
                       activity_buckets=(3, 10), personalization=("user_group", "duration"))
    files = write_parts(events, tmp_path / "raw", 3)
    reference = prepare(pl.read_parquet(files), spec, tmp_path / "memory", prep)
    timings: dict = {}
    out = prepare_partitioned(files, spec, tmp_path / "parts", prep, n_partitions=4, slice_rows=1_000,
                              timings=timings)
    assert_same_dataset(reference, out)
    assert read_manifest(out)["source_checksum"] == checksum(pl.read_parquet(files))
    assert read_manifest(out)["partitions"] == 4 and timings["total"] > 0
    assert not list(tmp_path.glob(".parts*")) and not list(tmp_path.glob(".parts.tmp-*"))  # temp folders gone
    # a later log transformed with that fit (fit_from): the same on both paths, every event in the test split
    later = write_parts(make_events(seed=4), tmp_path / "later", 2)
    memory = prepare(pl.read_parquet(later), spec, tmp_path / "later-memory", prep, fit_from=reference)
    assert_same_dataset(memory, prepare_partitioned(later, spec, tmp_path / "later-parts", prep, fit_from=reference,
                                                    n_partitions=3, slice_rows=1_000))
    assert read_manifest(memory)["splits"]["test"] == read_manifest(memory)["n_events"]
    # the user split (data.split.by=user): the hash of the user id alone, so partitions agree too
    # and new-user train events downsampled (data.prep.new_user_train_fraction): the same events dropped
    by_user, fewer = SplitOptions(by="user", seed=3), replace(prep, new_user_train_fraction=0.5)
    memory = prepare(pl.read_parquet(files), spec, tmp_path / "user-memory", fewer, split=by_user)
    assert_same_dataset(memory, prepare_partitioned(files, spec, tmp_path / "user-parts", fewer, n_partitions=4,
                                                    slice_rows=1_000, split=by_user))
    assert read_manifest(memory)["split"]["by"] == "user" and read_manifest(memory)["dropped_train"] > 0


def test_partitioned_synthetic_loads_in_the_datamodule(tmp_path):
    events = generate(n_events=30_000, n_users=300, n_items=200, seed=1)
    data = {"tasks": {"click": {"kind": "binary"}, "like": {"kind": "binary"},
                      "watch_time": {"kind": "regression", "transform": "log1p"}},
            "categorical": ["position", "device"], "numeric": ["days_since_signup"], "cohorts": ["user_group"]}
    spec = EventSpec.from_config(data["tasks"], data["categorical"], data["numeric"], data["cohorts"])
    prep = PrepOptions(min_count=5, activity_buckets=(5, 20, 100, 500), personalization=("user_group",))
    files = write_parts(events, tmp_path / "raw", 2)
    reference = prepare(pl.read_parquet(files), spec, tmp_path / "memory", prep)
    out = prepare_partitioned(files, spec, tmp_path / "parts", prep, rows_per_partition=7_000, slice_rows=9_000)
    assert read_manifest(out)["partitions"] == 5
    assert_same_dataset(reference, out)
    dm = EventDataModule({"dir": str(out)}, batch_size=64)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["hist_item"].shape == (64, 20) and batch["labels"].shape == (64, 3)
