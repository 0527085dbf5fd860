"""A seeded synthetic activity stream with correlated tasks and a cold-start cohort.

How it is generated: items have latent vectors ``v`` and Zipf-like exposure popularity; users have
heavy-tailed activity and an interest vector that drifts smoothly over the window,
``u(t) = cos(phase(t)) a + sin(phase(t)) b``; they signed up 30-1000 days before the window. A
``new_user_fraction`` of users sign up inside the window, uniformly in the window fractions
``new_user_signup = (lo, hi)`` (default ``(0.7, 0.95)``: the last ~30%; ``(0, 0.95)`` spreads them
over the whole window, so train has truly new users too), with ``new_user_events = (lo, hi)``
events each (default 3-30); their taste is a shared "newcomer" vector plus small
personal noise, without drift, and they are ``new_user_position_factor`` (default 2) times as
position sensitive. ``days_since_signup`` (past-only: known at the event's time) tells them apart
from regulars whose first events in the window have few earlier events in the log. Each exposure is a slot
(``position``) on a feed page whose items share one timestamp. As in the MMoE paper's synthetic
data (Ma et al., 2018), the interaction features ``x = sqrt(d) u(t) * v`` (elementwise) feed three
task scores ``z_k = w_k.x + sum_i sin(alpha_i w_k.x + beta_i)`` whose weight vectors have cosine
similarity ``rho = task_correlation`` with the click task's (``w_1 = e1``,
``w_k = rho e1 + sqrt(1 - rho^2) e_k``, ``e_k`` orthonormal). ``click`` and ``like`` are Bernoulli
draws from logits built on ``z_1`` / ``z_2`` (plus user/item/position/device effects), and
``watch_time`` is lognormal around ``exp(z_3)``. ``convert`` is a post-click conversion (ESMM's
setting): only a clicked exposure can convert, with ``P(convert | click)`` from ``z_2``, ``z_3`` and
the item, and no position effect (position biases the click, not what follows it); declare it with
``data.tasks.convert={kind: binary, after: click}``. It is drawn last, so the other columns are the
same as without it.
"""

from __future__ import annotations

import numpy as np
import polars as pl

EPOCH_MS = 1_700_000_000_000
DAY_S = 86_400
N_SINES = 10
N_POSITIONS = 10
NEW_PAGE_PROB = 0.3  # P(an exposure starts a new feed page); page items share a timestamp
TASKS = ("click", "like", "watch_time", "convert")


def task_weights(latent_dim: int, task_correlation: float, rng: np.random.Generator) -> np.ndarray:
    """Unit task weight vectors ``(3, latent_dim)``; cos(w_click, w_like) = cos(w_click, w_watch) = rho."""
    e = np.linalg.qr(rng.standard_normal((latent_dim, 3)))[0].T  # (3, d), orthonormal rows
    rho = float(task_correlation)
    return np.stack([e[0], rho * e[0] + np.sqrt(1 - rho**2) * e[1], rho * e[0] + np.sqrt(1 - rho**2) * e[2]])


def task_scores(x: np.ndarray, w: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """MMoE-style scores ``(n, 3)`` from features ``x (n, d)``, weights ``w (3, d)``, sines ``alpha, beta (m,)``.

    Each column is standardised to mean 0, std 1 over the events.
    """
    s = x @ w.T  # (n, 3)
    z = s.copy()
    for a, b in zip(alpha, beta):  # m sine terms, each over all events at once
        z += np.sin(a * s + b)
    return (z - z.mean(0)) / (z.std(0) + 1e-12)


def generate(
    n_events: int = 200_000,
    n_users: int = 4_000,
    n_items: int = 2_000,
    latent_dim: int = 8,
    task_correlation: float = 0.8,
    new_user_fraction: float = 0.2,
    drift: float = 1.0,
    position_bias: float = 0.15,
    new_user_position_factor: float = 2.0,
    new_user_signup: tuple[float, float] = (0.7, 0.95),
    new_user_events: tuple[int, int] = (3, 30),
    days: int = 30,
    seed: int = 0,
    return_scores: bool = False,
) -> pl.DataFrame:
    """Generate ``n_events`` canonical events, sorted by ``ts``; deterministic for a ``seed``.

    Columns: user_id, item_id, ts (Int64 ms), position (0..9), device (0..2) (Int64); click, like
    (Int8 0/1); watch_time (Float64 s); convert (Int8 0/1, 0 wherever click is 0); user_group (String
    "new" / "regular"); days_since_signup (Int64). With ``return_scores`` also the noise-free
    ``score_click`` / ``score_like`` logits, ``score_watch_time`` (mean of log watch time) and
    ``score_convert`` (log-odds of the joint ``P(click, convert)``), Float64, and the item's latent vector
    ``latent_0 .. latent_{d-1}`` (Float64; docs/poso_ceiling.py fits each user's taste on it from the
    user's history alone).
    """
    if min(n_events, n_users, n_items, days) < 1:
        raise ValueError(f"n_events, n_users, n_items and days must be >= 1, got "
                         f"{n_events}, {n_users}, {n_items}, {days}")
    if not 0 <= new_user_fraction < 1:
        raise ValueError(f"new_user_fraction must be in [0, 1), got {new_user_fraction}")
    lo, hi = (float(x) for x in new_user_signup)
    if not 0 <= lo <= hi < 1:
        raise ValueError(f"new_user_signup must be window fractions 0 <= lo <= hi < 1, got {list(new_user_signup)}")
    e_lo, e_hi = (int(x) for x in new_user_events)
    if not 1 <= e_lo <= e_hi:
        raise ValueError(f"new_user_events must be counts 1 <= lo <= hi, got {list(new_user_events)}")
    if not -1 <= task_correlation <= 1:
        raise ValueError(f"task_correlation must be in [-1, 1], got {task_correlation}")
    if latent_dim < 3:
        raise ValueError(f"latent_dim must be >= 3 (three orthogonal task directions), got {latent_dim}")
    rng = np.random.default_rng(seed)
    d, window_s = latent_dim, days * DAY_S

    # users: cohort, sign-up, events per user (heavy-tailed for regulars, 3-30 for newcomers)
    is_new = np.zeros(n_users, dtype=bool)
    is_new[rng.permutation(n_users)[: min(round(new_user_fraction * n_users), n_users - 1)]] = True
    counts = np.zeros(n_users, dtype=np.int64)
    new_counts = rng.integers(e_lo, e_hi + 1, is_new.sum())
    cap = n_events // 2
    if new_counts.sum() > cap:
        new_counts = new_counts * cap // new_counts.sum()
    activity = rng.lognormal(0.0, 1.0, (~is_new).sum())
    counts[is_new] = new_counts
    counts[~is_new] = rng.multinomial(n_events - new_counts.sum(), activity / activity.sum())
    signup_s = np.where(is_new, rng.uniform(lo, hi, n_users) * window_s,
                        -rng.uniform(30, 1000, n_users) * DAY_S)
    primary_device = rng.integers(0, 3, n_users)
    user_bias = rng.normal(0.0, 0.5, n_users)

    # latent tastes: drifting interest for regulars, newcomer taste + noise for new users
    a, b = rng.standard_normal((2, n_users, d)) / np.sqrt(d)
    phase0 = rng.uniform(0, 2 * np.pi, n_users)
    speed = drift * rng.uniform(0.0, 1.0, n_users) * (np.pi / 2)  # radians over the window
    newcomer = rng.standard_normal(d) / np.sqrt(d)
    v = rng.standard_normal((n_items, d))
    item_bias = rng.normal(0.0, 0.3, n_items)
    popularity = 1.0 / (rng.permutation(n_items) + 1.0)  # Zipf, exponent 1

    # events: user, time in the user's active span, grouped into feed pages (shared timestamp)
    user = np.repeat(np.arange(n_users), counts)
    n = user.size
    start = np.maximum(signup_s[user], 0.0)
    t = start + rng.random(n) * (window_s - start)
    t = t[np.lexsort((t, user))]  # time-ordered within each user (user is already sorted)
    page_start = (rng.random(n) < NEW_PAGE_PROB) | (np.diff(user, prepend=-1) != 0)
    first = np.flatnonzero(page_start)[np.cumsum(page_start) - 1]  # index of the page's first event
    ts_s = np.floor(t[first]).astype(np.int64)
    position = (np.arange(n) - first) % N_POSITIONS
    device = np.where(rng.random(n) < 0.85, primary_device[user], rng.integers(0, 3, n))
    item = rng.choice(n_items, n, p=popularity / popularity.sum())

    # tasks
    new = is_new[user]
    phase = phase0[user] + speed[user] * ts_s / window_s
    u = np.cos(phase)[:, None] * a[user] + np.sin(phase)[:, None] * b[user]
    u = np.where(new[:, None], newcomer + 0.35 * a[user], u)
    x = np.sqrt(d) * u * v[item]
    w = task_weights(d, task_correlation, rng)
    z = task_scores(x, w, rng.normal(0.0, 1.0, N_SINES), rng.normal(0.0, 1.0, N_SINES))
    device_effect = np.array([0.0, -0.15, 0.15])[device]
    click_logit = (1.4 * z[:, 0] + user_bias[user] + item_bias[item] + device_effect
                   - position_bias * np.where(new, new_user_position_factor, 1.0) * position - 0.8)
    like_logit = 1.4 * z[:, 1] + 0.5 * user_bias[user] + item_bias[item] - 2.6
    log_watch = np.log(20.0) + 0.6 * z[:, 2] + 2 * device_effect
    click = rng.random(n) < 1 / (1 + np.exp(-click_logit))
    like = rng.random(n) < 1 / (1 + np.exp(-like_logit))
    watch_time = np.exp(log_watch + rng.normal(0.0, 0.5, n))
    cvr_logit = 1.0 * z[:, 1] + 0.8 * z[:, 2] + item_bias[item] - 2.2  # P(convert | click): no position effect
    convert = click & (rng.random(n) < 1 / (1 + np.exp(-cvr_logit)))

    order = np.lexsort((position, user, ts_s))
    cols = {
        "user_id": user, "item_id": item, "ts": EPOCH_MS + ts_s * 1000, "position": position,
        "device": device, "click": click.astype(np.int8), "like": like.astype(np.int8),
        "watch_time": watch_time, "convert": convert.astype(np.int8), "new": new,
        "days_since_signup": (ts_s - np.floor(signup_s[user]).astype(np.int64)) // DAY_S,
    }
    if return_scores:
        log_joint = -np.logaddexp(0.0, -click_logit) - np.logaddexp(0.0, -cvr_logit)  # log P(click, convert)
        cols |= {"score_click": click_logit, "score_like": like_logit, "score_watch_time": log_watch,
                 "score_convert": log_joint - np.log(-np.expm1(log_joint))}
        cols |= {f"latent_{j}": v[item, j] for j in range(d)}
    df = pl.DataFrame({k: c[order] for k, c in cols.items()})
    group = pl.when(pl.col("new")).then(pl.lit("new")).otherwise(pl.lit("regular")).alias("user_group")
    ints = ["user_id", "item_id", "ts", "position", "device"]
    return df.select(pl.col(ints).cast(pl.Int64), *TASKS, group, "days_since_signup", pl.col("^score_.*$"),
                     pl.col("^latent_.*$"))
