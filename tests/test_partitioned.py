"""The partitioned (out-of-core) prep writes the same dataset as the in-memory prep, array by array."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

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


def assert_same_dataset(a, b, skip: frozenset = frozenset()) -> None:
    ma, mb = read_manifest(a), read_manifest(b)
    skip = SAME_EXCEPT | skip | {"numeric_stats", "task_stats"}
    assert {k: v for k, v in ma.items() if k not in skip} == {k: v for k, v in mb.items() if k not in skip}
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


@pytest.mark.parametrize("engine", ["local", "processes", "ray"])
def test_partitioned_equals_in_memory_with_ties_string_ids_and_unseen(tmp_path, engine, request):
    """conftest events: string items and devices, timestamp ties, users and items unseen in train; on every
    engine (``processes``: 2 workers; ``ray``: the shared local instance of 2 CPUs), under the time split, a later
    log transformed with its fit, and the user split with new-user train events downsampled (the split column is
    computed once by the driver and shipped to every partition task)."""
    events = make_events(seed=3)
    spec = EventSpec.from_config(TASKS, CATEGORICAL, NUMERIC, COHORTS)
    prep = PrepOptions(history_len=5, new_user_max_prior=5, stream_len=8, stream_overlap=2, min_count=2,
                       activity_buckets=(3, 10), personalization=("user_group", "duration"), engine=engine,
                       workers=2)
    if engine == "ray":
        request.getfixturevalue("ray_local")
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


def test_file_split_on_the_processes_engine_equals_the_in_memory_prep(tmp_path):
    """``data.split.by=file`` through ``ensure_prepared``: each part read with the source, its users' events spread
    over the three files (histories cross them); ``engine=processes`` (2 workers, 3 partitions) writes the arrays
    of the in-memory prep, and new-user train events downsampled alike (``new_user_train_fraction=0.5``)."""
    from data_prep.build import ensure_prepared

    events = make_events(seed=5)
    paths = {}
    for code, name in enumerate(("train", "val", "test")):  # train the first 60% of each user's events, then val, test
        paths[name] = str(tmp_path / f"{name}.parquet")
        rank = (pl.col("ts").rank("ordinal").over("user_id") - 1) / pl.len().over("user_id")
        part = pl.when(rank < 0.6).then(0).when(rank < 0.8).then(1).otherwise(2)
        events.filter(part == code).write_parquet(paths[name])
    data = {"source": {"_target_": "data_prep.sources.events.load", "path": "???"},
            "tasks": {"click": {"kind": "binary"}}, "categorical": ["device"], "split": {"by": "file", "files": paths},
            "prep": {"history_len": 5, "min_count": 1, "new_user_max_prior": 5, "new_user_train_fraction": 0.5}}
    memory = ensure_prepared({**data, "dir": str(tmp_path / "memory")})
    parts = ensure_prepared({**data, "dir": str(tmp_path / "parts"),
                             "prep": {**data["prep"], "engine": "processes", "workers": 2, "rows_per_partition": 1500}})
    m = read_manifest(parts)
    assert m["partitions"] == 3 and m["split"]["by"] == "file" and m["dropped_train"] > 0
    assert m["splits"]["val"] > 0 and m["splits"]["test"] > 0
    assert_same_dataset(memory, parts)


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


def events_data(path, **prep) -> dict:
    """A data config of the generic events source at ``path`` with the synthetic log's tasks and features."""
    return {"name": "events", "dir": None, "source": {"_target_": "data_prep.sources.events.load", "path": str(path),
                                                      "columns": None, "ts_unit": "ms"},
            "tasks": {"click": {"kind": "binary"}, "like": {"kind": "binary"},
                      "watch_time": {"kind": "regression", "transform": "log1p"}},
            "categorical": ["position", "device"], "numeric": [], "cohorts": ["user_group"],
            "prep": {"min_count": 5, "activity_buckets": [5, 20, 100], **prep}}


def test_ray_engine_on_a_hive_partitioned_folder_equals_the_in_memory_prep(tmp_path, ray_local):
    """200k events as a hive-partitioned Parquet folder (``shard=<k>/``): ``ensure_prepared`` with
    ``data.prep.engine=ray`` scans it lazily into 4 partitions on the local Ray instance and writes the arrays of
    the in-memory prep (``engine=local``) of the same folder, under the same config hash; a glob of its files
    scans to the same events."""
    from data_prep.build import ensure_prepared
    from data_prep.sources.events import load, scan

    events = generate(n_events=200_000, n_users=1_000, n_items=500, seed=2).with_columns(
        (pl.col("user_id") % 3).alias("shard"))
    events.write_parquet(tmp_path / "log", partition_by="shard")
    assert sorted(p.name for p in (tmp_path / "log").iterdir()) == ["shard=0", "shard=1", "shard=2"]
    folder = scan(tmp_path / "log").collect()
    assert folder.height == 200_000 and folder["shard"].to_list() == sorted(folder["shard"].to_list())
    assert_frame_equal(scan(f"{tmp_path}/log/*/*.parquet").collect(), folder)  # the hive key read from the paths
    assert_frame_equal(scan(f"file://{tmp_path}/log/").collect(), folder)  # a URL: Polars' object-store reader
    seconds = scan(tmp_path / "log", columns={"watch": "watch_time"}, ts_unit="s").collect()  # mapped, converted
    assert "watch_time" not in seconds.columns and (seconds["watch"] == folder["watch_time"]).all()
    assert (seconds["ts"] == folder["ts"] * 1000).all()
    loaded = load(str(tmp_path / "log"))
    assert_frame_equal(loaded.drop("_file_row", "_file"), folder.sort("ts", maintain_order=True))
    assert loaded.filter(pl.col("_file_row") == 1).height == 3  # one first row per file
    memory = ensure_prepared({**events_data(tmp_path / "log"), "dir": str(tmp_path / "memory")})
    out = ensure_prepared({**events_data(tmp_path / "log", engine="ray", rows_per_partition=60_000),
                           "dir": str(tmp_path / "ray")})
    m = read_manifest(out)
    assert m["partitions"] == 4 and m["n_events"] == 200_000
    assert m["config_hash"] == read_manifest(memory)["config_hash"]  # how the prep ran is not what it wrote
    # source_checksum hashes the rows as read: the in-memory load sorts them by ts, the lazy scan keeps file order
    assert_same_dataset(memory, out, skip=frozenset({"source_checksum"}))


def test_mose_prep_engine_option(tmp_path):
    """``mose-prep data.prep.engine=processes`` takes the partitioned prep (2 workers) and writes what the in-memory
    ``mose-prep`` writes; an unknown engine stops with an error naming the key."""
    import os
    import shutil
    import subprocess
    import sys

    exe = shutil.which("mose-prep")
    cmd = [exe] if exe else [sys.executable, "-m", "data_prep.cli"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    tiny = ["data.source.n_events=4000", "data.source.n_users=80", "data.source.n_items=50"]

    def prep(name: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cmd, *tiny, *extra, f"data.dir={tmp_path / name}", f"hydra.run.dir={tmp_path / 'h'}"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)

    bad = prep("bad", "data.prep.engine=spark")
    assert bad.returncode == 2 and "error: data.prep.engine=spark: must be one of local, processes, ray" in bad.stderr
    assert prep("memory").returncode == 0
    proc = prep("processes", "data.prep.engine=processes", "data.prep.workers=2", "data.prep.rows_per_partition=1500")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_manifest(tmp_path / "processes")["partitions"] == 3 and "partitions" not in read_manifest(tmp_path / "memory")
    assert_same_dataset(tmp_path / "memory", tmp_path / "processes")


def test_partitioned_equals_in_memory_with_carried_states(tmp_path):
    """data.prep.carry_state: both paths cut the chunks without overlap, the same way."""
    events = make_events(seed=5)
    spec = EventSpec.from_config(TASKS, CATEGORICAL, NUMERIC, COHORTS)
    prep = PrepOptions(history_len=5, stream_len=8, stream_overlap=2, carry_state=True)
    files = write_parts(events, tmp_path / "raw", 2)
    reference = prepare(pl.read_parquet(files), spec, tmp_path / "memory", prep)
    assert_same_dataset(reference, prepare_partitioned(files, spec, tmp_path / "parts", prep, n_partitions=3,
                                                       slice_rows=1_000))
    rows = np.load(reference / "stream_rows.npy")
    assert read_manifest(reference)["stream_overlap"] == 0 and (rows[1:, 0] > rows[:-1, -1])[rows[:-1, -1] >= 0].all()
