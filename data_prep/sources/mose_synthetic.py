"""The MoSE paper's synthetic benchmark (Qin et al., KDD 2020): multi-mode sinusoidal activity, K regression tasks.

Every user acts once a minute for ``n_steps`` steps (a user-specific offset within the minute), on
one item (the item says nothing: ``model=popularity`` is then the train mean of each task, the
trivial baseline). Notation: ``u`` a user, ``t = 0 .. n_steps - 1`` a step, ``m = 1 .. M`` a mode
(``M = n_modes``), ``D = n_features``, ``k = 0 .. K - 1`` a task (``K = len(time_scales)``).

Modes (shared by all users), each with its own frequency and loadings::

    P_m ~ LogUniform(period_min, period_max),  omega_m = 2 pi / P_m
    A_m ~ N(0, I_D / D)                                            (D-dim loadings)

Users, each with its own mode weights and phases::

    pi_u ~ Dirichlet(dirichlet_alpha * 1_M),   phi_um ~ Uniform(0, 2 pi)
    s_umt = pi_um * sin(omega_m t + phi_um)                       (the user's mode signals)

Activity, the D-dim features ``f0 .. f{D-1}`` (the signal scaled to unit variance per feature)::

    x_ut = c_x * sum_m s_umt A_m + noise * eps_ut,   eps_ut ~ N(0, I_D)

Tasks read different projections of the mode signals, ``w_k`` unit vectors over the modes with
``cos(w_k, w_l) = task_correlation`` for every pair (as in the MMoE paper's synthetic data):
``w_k = sqrt(rho) v_0 + sqrt(1 - rho) v_{k+1}``, ``v_0 .. v_K`` orthonormal in ``R^M`` (needs
``K + 1 <= M``). Task k has a time scale ``tau_k = time_scales[k]`` (steps): it reads an
exponential moving average of its projection with decay ``a_k = 1 - 1 / tau_k`` over the infinite
past (``tau = 1``: the current value; a long ``tau``: long memory, low frequencies dominate)::

    e_kut = c_k * (1 - a_k) sum_{j >= 0} a_k^j sum_m w_km s_um(t-j)
          = c_k * sum_m w_km pi_um g_km sin(omega_m t + phi_um - delta_km)
    with g_km exp(-i delta_km) = (1 - a_k) / (1 - a_k exp(-i omega_m))   (closed form, exact)

scaled by ``c_k`` to unit variance over users and steps. The target of the event at step t is the
task's **next-step** value plus noise, ``y_kut = e_ku(t+1) + label_noise * eta_kut``, eta ~ N(0, 1),
so a model at step t (features up to t, targets of events before t) predicts the next step.
``prev_y{k}`` is ``y_ku(t-1)`` (0 at t = 0), the target of the user's previous event: whether past
targets are model inputs is whether ``data.numeric`` lists these columns (conf/data/mose_synthetic.yaml
lists them). The ceiling is the generator's own noise-free next-step value ``ceiling_y{k} = e_ku(t+1)``
(``return_state=True``; :func:`ceiling_mse` scores it with the suite's MSE), whose MSE is about
``label_noise ** 2``; the train mean scores about ``1 + label_noise ** 2``.

Everything is built with vectorised numpy (no loop over users, steps or modes); 2,000 users x 500
steps (the defaults, the paper's scale) take about a second.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from data_prep.errors import ConfigError

EPOCH_MS = 1_700_000_000_000
STEP_MS = 60_000


def task_projections(n_modes: int, n_tasks: int, correlation: float, rng: np.random.Generator) -> np.ndarray:
    """``(K, M)`` unit vectors with pairwise cosine ``correlation``: ``sqrt(rho) v_0 + sqrt(1 - rho) v_k``."""
    v = np.linalg.qr(rng.standard_normal((n_modes, n_tasks + 1)))[0].T  # (K + 1, M) orthonormal rows
    return np.sqrt(correlation) * v[:1] + np.sqrt(1.0 - correlation) * v[1:]


def ema_response(omega: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Gain ``g`` and phase lag ``delta`` ``(M,)`` of an EMA with decay ``1 - 1/tau`` on ``sin(omega t)``."""
    a = 1.0 - 1.0 / tau
    response = (1.0 - a) / (1.0 - a * np.exp(-1j * omega))
    return np.abs(response), -np.angle(response)


def _check(n_users, n_steps, n_features, n_modes, time_scales, task_correlation, noise, label_noise,
           period_min, period_max, dirichlet_alpha) -> None:
    key = "data.source"
    if min(n_users, n_steps, n_features) < 1 or n_steps < 2:
        raise ConfigError(f"{key}.n_users / n_steps / n_features={n_users} / {n_steps} / {n_features}: "
                          "must be >= 1 (n_steps >= 2)")
    if len(time_scales) < 2 or min(time_scales) < 1:
        raise ConfigError(f"{key}.time_scales={list(time_scales)}: needs K >= 2 tasks, each tau >= 1 step")
    if n_modes < len(time_scales) + 1:
        raise ConfigError(f"{key}.n_modes={n_modes}: needs at least K + 1 = {len(time_scales) + 1} modes for "
                          f"{len(time_scales)} tasks' projections")
    if not 0.0 <= task_correlation <= 1.0:
        raise ConfigError(f"{key}.task_correlation={task_correlation}: must be in [0, 1]")
    if noise < 0 or label_noise < 0:
        raise ConfigError(f"{key}.noise / label_noise={noise} / {label_noise}: must be >= 0")
    if not 2 <= period_min <= period_max or dirichlet_alpha <= 0:
        raise ConfigError(f"{key}.period_min / period_max / dirichlet_alpha={period_min} / {period_max} / "
                          f"{dirichlet_alpha}: need 2 <= period_min <= period_max and alpha > 0")


def generate(
    n_users: int = 2000,
    n_steps: int = 500,
    n_features: int = 10,
    n_modes: int = 10,
    task_correlation: float = 0.5,
    time_scales: tuple[float, ...] = (1.0, 20.0),
    noise: float = 1.0,
    label_noise: float = 0.3,
    period_min: float = 5.0,
    period_max: float = 100.0,
    dirichlet_alpha: float = 0.5,
    seed: int = 0,
    return_state: bool = False,
) -> pl.DataFrame:
    """``n_users * n_steps`` canonical events sorted by ``ts``, deterministic for a ``seed`` (formulas above).

    Columns: user_id, item_id (always 0), ts (Int64 ms), f0..f{D-1}, y0..y{K-1} (next-step targets),
    prev_y0..prev_y{K-1} (the previous event's targets), Float64, and dominant_mode (Int64: the user's
    largest mode weight, ``argmax_m pi_um``; a cohort column, so gate usage is reported per mode). ``return_state`` adds the noise-free
    targets ``ceiling_y{k}``. The modes, loadings, projections and user draws depend on ``seed`` only
    (not on ``task_correlation``), so runs at different correlations share users and modes.
    """
    time_scales = tuple(float(t) for t in time_scales)
    _check(n_users, n_steps, n_features, n_modes, time_scales, task_correlation, noise, label_noise,
           period_min, period_max, dirichlet_alpha)
    rng = np.random.default_rng(seed)
    u, n, m, k = n_users, n_steps, n_modes, len(time_scales)
    omega = 2 * np.pi / np.exp(rng.uniform(np.log(period_min), np.log(period_max), m))  # (M,)
    loadings = rng.standard_normal((m, n_features)) / np.sqrt(n_features)                # (M, D)
    weights = rng.dirichlet(np.full(m, dirichlet_alpha), u)                              # (U, M)
    phase = rng.uniform(0, 2 * np.pi, (u, m))                                            # (U, M)
    w = task_projections(m, k, task_correlation, np.random.default_rng([seed, 1]))       # (K, M)

    t = np.arange(n + 1, dtype=np.float64)  # one step more: the last event's next-step target
    angle = omega * t[:, None] + phase[:, None, :]                                       # (U, n+1, M)
    sin, cos = weights[:, None, :] * np.sin(angle), weights[:, None, :] * np.cos(angle)  # sin: s_umt
    signal = sin[:, :n] @ loadings                                                       # (U, n, D)
    features = signal / signal.std(axis=(0, 1)) + noise * rng.standard_normal((u, n, n_features))

    gain, lag = (np.stack(r) for r in zip(*(ema_response(omega, tau) for tau in time_scales)))  # (K, M) each
    # e_kut = sum_m w_km g_km pi_um sin(omega_m t + phi_um - delta_km), sin(a - d) = sin a cos d - cos a sin d
    smoothed = (np.einsum("utm,km->kut", sin, w * gain * np.cos(lag))
                - np.einsum("utm,km->kut", cos, w * gain * np.sin(lag)))                 # (K, U, n+1)
    smoothed /= smoothed.std(axis=(1, 2), keepdims=True)                                 # (K, U, n+1)
    ceiling = smoothed[:, :, 1:]                                                         # next-step values
    y = ceiling + label_noise * rng.standard_normal(ceiling.shape)
    prev = np.concatenate([np.zeros((k, u, 1)), y[:, :, :-1]], axis=2)

    ts = EPOCH_MS + rng.integers(0, STEP_MS, u)[:, None] + STEP_MS * np.arange(n)[None, :]
    cols = {"user_id": np.repeat(np.arange(u), n), "item_id": np.zeros(u * n, dtype=np.int64), "ts": ts.ravel()}
    cols |= {f"f{j}": features[..., j].ravel() for j in range(n_features)}
    cols |= {f"y{i}": y[i].ravel() for i in range(k)}
    cols |= {f"prev_y{i}": prev[i].ravel() for i in range(k)}
    cols["dominant_mode"] = np.repeat(weights.argmax(1), n)  # a cohort: gate usage and MSE per user's main mode
    if return_state:
        cols |= {f"ceiling_y{i}": ceiling[i].ravel() for i in range(k)}
    order = np.lexsort((cols["user_id"], cols["ts"]))
    df = pl.DataFrame({c: v[order] for c, v in cols.items()})
    return df.with_columns(pl.col("user_id", "item_id", "ts", "dominant_mode").cast(pl.Int64))


def ceiling_mse(source: dict, test_start: int, tasks: list[str] | None = None) -> dict[str, float]:
    """``{"<task>/mse": ...}`` of the noise-free next-step value on the events with ``ts >= test_start``
    (the test split of a time split: ``manifest["cuts"]["test_start"]``), from the source config ``source``."""
    params = {key: v for key, v in source.items() if not str(key).startswith("_")}
    df = generate(**params, return_state=True).filter(pl.col("ts") >= test_start)
    tasks = tasks or [c for c in df.columns if c.startswith("y")]
    return {f"{task}/mse": float(((df[task] - df[f"ceiling_{task}"]) ** 2).mean()) for task in tasks}
