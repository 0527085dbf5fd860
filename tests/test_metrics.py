"""AUC / GAUC / logloss / MSE against hand computations and torchmetrics, per task and per cohort."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from mose.metrics import GateUsage, MultiTaskMetrics, auc, gauc, grouped_auc, logloss


def mann_whitney(scores, labels) -> float:
    """Reference AUC: the fraction of (positive, negative) pairs ordered correctly, ties count 1/2."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def test_auc_hand_example_with_ties():
    s, y = torch.tensor([0.1, 0.4, 0.4, 0.8]), torch.tensor([0, 0, 1, 1])
    assert auc(s, y) == pytest.approx(0.875, abs=1e-12)
    assert float(binary_auroc(s, y)) == pytest.approx(0.875, abs=1e-6)
    # input order does not matter
    perm = torch.tensor([3, 1, 0, 2])
    assert auc(s[perm], y[perm]) == pytest.approx(0.875, abs=1e-12)


def test_auc_edge_cases():
    assert auc(torch.tensor([0.2, 0.9]), torch.tensor([0, 1])) == 1.0
    assert auc(torch.tensor([0.9, 0.2]), torch.tensor([0, 1])) == 0.0
    assert auc(torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0, 1, 1])) == 0.5  # all tied
    assert math.isnan(auc(torch.tensor([0.1, 0.7]), torch.tensor([1, 1])))  # one class


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_torchmetrics_and_reference_on_random_ties(seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 12, (300,), generator=g).float() / 11  # heavy ties
    y = torch.randint(0, 2, (300,), generator=g)
    ref = mann_whitney(s.tolist(), y.tolist())
    assert auc(s, y) == pytest.approx(ref, abs=1e-12)
    assert auc(s, y) == pytest.approx(float(binary_auroc(s, y)), abs=1e-6)


def test_gauc_hand_example():
    # user 7: scores ordered perfectly -> 1.0 (3 events); user 3: 3 of 4 pairs -> 0.75 (4 events);
    # user 11: positives only -> skipped. Rows interleaved across users.
    rows = [  # (user, score, label)
        (3, 0.3, 1), (7, 0.9, 1), (11, 0.5, 1), (3, 0.6, 0), (7, 0.2, 0),
        (3, 0.1, 0), (11, 0.4, 1), (7, 0.5, 0), (3, 0.7, 1),
    ]
    users = torch.tensor([r[0] for r in rows])
    s = torch.tensor([r[1] for r in rows])
    y = torch.tensor([r[2] for r in rows], dtype=torch.float32)
    assert gauc(s, y, users) == pytest.approx((3 * 1.0 + 4 * 0.75) / 7, abs=1e-12)
    per_user, n, valid = grouped_auc(s, y, users)  # groups in ascending id order: 3, 7, 11
    assert per_user[:2].tolist() == pytest.approx([0.75, 1.0])
    assert math.isnan(float(per_user[2]))
    assert n.tolist() == [4, 3, 2] and valid.tolist() == [True, True, False]
    # the pooled AUC differs from GAUC: it compares across users
    assert auc(s, y) == pytest.approx(mann_whitney(s.tolist(), y.tolist()))
    assert math.isnan(gauc(s[users == 11], y[users == 11], users[users == 11]))


def test_gauc_ties_within_a_user_but_not_across():
    # same scores in different users must not be averaged into one tie group
    users = torch.tensor([0, 0, 1, 1])
    s = torch.tensor([0.5, 0.4, 0.5, 0.6])
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert gauc(s, y, users) == pytest.approx(0.5)  # user 0: 1.0, user 1: 0.0, weights 2 and 2


def test_logloss_hand_value():
    p, y = torch.tensor([0.9, 0.2, 0.6]), torch.tensor([1.0, 0.0, 0.0])
    assert logloss(p, y) == pytest.approx(-(math.log(0.9) + math.log(0.8) + math.log(0.4)) / 3, rel=1e-6)
    # probabilities of exactly 0 / 1 are clamped, not infinite
    assert math.isfinite(logloss(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])))
    assert logloss(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0])) == pytest.approx(0.0, abs=1e-6)


TASKS = {"click": "binary", "like": "binary", "watch": "regression"}
COHORTS = {"new_user": ["new", "regular"], "group": ["a", "b", "c"]}


def metric_batch(seed: int = 0, n: int = 200):
    rng = np.random.default_rng(seed)
    y_click = rng.integers(0, 2, n)
    preds = np.stack([
        np.clip(0.3 * y_click + 0.7 * rng.random(n), 0.01, 0.99),
        rng.random(n),
        rng.normal(size=n),
    ], axis=1)
    targets = np.stack([y_click, rng.integers(0, 2, n), rng.normal(size=n)], axis=1)
    users = rng.integers(0, 15, n)
    cohorts = np.stack([rng.integers(0, 2, n), rng.integers(0, 2, n)], axis=1)  # group "c" never occurs
    return (torch.tensor(preds, dtype=torch.float32), torch.tensor(targets, dtype=torch.float32),
            torch.tensor(users), torch.tensor(cohorts))


def test_multitask_metrics_overall_and_per_cohort():
    preds, targets, users, cohorts = metric_batch()
    m = MultiTaskMetrics(TASKS, COHORTS)
    m.update(preds[:70], targets[:70], users[:70], cohorts[:70])  # two batches accumulate
    m.update(preds[70:], targets[70:], users[70:], cohorts[70:])
    out = m.compute()

    for i, t in enumerate(["click", "like"]):
        assert out[f"{t}/auc"] == pytest.approx(mann_whitney(preds[:, i].tolist(), targets[:, i].tolist()))
        assert out[f"{t}/gauc"] == pytest.approx(gauc(preds[:, i], targets[:, i], users))
        assert out[f"{t}/logloss"] == pytest.approx(logloss(preds[:, i], targets[:, i]))
    assert "watch/auc" not in out and "click/mse" not in out
    mse = float(((preds[:, 2].double() - targets[:, 2].double()) ** 2).mean())
    assert out["watch/mse"] == pytest.approx(mse)
    assert out["auc_mean"] == pytest.approx((out["click/auc"] + out["like/auc"]) / 2)
    assert out["gauc_mean"] == pytest.approx((out["click/gauc"] + out["like/gauc"]) / 2)
    assert out["click/auc"] > 0.7  # the click predictions carry the label

    for j, (name, values) in enumerate(COHORTS.items()):
        for code, value in enumerate(values):
            rows = cohorts[:, j] == code
            key = f"cohort/{name}={value}"
            if not rows.any():
                assert not any(k.startswith(key + "/") for k in out)
                continue
            assert out[f"{key}/n_events"] == float(rows.sum())
            assert out[f"{key}/click/auc"] == pytest.approx(
                mann_whitney(preds[rows, 0].tolist(), targets[rows, 0].tolist()))
            want = gauc(preds[rows, 1], targets[rows, 1], users[rows])
            assert out[f"{key}/like/gauc"] == pytest.approx(want)
            assert out[f"{key}/watch/mse"] == pytest.approx(
                float(((preds[rows, 2].double() - targets[rows, 2].double()) ** 2).mean()))
    assert out["cohort/new_user=new/n_events"] + out["cohort/new_user=regular/n_events"] == len(preds)

    m.reset()
    m.update(preds[:10], targets[:10], users[:10], cohorts[:10])
    assert m.compute()["click/auc"] == pytest.approx(auc(preds[:10, 0], targets[:10, 0]))


def test_auc_mean_skips_one_class_tasks():
    preds, targets, users, cohorts = metric_batch(1, 40)
    targets[:, 1] = 0.0  # like: one class only -> its AUC is NaN and auc_mean is click's
    m = MultiTaskMetrics(TASKS, {})
    m.update(preds, targets, users, cohorts)
    out = m.compute()
    assert math.isnan(out["like/auc"])
    assert out["auc_mean"] == pytest.approx(out["click/auc"])


def test_gate_usage_mean():
    gu = GateUsage(2, 3)
    g1 = torch.tensor([[[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]]])
    g2 = torch.tensor([[[0.0, 1.0, 0.0], [0.4, 0.3, 0.3]], [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]])
    gu.update(g1)
    gu.update(g2)
    expected = (g1.sum(0) + g2.sum(0)).double() / 3
    assert torch.allclose(gu.compute()["usage"], expected)


def test_a_row_added_to_the_metric_table_reaches_every_output(monkeypatch, tmp_path):
    """One row in ``METRICS``: computed for its task kinds (overall, per cohort, its mean) and shown in
    the summary, the hparams tab, the progress bar, mose-report's table (its direction in the
    negative-transfer table) and plots, with no other change."""
    from pytorch_lightning.callbacks import RichProgressBar

    import mose.metrics as mm
    from mose.progress import TaskProgressBar
    from mose.report import markdown_table, negative_transfer_table
    from mose.report_plots import render_plots
    from mose.results import summary
    from mose.tb_callbacks import hparam_metrics

    mae = mm.MetricSpec("mae", lambda p, y, users: float((p.double() - y.double()).abs().mean()),
                        (mm.REGRESSION,), higher_is_better=False, mean=True, shown=frozenset(mm.OUTPUTS))
    monkeypatch.setattr(mm, "METRICS", (*mm.METRICS, mae))
    preds, targets, users, cohorts = metric_batch()
    m = MultiTaskMetrics(TASKS, {"new_user": ["new", "regular"]})
    m.update(preds, targets, users, cohorts[:, :1])
    out = m.compute()
    want = float((preds[:, 2].double() - targets[:, 2].double()).abs().mean())
    assert out["watch/mae"] == pytest.approx(want) and out["mae_mean"] == pytest.approx(want)
    assert "click/mae" not in out and "cohort/new_user=new/watch/mae" in out

    header, *_, means = summary(out, list(TASKS)).splitlines()
    assert {"mae", "new", "regular"} <= set(header.split()) and "mae" in means
    hp = hparam_metrics(out, TASKS)
    assert {"test/watch/mae", "test/mae_mean"} <= set(hp) and "test/click/mae" not in hp

    monkeypatch.setattr(RichProgressBar, "get_metrics", lambda self, trainer, module: {})
    trainer = SimpleNamespace(callback_metrics={"val/watch/mae": torch.tensor(0.25)})
    assert TaskProgressBar().get_metrics(trainer, SimpleNamespace(tasks=list(TASKS))) == {"watch mae": "0.2500"}

    runs = [{"model": "single_task", "data": "d", "test": out, "dir": str(tmp_path)},
            {"model": "mmoe", "data": "d", "test": {**out, "watch/mae": want + 0.1}, "dir": str(tmp_path)}]
    assert "watch/mae" in markdown_table(runs).splitlines()[0]
    mmoe = next(line for line in negative_transfer_table(runs).splitlines() if line.startswith("| mmoe"))
    assert "+0.1000 ▼" in mmoe  # a higher MAE is worse
    assert "metric_mae.png" in [p.name for p in render_plots(runs, tmp_path)]
