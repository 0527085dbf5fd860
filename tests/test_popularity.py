"""model=popularity (smoothed per-item train rates) through the real module, and mose-report --ci / --cohorts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import compose_with_output
from hydra.core.global_hydra import GlobalHydra
from test_train_e2e import data_overrides

from mose.config_checks import ConfigError, check_config
from mose.metrics import monitor_mode
from mose.models.popularity import Popularity
from mose.nn.embeddings import InputSpec
from mose.report import main as report_main
from mose.report import paired_bootstrap


def test_popularity_rates_are_the_smoothed_train_means():
    spec = InputSpec(n_users=3, n_items=4, cat_vocab=(), n_numeric=0, history_len=1, n_history_labels=1,
                     n_prior_buckets=16)
    model = Popularity(spec, ["click", "watch"], smoothing=2.0)
    item = torch.tensor([2, 2, 2, 3])
    target = torch.tensor([[1.0, 0.5], [1.0, -0.5], [0.0, 1.0], [0.0, 2.0]])
    model.fit_counts([(item[:2], target[:2]), (item[2:], target[2:])], torch.tensor([True, False]))
    prior = target.mean(0)  # click 0.5, watch 0.75
    rate2 = (target[:3].sum(0) + 2 * prior) / (3 + 2)
    rate3 = (target[3] + 2 * prior) / (1 + 2)
    out = model({"item": torch.tensor([2, 3, 1])})  # item 1: never seen in train -> the prior
    torch.testing.assert_close(out["click"], torch.logit(torch.stack([rate2[0], rate3[0], prior[0]])))
    torch.testing.assert_close(out["watch"], torch.stack([rate2[1], rate3[1], prior[1]]))


def test_mmoe_item_prior_adds_the_smoothed_rate_logit():
    from mose.models.mmoe import MMoE

    spec = InputSpec(n_users=3, n_items=4, cat_vocab=(), n_numeric=0, history_len=2, n_history_labels=1,
                     n_prior_buckets=16)
    plain = MMoE(spec, ["click"], embed_dim=4, expert=[8], tower=[4])
    torch.manual_seed(0)
    wide = MMoE(spec, ["click"], embed_dim=4, expert=[8], tower=[4], item_prior=2.0)
    assert plain.prior is None and not any(hasattr(m, "fit_counts") for m in plain.modules())
    wide.prior.fit_counts([(torch.tensor([2, 2, 3]), torch.tensor([[1.0], [1.0], [0.0]]))], torch.tensor([True]))
    batch = {"user": torch.tensor([2, 2]), "item": torch.tensor([2, 3]), "prior_bucket": torch.tensor([1, 1]),
             "hist_item": torch.tensor([[3, 0], [2, 0]]), "hist_label": torch.tensor([[[1], [0]], [[0], [0]]]),
             "cat": torch.zeros(2, 0, dtype=torch.long), "num": torch.zeros(2, 0)}
    rate = (torch.tensor([2.0, 0.0]) + 2 * (2 / 3)) / (torch.tensor([2.0, 1.0]) + 2)
    deep = wide(batch)["click"] - torch.logit(rate)
    wide.prior = None
    torch.testing.assert_close(deep, wide(batch)["click"])  # the rest of the logit is the plain MMoE's


def test_paired_bootstrap_hand_values():
    d, w = np.array([0.1, 0.1, 0.1]), np.array([1.0, 2.0, 3.0])
    assert paired_bootstrap([d], [w], n_boot=200) == pytest.approx((0.1, 0.1, 0.1))  # no spread: a point
    d2 = np.array([0.0, 0.3])
    mean, lo, hi = paired_bootstrap([d2, d2 + 0.1], [np.ones(2), np.ones(2)], n_boot=4000)
    assert mean == pytest.approx((0.15 + 0.25) / 2)
    assert 0.0 <= lo < mean < hi <= 0.4 and lo < 0.1 and hi > 0.3  # users and seeds resampled


@pytest.fixture(scope="module")
def two_models(events_parquet, tmp_path_factory):
    from mose.train import train

    tmp = tmp_path_factory.mktemp("popularity")
    results = {}
    mmoe = ["model.embed_dim=8", "model.expert=[16]", "model.tower=[8]", "callbacks.monitor=val/gauc_mean"]
    for model, extra in (("popularity", []), ("mmoe", mmoe)):
        run_dir = tmp / "sweep" / model
        cfg = compose_with_output("train", data_overrides(events_parquet, tmp / "data") + [
            f"model={model}", *extra, "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "seed=0",
            "threads=1"], run_dir)
        results[model] = (run_dir, train(cfg))
    yield tmp / "sweep", results
    GlobalHydra.instance().clear()


def test_popularity_trains_through_the_module_and_writes_per_user_aucs(two_models):
    _, results = two_models
    run_dir, test = results["popularity"]
    assert test["click/auc"] > 0.6  # the conftest clicks carry a strong item effect
    metrics = json.loads((run_dir / "metrics.json").read_text())["test"]
    users = pl.read_parquet(run_dir / "per_user.parquet")
    for group, key in (("all", "click/gauc"), ("seen_in_train=seen", "cohort/seen_in_train=seen/click/gauc")):
        rows = users.filter((pl.col("group") == group) & (pl.col("task") == "click"))
        gauc = float((rows["auc"] * rows["n"]).sum() / rows["n"].sum())
        assert gauc == pytest.approx(metrics[key], abs=1e-9)  # GAUC is what per_user averages


def test_report_ci_and_cohort_table(two_models, capsys):
    sweep, results = two_models
    report_main([str(sweep), "--ci", "mmoe,popularity", "--cohorts", "--n-boot", "300"])
    assert (sweep / "cohort_seen_in_train.png").stat().st_size > 1000  # the per-cohort PNG
    text = (sweep / "report.md").read_text()
    assert "## Paired differences: mmoe - popularity" in text and "| popularity |" in text
    line = next(x for x in text.splitlines() if x.startswith("| all | click |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    a, b = float(cells[3]), float(cells[4])
    assert a == pytest.approx(results["mmoe"][1]["click/gauc"], abs=1e-4)
    assert b == pytest.approx(results["popularity"][1]["click/gauc"], abs=1e-4)
    diff, interval = cells[5].split(" [")
    lo, hi = (float(v) for v in interval.rstrip("] *").split(", "))
    assert float(diff) == pytest.approx(a - b, abs=2e-4) and lo <= float(diff) <= hi
    assert "| seen_in_train=unseen |" in text.split("## Per cohort")[1]
    with pytest.raises(SystemExit, match="--ci mmoe,nope"):
        report_main([str(sweep), "--ci", "mmoe,nope", "--no-plots"])


def test_monitor_sets_checkpointing_and_early_stopping_together(two_models):
    from mose.train import callback_configs

    run_dir, _ = two_models[1]["mmoe"]
    info = json.loads((run_dir / "metrics.json").read_text())
    assert "-gauc" in Path(info["checkpoint"]).name  # selected by val/gauc_mean
    cbs = callback_configs({"monitor": "val/loss", "model_checkpoint": {"monitor": "val/auc_mean", "mode": "max",
                                                                        "filename": "x"},
                            "early_stopping": {"monitor": "val/auc_mean", "mode": "max"}, "other": {"a": 1}})
    assert cbs[0]["monitor"] == cbs[1]["monitor"] == "val/loss" and cbs[0]["mode"] == cbs[1]["mode"] == "min"
    assert cbs[0]["filename"] == "epoch{epoch:02d}-loss{val/loss:.4f}" and cbs[2] == {"a": 1}


@pytest.mark.parametrize(("key", "mode"), [("val/gauc_mean", "max"), ("val/click/logloss", "min"),
                                           ("val/watch_time/mse", "min"), ("val/loss", "min"),
                                           ("val/cohort/seen_in_train=unseen/click/gauc", "max")])
def test_monitor_mode(key, mode):
    assert monitor_mode(key) == mode


@pytest.mark.parametrize("key", ["test/auc_mean", "val/logloss_mean", "val/clicks/auc"])
def test_bad_monitor_names_the_key(key):
    with pytest.raises(ConfigError, match=f"callbacks.monitor={key}: not a metric this run logs"):
        check_config({"model": {"_target_": "mose.models.popularity.Popularity"},
                      "data": {"tasks": {"click": {"kind": "binary"}}}, "callbacks": {"monitor": key}})
