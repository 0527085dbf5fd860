"""``mose-prep`` on what users bring (issue 13): two preps of one dataset at once, splits that come out
empty or one-class, labels listed among the inputs, bad task weights, labels beyond float32 and
error rows that are the file's rows. Each runs the real console script and checks the exit code,
the ``error:`` line and what is left in the output folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import error_line, make_events, prepared_dir

from data_prep.dataset import read_manifest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1"}
TASKS = "{click: {kind: binary}, like: {kind: binary}}"


def prep_command(*args: str) -> list[str]:
    exe = shutil.which("mose-prep")
    return [*([exe] if exe else [sys.executable, "-m", "data_prep.cli"]), *args]


def prep_args(log: Path, tmp: Path, *extra: str, run: str = "run", tasks: str = TASKS) -> list[str]:
    return ["data=events", f"data.source.path={log}", f"data.tasks={tasks}", "data.prep.min_count=1",
            f"paths.data_dir={tmp / 'data'}", f"hydra.run.dir={tmp / run}", *extra]


def run_prep(log: Path, tmp: Path, *extra: str, tasks: str = TASKS) -> subprocess.CompletedProcess:
    return subprocess.run(prep_command(*prep_args(log, tmp, *extra, tasks=tasks)), cwd=tmp, env=ENV, capture_output=True,
                          text=True, timeout=120, check=False)


def assert_complete(root: Path) -> dict:
    """A whole dataset at ``root`` (every array of the manifest, with its shape) and no temp folders beside it."""
    m = read_manifest(root)
    for name, meta in m["arrays"].items():
        assert list(np.load(root / f"{name}.npy", mmap_mode="r").shape) == meta["shape"], name
    leftovers = [p.name for p in root.parent.iterdir() if p.name.startswith(f".{root.name}.") and not
                 p.name.endswith(".lock")]
    assert not leftovers, leftovers
    return m


@pytest.fixture()
def log(tmp_path) -> Path:
    path = tmp_path / "log.csv"
    make_events(seed=1, n_users=40).write_csv(path)
    return path


def test_two_mose_preps_at_once_make_one_dataset(log, tmp_path):
    """Started together on one data dir (one of them with force=true): both succeed, one whole dataset."""
    procs = [subprocess.Popen(prep_command(*prep_args(log, tmp_path, *extra, run=f"run{i}")), cwd=tmp_path, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, extra in enumerate([(), ("force=true",)])]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    m = assert_complete(prepared_dir(tmp_path / "data", "events"))
    assert m["n_events"] == pl.read_csv(log).height


def test_two_partitioned_preps_at_once_make_one_dataset(tmp_path):
    """``python -m data_prep.partitioned`` takes the same dataset lock: two at once both finish, one dataset."""
    raw = tmp_path / "raw.parquet"
    make_events(seed=2, n_users=40).write_parquet(raw)
    config = tmp_path / "data.yaml"
    config.write_text(yaml.safe_dump({"tasks": {"click": {"kind": "binary"}}, "categorical": ["device"],
                                      "prep": {"history_len": 4, "min_count": 1}}))
    out = tmp_path / "data" / "events"
    cmd = [sys.executable, "-m", "data_prep.partitioned", str(raw), str(out), "--data", str(config),
           "--rows-per-partition", "200"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env={**ENV, "PYTHONPATH": str(Path(__file__).parents[1])},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all("total" in json.loads(o.strip().splitlines()[-1]) for o, _ in outs)
    assert assert_complete(out)["partitions"] > 1


def test_degenerate_tasks_warn_on_stderr(tmp_path):
    """One class in train: a warning naming the task; no positives in val: reported. The prep succeeds."""
    events = make_events(seed=1, n_users=40)
    late = pl.col("ts") >= pl.col("ts").quantile(0.8, "lower")  # val and test: the default cuts
    events.with_columns(late.cast(pl.Int64).alias("click"), (~late & (pl.col("like") == 1)).cast(pl.Int64)
                        .alias("like")).write_csv(tmp_path / "log.csv")
    proc = run_prep(tmp_path / "log.csv", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "task 'click' has one class in the train split (every label is 0" in proc.stderr, proc.stderr
    assert "task 'like' has no positive labels in the val split" in proc.stderr, proc.stderr
    assert "prepared" in proc.stdout and "WARNING" not in proc.stdout  # logs on stderr, results on stdout
    assert_complete(prepared_dir(tmp_path / "data", "events"))


def _ties_at_the_end(df: pl.DataFrame) -> pl.DataFrame:
    """40% of the events at the last timestamp: both quantile cuts land on it, val gets no event."""
    return df.with_columns(pl.when(pl.int_range(pl.len()) % 5 < 2).then(pl.col("ts").max()).otherwise(pl.col("ts"))
                           .alias("ts"))


def _null_user_at_file_row_7(df: pl.DataFrame) -> pl.DataFrame:
    """Row 7 of the file (1-based) has no user; the loader sorts by time first, so positions differ."""
    return df.sort("ts", descending=True).with_columns(
        pl.when(pl.int_range(pl.len()) == 6).then(None).otherwise(pl.col("user_id")).alias("user_id"))


def _huge_watch_time(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(pl.when(pl.int_range(pl.len()) == 4).then(1e39).otherwise(pl.col("watch_time"))
                           .alias("watch_time"))


WATCH = ["tasks={click: {kind: binary}, watch_time: {kind: regression}}"]
REFUSED = {  # case -> (log change, overrides (tasks=: the data.tasks override), words of the error line)
    "val split empty": (_ties_at_the_end, [], ["the val split empty", "val_start=", "test_start=", "val 0,",
                                               "data.prep.val_frac"]),
    "file rows": (_null_user_at_file_row_7, [], ["'user_id'", "1 null", "row 7: None (1-based data rows of ",
                                                "log.csv)"]),
    "label beyond float32": (_huge_watch_time, WATCH, ["'watch_time'", "float32", "row 5: 1e+39",
                                                       "(1-based data rows of "]),
    "label as a feature": (None, ["data.numeric=[duration, click]"], ["data.numeric lists 'click'",
                                                                       "data.tasks.click", "leaks"]),
    "label's file column as a cohort": (lambda df: df.rename({"like": "liked"}),
                                        ["data.source.columns={like: liked}", "data.cohorts=[liked]"],
                                        ["data.cohorts lists 'liked'", "data.source.columns.like=liked"]),
    "negative weight": (None, ["tasks={click: {kind: binary, weight: -1}}"],
                        ["data.tasks.click.weight=-1", "finite number >= 0"]),
    "nan weight": (None, ["tasks={click: {kind: binary, weight: nan}}"], ["data.tasks.click.weight=nan"]),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_prep_refuses_with_error_naming_it(case, tmp_path):
    change, overrides, words = REFUSED[case]
    events = make_events(seed=1, n_users=40)
    (change(events) if change else events).write_csv(tmp_path / "log.csv")
    tasks = next((o.removeprefix("tasks=") for o in overrides if o.startswith("tasks=")), TASKS)
    line = error_line(run_prep(tmp_path / "log.csv", tmp_path, *[o for o in overrides if not o.startswith("tasks=")],
                               tasks=tasks))
    assert all(w in line for w in words), line
    assert not list((tmp_path / "data").glob("events*"))  # nothing written, not even half
    assert not [p.name for p in (tmp_path / "data").glob(".events*") if not p.name.endswith(".lock")]


def test_partitioned_prep_names_the_raw_file_and_row(tmp_path):
    """The partitioned prep validates sorted partitions; its errors still name the raw file's own rows."""
    from data_prep.partitioned import prepare_partitioned
    from data_prep.schema import EventSpec, SchemaError

    events = make_events(seed=2, n_users=40).with_columns(pl.col("click").cast(pl.Float64))
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    events.head(300).write_parquet(first)
    events.slice(300).with_columns(pl.when(pl.int_range(pl.len()) == 2).then(7.0).otherwise(pl.col("click"))
                                   .alias("click")).write_parquet(second)
    with pytest.raises(SchemaError, match=r"'click' must hold 0/1: row 3: 7\.0 \(1-based data rows of .*b\.parquet\)"):
        prepare_partitioned([first, second], EventSpec.from_config({"click": {"kind": "binary"}}), tmp_path / "out",
                            n_partitions=3)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
