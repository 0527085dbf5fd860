"""A seeded sequential benchmark: users x steps of noisy activity with hidden regime switches.

How it is generated (in the spirit of the MoSE paper's synthetic data, Qin et al., KDD 2020): every
user acts once a minute for ``n_steps`` steps (user-specific offset within the minute). A hidden
Markov regime ``r_t`` (``n_regimes`` states) switches to a uniformly chosen other regime with
probability ``switch_prob`` per step; its ``age`` is the number of steps since the last switch (the
regime in force at step 0 already lasted a geometric number of steps). The observed activity
features ``f_t = mu[r_t] + noise * N(0, I)`` have regime means only 1.8 noise deviations apart, so one
step barely reveals the regime but a history does. Each step shows a uniformly drawn item with a latent
vector ``v_i`` and a quality ``q_i``. The tasks read the history in different ways, through shared
latent factors mixed differently per task (the multi-gate premise): ``click`` ~ Bernoulli of the
current regime's taste for the item, ``2.2 w[r_t].v_i`` (tastes centred over regimes, so the item
alone says nothing), plus a novelty bonus ``exp(-age / 8)``; ``convert`` (sparse, ~8%) ~ Bernoulli
of the user's clicks in the previous ``RECENT_WINDOW`` steps (earlier labels are model input, the
current ones never) with a regime-specific slope, plus item quality and novelty; ``dwell`` (>= 0)
is lognormal around a regime offset plus a regime-specific slope on ``sqrt(min(age, 40) / 40)``
(long memory: when did the regime change?) plus recent clicks. All arrays are built with
vectorised and cumulative numpy ops (no loop over users or steps).
"""

from __future__ import annotations

import numpy as np
import polars as pl

EPOCH_MS = 1_700_000_000_000
STEP_MS = 60_000
LATENT_DIM = 8
RECENT_WINDOW = 4
MEAN_SEPARATION = 1.8  # distance between regime means in units of the noise scale (at noise=1)
AGE_CAP = 40
NOVELTY_STEPS = 8
TASKS = ("click", "convert", "dwell")


def regime_means(n_regimes: int, n_features: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_regimes, F)`` regime means ``MEAN_SEPARATION`` apart (orthonormal if ``n_regimes <= F``)."""
    if n_regimes <= n_features:
        basis = np.linalg.qr(rng.standard_normal((n_features, n_regimes)))[0].T  # (n_regimes, F) orthonormal
    else:
        basis = rng.standard_normal((n_regimes, n_features)) / np.sqrt(n_features)
    means = basis * MEAN_SEPARATION / np.sqrt(2)
    return means - means.mean(0)


def regime_paths(n_users: int, n_steps: int, n_regimes: int, switch_prob: float, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Hidden regimes ``(U, n_steps)`` and their age ``(U, n_steps)``: steps since the regime began."""
    switch = rng.random((n_users, n_steps)) < switch_prob
    switch[:, 0] = False
    jump = rng.integers(1, n_regimes, (n_users, n_steps))  # to a different regime
    regime = (rng.integers(0, n_regimes, n_users)[:, None] + np.cumsum(switch * jump, axis=1)) % n_regimes
    t = np.arange(n_steps)
    start = -(rng.geometric(max(switch_prob, 1e-6), n_users) - 1)  # the first regime began before step 0
    last_switch = np.maximum(np.maximum.accumulate(np.where(switch, t, np.iinfo(np.int64).min), axis=1),
                             start[:, None])
    return regime, t - last_switch


def recent_count(x: np.ndarray, window: int) -> np.ndarray:
    """Sum of ``x (U, n_steps)`` over the ``window`` steps strictly before each step (cumulative sums)."""
    c = np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(x, axis=1)], axis=1)  # c[:, t] = sum x[:, :t]
    t = np.arange(x.shape[1])
    return c[:, t] - c[:, np.maximum(t - window, 0)]


def generate(
    n_users: int = 1000,
    n_steps: int = 64,
    n_items: int = 300,
    n_regimes: int = 3,
    switch_prob: float = 0.05,
    n_features: int = 4,
    noise: float = 1.0,
    seed: int = 0,
    return_state: bool = False,
) -> pl.DataFrame:
    """Generate ``n_users * n_steps`` canonical events, sorted by ``ts``; deterministic for a ``seed``.

    Columns: user_id, item_id, ts (Int64 ms, one step a minute), f0..f{F-1} (Float64), click,
    convert (Int8 0/1), dwell (Float64 >= 0). With ``return_state`` also the hidden ``regime`` and
    ``age`` (Int64) and the noise-free ``score_click`` / ``score_convert`` logits and
    ``score_dwell`` (mean of log dwell), Float64.
    """
    if min(n_users, n_steps, n_items, n_features) < 1 or n_regimes < 2:
        raise ValueError(f"n_users, n_steps, n_items, n_features must be >= 1 and n_regimes >= 2, got "
                         f"{n_users}, {n_steps}, {n_items}, {n_features}, {n_regimes}")
    if not 0 <= switch_prob <= 1 or noise < 0:
        raise ValueError(f"switch_prob must be in [0, 1] and noise >= 0, got {switch_prob}, {noise}")
    rng = np.random.default_rng(seed)
    u, t = n_users, n_steps

    regime, age = regime_paths(u, t, n_regimes, switch_prob, rng)
    means = regime_means(n_regimes, n_features, rng)
    features = means[regime] + noise * rng.standard_normal((u, t, n_features))

    v = rng.standard_normal((n_items, LATENT_DIM))
    taste = rng.standard_normal((n_regimes, LATENT_DIM))
    taste -= taste.mean(0)  # centred: an item's click rate averaged over the regimes carries no signal
    taste /= np.sqrt((taste**2).sum(1).mean())  # affinity w[r].v_i has unit variance
    item = rng.integers(0, n_items, (u, t))
    quality = rng.normal(0.0, 1.0, n_items)

    # shared latent factors: regime taste for the item, novelty of the regime, recent clicks
    fresh = np.exp(-age / NOVELTY_STEPS)
    fresh -= fresh.mean()
    click_logit = 2.2 * np.einsum("utd,utd->ut", taste[regime], v[item]) + 1.5 * fresh - 0.5
    click = rng.random((u, t)) < 1 / (1 + np.exp(-click_logit))
    recent = recent_count(click, RECENT_WINDOW) - 1.5

    slopes = np.linspace(-0.5, 1.0, n_regimes)  # per-regime effects, assigned to the regimes at random
    click_slope = 1.4 * slopes[rng.permutation(n_regimes)]
    age_slope = 2.0 * slopes[rng.permutation(n_regimes)]
    offset = np.linspace(-0.4, 0.4, n_regimes)[rng.permutation(n_regimes)]
    convert_logit = click_slope[regime] * recent + 0.7 * quality[item] + 1.5 * fresh - 3.0
    convert = rng.random((u, t)) < 1 / (1 + np.exp(-convert_logit))
    long_memory = np.sqrt(np.minimum(age, AGE_CAP) / AGE_CAP)
    log_dwell = 1.5 + offset[regime] + age_slope[regime] * long_memory + 0.25 * recent
    dwell = np.exp(log_dwell + rng.normal(0.0, 0.3, (u, t)))

    ts = EPOCH_MS + rng.integers(0, STEP_MS, u)[:, None] + STEP_MS * np.arange(t)[None, :]
    cols = {"user_id": np.repeat(np.arange(u), t), "item_id": item.ravel(), "ts": ts.ravel()}
    cols |= {f"f{j}": features[..., j].ravel() for j in range(n_features)}
    cols |= {"click": click.ravel().astype(np.int8), "convert": convert.ravel().astype(np.int8),
             "dwell": dwell.ravel()}
    if return_state:
        cols |= {"regime": regime.ravel(), "age": age.ravel(), "score_click": click_logit.ravel(),
                 "score_convert": convert_logit.ravel(), "score_dwell": log_dwell.ravel()}
    order = np.lexsort((cols["user_id"], cols["ts"]))
    df = pl.DataFrame({k: c[order] for k, c in cols.items()})
    return df.with_columns(pl.col("user_id", "item_id", "ts", *(["regime", "age"] if return_state else []))
                           .cast(pl.Int64))
