"""Canonical event validation: clear errors that name the column (and the offending rows)."""

from __future__ import annotations

import math

import polars as pl
import pytest

from data_prep.schema import EventSpec, SchemaError, TaskSpec, validate

SPEC = EventSpec(
    tasks=(TaskSpec("click"), TaskSpec("watch", "regression", transform="log1p")),
    categorical=("device",),
    numeric=("duration",),
    cohorts=("group",),
)


def frame(**override) -> pl.DataFrame:
    cols = {
        "user_id": [1, 1, 2, 2, 3],
        "item_id": ["a", "b", "a", "c", "b"],
        "ts": [10, 20, 10, 10, 5],
        "device": ["ios", "web", "ios", "ios", "web"],
        "duration": [1.5, 2.0, None, 3.0, 4.0],  # null numerics are allowed (filled after standardising)
        "click": [0, 1, 1, 0, 1],
        "watch": [0.0, 3.5, 1.0, 0.0, 2.0],
        "group": ["x", "y", "x", "x", "y"],
    }
    cols.update(override)
    return pl.DataFrame(cols, strict=False)


def test_valid_frame_passes():
    validate(frame(), SPEC)
    validate(frame(click=[True, False, True, True, False]), SPEC)  # booleans are 0/1


def test_empty_frame():
    with pytest.raises(SchemaError, match="empty"):
        validate(frame().clear(), SPEC)


def test_missing_columns_are_listed():
    with pytest.raises(SchemaError) as err:
        validate(frame().drop("watch", "group"), SPEC)
    msg = str(err.value)
    assert "missing" in msg and "'watch'" in msg and "'group'" in msg
    assert "'click'" not in msg.split(";")[0]  # only the missing ones are listed as missing


@pytest.mark.parametrize("col", ["user_id", "item_id", "ts", "click", "device"])
def test_null_ids_name_column_and_row(col):
    df = frame().with_row_index("_r").with_columns(
        pl.when(pl.col("_r") == 3).then(None).otherwise(pl.col(col)).alias(col)
    ).drop("_r")
    with pytest.raises(SchemaError) as err:
        validate(df, SPEC)
    msg = str(err.value)
    assert f"'{col}'" in msg and "1 null" in msg
    assert "row 3" in msg


def test_binary_label_out_of_range():
    with pytest.raises(SchemaError) as err:
        validate(frame(click=[0, 1, 3, 0, 1]), SPEC)
    msg = str(err.value)
    assert "'click'" in msg and "row 2: 3" in msg
    assert "row 0" not in msg and "row 1" not in msg


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_regression_label_non_finite(bad):
    with pytest.raises(SchemaError) as err:
        validate(frame(watch=[0.0, 3.5, 1.0, bad, 2.0]), SPEC)
    msg = str(err.value)
    assert "'watch'" in msg and "row 3" in msg


def test_log1p_regression_label_negative():
    with pytest.raises(SchemaError) as err:
        validate(frame(watch=[0.0, 3.5, -1.0, 0.0, 2.0]), SPEC)
    assert "'watch'" in str(err.value) and "row 2" in str(err.value)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_numeric_feature_non_finite(bad):
    with pytest.raises(SchemaError) as err:
        validate(frame(duration=[1.5, bad, None, 3.0, 4.0]), SPEC)
    msg = str(err.value)
    assert "'duration'" in msg and "row 1" in msg


def test_non_integer_ts():
    with pytest.raises(SchemaError, match="'ts'"):
        validate(frame(ts=[10.0, 20.5, 10.0, 10.0, 5.0]), SPEC)
    with pytest.raises(SchemaError, match="'ts'"):
        validate(frame(ts=["10", "20", "10", "10", "5"]), SPEC)


def test_non_numeric_task_column():
    with pytest.raises(SchemaError, match="'click'"):
        validate(frame(click=["0", "1", "1", "0", "1"]), SPEC)


def test_task_spec_rejects_unknown_kind_and_transform():
    with pytest.raises(SchemaError, match="kind"):
        TaskSpec("click", kind="multiclass")
    with pytest.raises(SchemaError, match="transform"):
        TaskSpec("watch", kind="regression", transform="sqrt")
    TaskSpec("watch", kind="regression", transform="log1p")


def test_event_spec_from_config():
    spec = EventSpec.from_config({"click": None, "w": {"kind": "regression", "weight": 2.0}}, ["device"])
    assert spec.task_names == ["click", "w"] and spec.binary_tasks == ["click"]
    assert spec.tasks[1].weight == 2.0 and spec.categorical == ("device",)
    with pytest.raises(SchemaError, match="tasks"):
        EventSpec.from_config({})
    with pytest.raises(TypeError):
        EventSpec.from_config({"click": {"knd": "binary"}})  # a typo is not silently ignored
