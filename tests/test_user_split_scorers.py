"""docs/poso_user_split_scorers.py: the hand-built scorers' arithmetic, against hand-computed values."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SPEC = importlib.util.spec_from_file_location(
    "poso_user_split_scorers", Path(__file__).resolve().parents[1] / "docs/poso_user_split_scorers.py")
scorers = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(scorers)


def test_item_rate_is_popularitys_smoothed_rate():
    item = np.array([2, 2, 3, 1])  # OOV (1) pools the rare items, as model=popularity counts it
    y = np.array([1.0, 0.0, 1.0, 0.0])
    rate = scorers.item_rate(item, y, n_items=4, a=2.0)
    mean = 0.5
    assert rate[2] == pytest.approx((1 + 2 * mean) / (2 + 2))
    assert rate[3] == pytest.approx((1 + 2 * mean) / (1 + 2))
    assert rate[1] == pytest.approx((0 + 2 * mean) / (1 + 2))
    assert rate[0] == pytest.approx(mean)  # PAD: no events, the mean


def test_co_positive_cosine_and_cf_score():
    # users 10 and 11 are both positive on items 2 and 3; user 11 also on 4; negatives and OOV are ignored
    user = np.array([10, 10, 11, 11, 11, 10, 11])
    item = np.array([2, 3, 2, 3, 4, 4, 1])
    y = np.array([1, 1, 1, 1, 1, 0, 1.0])
    s = scorers.co_positive(user, item, y, n_items=5)
    assert s[2, 3] == pytest.approx(2 / np.sqrt(3 * 3))   # 2 shared users, 2 users each (+1)
    assert s[2, 4] == pytest.approx(1 / np.sqrt(3 * 2))
    assert np.diag(s).sum() == 0 and s[1].sum() == 0 and s[:, 1].sum() == 0
    hist_item = np.array([[3, 4, 0], [3, 4, 0]])
    hist_pos = np.array([[True, True, False], [False, False, False]])
    cf = scorers.cf_score(s, np.array([2, 2]), hist_item, hist_pos)
    assert cf[0] == pytest.approx((s[2, 3] + s[2, 4]) / 2)
    assert cf[1] == 0.0  # no positive history token


def test_gauc_weights_users_by_events():
    score = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.5])
    y = np.array([0, 1, 1, 1, 0, 1.0])
    user = np.array([0, 0, 1, 1, 1, 2])  # user 0: AUC 1 (2 events); user 1: 0.5 (3 events); user 2 one class
    assert scorers.gauc(score, y, user) == pytest.approx((1.0 * 2 + 0.5 * 3) / 5)
