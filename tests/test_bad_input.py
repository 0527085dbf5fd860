"""Bad event logs, tried systematically (hypothesis): each stops with a SchemaError naming the column
(and rows), or is handled as documented in docs/reliability.md; ``mose-prep`` prints ``error: ...``
and exits 2, never only a Polars / torch traceback."""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_prep.build import ensure_prepared, event_spec, load_events
from data_prep.dataset import read_manifest
from data_prep.schema import SchemaError, drop_duplicates, validate

T0 = 1_700_000_000_000
COLUMNS = {"user_id": "uid", "item_id": "iid", "ts": "time", "click": "clicked"}  # canonical -> file
TASKS = {"click": {"kind": "binary"}, "watch": {"kind": "regression", "transform": "log1p"}}


def data_config(path: Path, data_dir: Path, ts_unit: str = "ms", **source) -> dict:
    return {
        "name": "events", "dir": str(data_dir / "events"),
        "source": {"_target_": "data_prep.sources.events.load", "path": str(path), "columns": dict(COLUMNS),
                   "ts_unit": ts_unit, **source},
        "tasks": TASKS, "categorical": ["device"], "numeric": ["duration"], "cohorts": ["group"],
        "prep": {"history_len": 3, "min_count": 1, "val_frac": 0.2, "test_frac": 0.2, "new_user_max_prior": 2,
                 "stream_len": 4, "stream_overlap": 1},
    }


def load_validated(data: dict) -> pl.DataFrame:
    """What ``ensure_prepared`` does before it writes anything: load, drop exact duplicates, validate."""
    events, _ = drop_duplicates(load_events(data["source"]))
    validate(events, event_spec(data))
    return events


@st.composite
def event_logs(draw, min_rows: int = 6) -> pl.DataFrame:
    """A valid raw log (file column names), ``n`` rows, a few users with several events each."""
    n = draw(st.integers(min_rows, 30))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    return pl.DataFrame({
        "uid": rng.integers(1, 5, n), "iid": rng.integers(100, 110, n),
        "time": T0 + rng.integers(0, 1000, n) * 60_000,
        "device": rng.choice(["ios", "web"], n), "duration": rng.gamma(2.0, 3.0, n),
        "clicked": rng.integers(0, 2, n), "watch": rng.gamma(1.0, 2.0, n), "group": rng.choice(["a", "b"], n),
    })


def with_value(df: pl.DataFrame, col: str, row: int, value, dtype=None) -> pl.DataFrame:
    values = df[col].to_list()
    values[row] = value
    return df.with_columns(pl.Series(col, values, dtype=dtype or df.schema[col], strict=False))


# corruption -> (apply(df, row) -> df, the file format, words the error must contain)
CORRUPTIONS = {
    "missing column": (lambda df, r: df.drop("watch"), "csv", ["'watch'", "data.tasks.watch"]),
    "misnamed column": (lambda df, r: df.rename({"clicked": "click_"}), "csv", ["'clicked'", "not found"]),
    "missing cohort column": (lambda df, r: df.drop("group"), "parquet", ["'group'", "data.cohorts"]),
    "label as text": (lambda df, r: df.with_columns(pl.col("clicked").cast(pl.String) + "x"), "csv", ["'click'"]),
    "ts as text": (lambda df, r: df.with_columns(pl.lit("noon").alias("time")), "csv", ["'time'"]),
    "numeric as text": (lambda df, r: df.with_columns(pl.col("duration").cast(pl.String) + "s"), "csv",
                        ["'duration'"]),
    "float ids": (lambda df, r: df.with_columns(pl.col("uid") + 0.5), "parquet", ["'user_id'", "integer or string"]),
    "null user": (lambda df, r: with_value(df, "uid", r, None), "parquet", ["'user_id'", "row"]),
    "null item": (lambda df, r: with_value(df, "iid", r, None), "csv", ["'item_id'", "row"]),
    "null label": (lambda df, r: with_value(df, "clicked", r, None), "csv", ["'click'", "row"]),
    "null ts": (lambda df, r: with_value(df, "time", r, None), "parquet", ["'ts'", "row"]),
    "negative ts": (lambda df, r: with_value(df, "time", r, -5), "csv", ["'ts'", "negative", "row"]),
    "far-future ts": (lambda df, r: with_value(df, "time", r, T0 * 1_000_000), "parquet", ["'ts'", "2200", "row"]),
    "nan feature": (lambda df, r: with_value(df, "duration", r, math.nan), "parquet", ["'duration'", "row"]),
    "inf feature": (lambda df, r: with_value(df, "duration", r, math.inf), "csv", ["'duration'", "row"]),
    "binary label 3": (lambda df, r: with_value(df, "clicked", r, 3), "csv", ["'click'", "0/1", "row"]),
    "negative log1p target": (lambda df, r: with_value(df, "watch", r, -1.0), "parquet", ["'watch'", "row"]),
    "inf target": (lambda df, r: with_value(df, "watch", r, math.inf), "parquet", ["'watch'", "row"]),
    "header only": (lambda df, r: df.clear(), "csv", ["empty"]),
}


def write(df: pl.DataFrame, path: Path, fmt: str) -> Path:
    path = path.with_suffix(f".{fmt}")
    df.write_csv(path) if fmt == "csv" else df.write_parquet(path)
    return path


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(log=event_logs(), kind=st.sampled_from(sorted(CORRUPTIONS)), row=st.integers(0, 5))
def test_corrupt_logs_raise_schema_error_naming_the_problem(log, kind, row):
    corrupt, fmt, words = CORRUPTIONS[kind]
    with tempfile.TemporaryDirectory() as tmp:
        path = write(corrupt(log, row), Path(tmp) / "log", fmt)
        with pytest.raises(SchemaError) as err:
            load_validated(data_config(path, Path(tmp)))
    msg = str(err.value)
    for word in words:
        assert word in msg, (kind, msg)
    if "row" in words:  # the file's 1-based data row, whatever the loader's sort and dedup did
        assert f"row {row + 1}: " in msg and "(1-based data rows of " in msg, msg
    assert len(msg) < 1500 and "Traceback" not in msg


@SETTINGS
@given(log=event_logs(), cut=st.floats(0.05, 0.95), fmt=st.sampled_from(["csv", "parquet"]))
def test_truncated_file_is_an_error_or_fewer_valid_rows(log, cut, fmt):
    """A file cut at any byte: a clear SchemaError, or (cut at a line end) a valid shorter log."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write(log, Path(tmp) / "log", fmt)
        raw = path.read_bytes()
        path.write_bytes(raw[: max(1, int(len(raw) * cut))])
        try:
            events = load_validated(data_config(path, Path(tmp)))
        except SchemaError as err:
            msg = str(err)
            assert str(path) in msg or "'" in msg or "empty" in msg, msg
        else:
            assert fmt == "csv" and 0 < events.height <= log.height


@SETTINGS
@given(log=event_logs(), row=st.integers(0, 5))
def test_non_utf8_file(log, row, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("utf8")
    path = write(with_value(log, "device", row, "ios"), tmp / "log", "csv")
    path.write_bytes(path.read_bytes().replace(b"ios", b"i\xffos", 1))
    with pytest.raises(SchemaError, match="UTF-8"):
        load_validated(data_config(path, tmp))
    # documented way out: read with invalid bytes replaced
    assert load_validated(data_config(path, tmp, encoding="utf8-lossy")).height == log.height


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=event_logs(), n_dup=st.integers(1, 5), seed=st.integers(0, 100))
def test_duplicates_dropped_and_order_irrelevant(log, n_dup, seed, tmp_path_factory):
    """Exact duplicate rows are dropped (count logged); shuffled rows give the same dataset."""
    # events of one user at one timestamp keep their input order (documented), so only logs
    # without such ties can be independent of row order
    log = log.unique(subset=["uid", "time"], maintain_order=True)
    tmp = tmp_path_factory.mktemp("dup")
    clean = write(log, tmp / "clean", "parquet")
    messy = pl.concat([log, log.sample(n_dup, with_replacement=True, seed=seed)]).sample(
        fraction=1.0, shuffle=True, seed=seed)
    messy_path = write(messy, tmp / "messy", "parquet")
    a = ensure_prepared(data_config(clean, tmp / "a"))
    records, logger = Records(), logging.getLogger("data_prep.build")
    logger.addHandler(records)
    try:
        b = ensure_prepared(data_config(messy_path, tmp / "b"))
    finally:
        logger.removeHandler(records)
    assert any(f"dropped {messy.height - log.height} exact duplicate" in m for m in records.messages), records.messages
    assert read_manifest(a)["n_events"] == read_manifest(b)["n_events"] == log.height
    for name in ("split", "labels", "hist_item", "user_key"):
        assert np.array_equal(np.load(a / f"{name}.npy"), np.load(b / f"{name}.npy")), name


def test_ids_beyond_int64_are_kept_exactly(tmp_path):
    big = 2**64 + 12345
    text = "uid,iid,time,clicked,device,duration,watch,group\n" + "".join(
        f"{big + u},{i},{T0 + k * 1000},{k % 2},ios,1.0,2.0,a\n" for k, (u, i) in enumerate([(0, 1), (1, 2), (0, 2)] * 4))
    path = tmp_path / "big.csv"
    path.write_text(text)
    events = load_validated(data_config(path, tmp_path))
    assert events["user_id"].dtype == pl.String and str(big) in events["user_id"].to_list()
    assert events["user_id"].n_unique() == 2


def test_timestamps_that_overflow_int64_ms(tmp_path):
    df = pl.DataFrame({"uid": [1, 2], "iid": [1, 2], "time": [10**17, 5], "clicked": [0, 1], "device": ["a", "b"],
                       "duration": [1.0, 2.0], "watch": [0.0, 1.0], "group": ["a", "a"]})
    with pytest.raises(SchemaError, match=r"'ts'.*ts_unit='s'.*row 1: 100000000000000000 \(1-based data rows\)"):
        load_validated(data_config(write(df, tmp_path / "x", "csv"), tmp_path, ts_unit="s"))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(SchemaError, match="empty"):
        load_validated(data_config(path, tmp_path))


# ---- the real CLI: error: ... on stderr, exit status 2, no traceback ---------------------------------

def run_prep(data: dict, tmp: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("mose-prep")
    cmd = [exe] if exe else [sys.executable, "-m", "data_prep.cli"]
    cols = "{" + ", ".join(f"{k}: {v}" for k, v in COLUMNS.items()) + "}"
    args = ["data=events", f"data.source.path={data['source']['path']}", f"data.source.columns={cols}",
            "data.tasks={click: {kind: binary}, watch: {kind: regression, transform: log1p}}",
            "data.categorical=[device]", "data.numeric=[duration]", "data.cohorts=[group]",
            f"paths.data_dir={tmp / 'data'}", f"hydra.run.dir={tmp / 'run'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(check=False, args=[*cmd, *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind", ["binary label 3", "missing column", "null ts"])
def test_cli_reports_bad_input_and_exits_2(kind, tmp_path):
    corrupt, fmt, words = CORRUPTIONS[kind]
    log = pl.DataFrame({
        "uid": [1, 1, 2, 2], "iid": [5, 6, 5, 7], "time": [T0, T0 + 1, T0 + 2, T0 + 3], "device": ["a"] * 4,
        "duration": [1.0, 2.0, 3.0, 4.0], "clicked": [0, 1, 0, 1], "watch": [1.0, 0.0, 2.0, 3.0], "group": ["x"] * 4})
    path = write(corrupt(log, 1), tmp_path / "log", fmt)
    proc = run_prep(data_config(path, tmp_path), tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and all(w in err for w in words), err
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "data").glob("events*"))  # no dataset folder, whatever its source key
