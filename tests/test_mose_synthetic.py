"""data=mose_synthetic (data_prep/sources/mose_synthetic.py): the formulas of its docstring, checked by hand."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from data_prep.errors import ConfigError
from data_prep.sources.mose_synthetic import ceiling_mse, generate

SMALL = {"n_users": 300, "n_steps": 120, "seed": 3}


def per_user(df: pl.DataFrame, column: str, n_users: int) -> np.ndarray:
    return df.sort("user_id", "ts")[column].to_numpy().reshape(n_users, -1)


def test_schema_shape_and_determinism():
    df = generate(**SMALL)
    assert df.columns == ["user_id", "item_id", "ts", *(f"f{j}" for j in range(10)), "y0", "y1", "prev_y0",
                          "prev_y1", "dominant_mode"]
    assert df.height == 300 * 120 and df["ts"].is_sorted() and (df["item_id"] == 0).all()
    gaps = df.sort("user_id", "ts").group_by("user_id").agg(pl.col("ts").diff().min())["ts"]
    assert (gaps > 0).all()
    modes = df.group_by("user_id").agg(pl.col("dominant_mode").n_unique())["dominant_mode"]
    assert (modes == 1).all() and df["dominant_mode"].n_unique() > 5  # one per user, of the 10 modes
    assert df.equals(generate(**SMALL)) and not df.equals(generate(**{**SMALL, "seed": 4}))
    # features: unit-variance signal plus unit noise
    np.testing.assert_allclose(df.select(pl.col("^f\\d$").var()).to_numpy(), 2.0, rtol=0.15)


def test_targets_are_next_step_values_plus_noise_and_prev_is_the_previous_target():
    df = generate(**SMALL, return_state=True, label_noise=0.3)
    for task in ("y0", "y1"):
        y, prev = per_user(df, task, 300), per_user(df, f"prev_{task}", 300)
        np.testing.assert_array_equal(prev[:, 1:], y[:, :-1])
        np.testing.assert_array_equal(prev[:, 0], 0.0)
        resid = df[task] - df[f"ceiling_{task}"]
        assert abs(resid.mean()) < 0.01 and resid.std() == pytest.approx(0.3, rel=0.03)
        assert df[f"ceiling_{task}"].var() == pytest.approx(1.0, rel=0.05)  # scaled to unit variance


def test_the_long_task_is_a_moving_average_of_the_short_one():
    """At correlation 1 both tasks read one projection: e1(t) - a e1(t-1) = (1 - a) c e0(t), a = 1 - 1/tau."""
    df = generate(**SMALL, task_correlation=1.0, time_scales=(1, 20), return_state=True)
    e0, e1 = per_user(df, "ceiling_y0", 300), per_user(df, "ceiling_y1", 300)
    a = 1 - 1 / 20
    residual = e1[:, 1:] - a * e1[:, :-1]
    scale = (residual * e0[:, 1:]).sum() / (e0[:, 1:] ** 2).sum()
    np.testing.assert_allclose(residual, scale * e0[:, 1:], atol=1e-9)
    assert np.corrcoef(e0.ravel(), e1.ravel())[0, 1] < 0.9  # the long memory smooths the fast modes away


@pytest.mark.parametrize("rho", [0.0, 0.5, 1.0])
def test_task_correlation_is_the_correlation_of_equal_time_scale_targets(rho):
    df = generate(n_users=2000, n_steps=100, task_correlation=rho, time_scales=(1, 1), return_state=True)
    assert np.corrcoef(df["ceiling_y0"], df["ceiling_y1"])[0, 1] == pytest.approx(rho, abs=0.08)


def test_ceiling_mse_is_the_label_noise_on_the_test_steps():
    source = {"_target_": "data_prep.sources.mose_synthetic.generate", **SMALL, "label_noise": 0.5}
    df = generate(**SMALL, label_noise=0.5)
    test_start = int(df["ts"].quantile(0.9))
    out = ceiling_mse(source, test_start)
    assert set(out) == {"y0/mse", "y1/mse"}
    assert out["y0/mse"] == pytest.approx(0.25, rel=0.1) and out["y1/mse"] == pytest.approx(0.25, rel=0.1)


@pytest.mark.parametrize("bad, key", [({"time_scales": [1]}, "time_scales"), ({"task_correlation": 1.5},
                                      "task_correlation"), ({"n_modes": 2}, "n_modes"), ({"noise": -1}, "noise")])
def test_bad_knobs_name_the_key(bad, key):
    with pytest.raises(ConfigError, match=f"data.source.*{key}"):
        generate(**{**SMALL, **bad})


@pytest.mark.parametrize("experiment", ["mose_paper_synthetic", "mose_paper_synthetic_sizes"])
def test_the_experiments_compose_and_pass_the_checks_for_every_model(experiment, tmp_path):
    """Every model the sweep runs composes, passes check_config and gets its size (chosen_size, or the grid's)."""
    from conftest import compose_with_output
    from omegaconf import OmegaConf

    from data_prep.paths import CONF_DIR
    from mose.config_checks import check_config, monitor_without_binary_tasks

    conf = OmegaConf.load(f"{CONF_DIR}/experiment/{experiment}.yaml")
    models = str(conf.hydra.sweeper.params.model).split(",")
    chosen = OmegaConf.load(f"{CONF_DIR}/experiment/mose_paper_synthetic.yaml").chosen_size
    assert len([m for m in models if m != "popularity"]) == 8
    for model in models:
        cfg = compose_with_output("train", [f"experiment={experiment}", f"model={model}"], tmp_path)
        monitor_without_binary_tasks(cfg)  # as mose-train does: regression only monitors val/loss
        check_config(cfg)
        size = OmegaConf.to_container(cfg, resolve=True)["size"]
        if experiment == "mose_paper_synthetic":
            assert size == (None if model == "popularity" else OmegaConf.to_container(chosen[model])), model
        if model != "popularity":
            resolved = OmegaConf.to_container(cfg.model, resolve=True)
            assert (resolved.get("hidden") or resolved.get("bottom_hidden")) == size["units"], model


def test_the_tables_paired_gap_is_a_t_interval_over_seeds():
    """docs/mose_synthetic_table.py: MoSE minus the best other model, paired by seed (by hand: d = .5, .5, 1)."""
    import importlib.util

    from data_prep.paths import CONF_DIR

    path = f"{CONF_DIR}/../docs/mose_synthetic_table.py"
    spec = importlib.util.spec_from_file_location("mose_synthetic_table", path)
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    half = 4.302653 * np.std([0.5, 0.5, 1.0], ddof=1) / np.sqrt(3)  # t(0.975, 2 df)
    assert table.paired_gap([1.0, 2.0, 3.0], [0.5, 1.5, 2.0]) == \
        f"+0.6667 [{2 / 3 - half:+.4f}, {2 / 3 + half:+.4f}] (+50.0%)"
