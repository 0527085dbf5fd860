"""Ceiling test GAUC of the synthetic default's noise-free logits (docs/poso.md, "Is it the data?").

    python docs/poso_ceiling.py [--split user|time] [--n-events 200000 ...]

Regenerates the synthetic source with ``return_scores=True`` (the parameters of
``conf/data/synthetic.yaml`` unless overridden), assigns the same train / val / test split as the
prep (``data_prep.split.split_assignment``: the user hash or the global time cut) and scores the
test events with:

- ``true logit``: the generator's noise-free logit (the Bayes ceiling of any model's GAUC);
- ``item part``: the per-item mean of the true logit over the whole log (the best any item-only
  scorer can do: popularity is one such scorer);
- ``train rate``: each item's smoothed positive rate over the train split (what ``model=popularity``
  fits, up to its smoothing prior);
- ``history K``: the item part plus ``v . theta``, where ``theta`` (and an intercept) is a ridge
  logistic regression of the task's labels on the true item latent vectors ``v`` of the user's last
  ``K`` earlier events (strictly earlier timestamps, as the prep's histories), fitted per test event:
  what a model with perfect item embeddings could read from the history alone, linearly (the
  generator's score adds sine terms, so this is a lower bound of that), for ``K`` in ``--history``.

GAUC is the suite's (``mose.metrics.gauc``: per-user AUC weighted by events, one-class users
skipped), per task, over all test users and per cohort (``user_group`` of the generator,
``new_user`` = fewer than ``--new-user-max-prior`` earlier events in the log).
"""

from __future__ import annotations

import argparse

import numpy as np
import polars as pl
import torch
from omegaconf import OmegaConf

from data_prep.sources.synthetic import generate
from data_prep.split import TEST, TRAIN, SplitOptions, split_assignment
from mose.metrics import gauc

TASKS = ("click", "like")
SOURCE_KEYS = ("n_events", "n_users", "n_items", "task_correlation", "new_user_fraction", "new_user_signup",
               "new_user_events", "new_user_position_factor", "seed")


def source_params(path: str = "conf/data/synthetic.yaml") -> dict:
    """The generator parameters of the synthetic default (``data.source`` less its ``_target_``)."""
    source = OmegaConf.to_container(OmegaConf.load(path).source)
    return {k: v for k, v in source.items() if k != "_target_"}


def scored_log(params: dict, split_by: str, split_seed: int, val_frac: float, test_frac: float) -> pl.DataFrame:
    """The generated log with its ``split`` code, ``n_prior`` (earlier events of the user in the log) and the
    three scorers per binary task (``true_<task>``, ``item_<task>``, ``rate_<task>``)."""
    df = generate(**params, return_scores=True)
    expr, _ = split_assignment(SplitOptions.from_config({"by": split_by, "seed": split_seed}), val_frac,
                               test_frac, df["ts"])
    df = df.with_columns(expr, (pl.col("ts").rank("min").over("user_id") - 1).alias("n_prior"))
    for task in TASKS:
        train = df.filter(pl.col("split") == TRAIN)
        prior = train[task].mean()
        rate = train.group_by("item_id").agg(((pl.col(task).sum() + 10 * prior) / (pl.len() + 10)).alias(f"rate_{task}"))
        df = (df.with_columns(pl.col(f"score_{task}").alias(f"true_{task}"),
                              pl.col(f"score_{task}").mean().over("item_id").alias(f"item_{task}"))
              .join(rate, on="item_id", how="left")
              .with_columns(pl.col(f"rate_{task}").fill_null(prior)))
    return df


def history_windows(user: np.ndarray, ts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For rows sorted by (user, ts): ``(N, k)`` row indices of each row's last ``k`` earlier events of the same
    user (strictly earlier ``ts``) and their validity mask (``False`` where the user has fewer)."""
    n = len(user)
    new_block = np.ones(n, dtype=bool)
    new_block[1:] = (user[1:] != user[:-1]) | (ts[1:] != ts[:-1])
    block_start = np.maximum.accumulate(np.where(new_block, np.arange(n), 0))  # first row of the (user, ts) tie
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = user[1:] != user[:-1]
    user_start = np.maximum.accumulate(np.where(new_user, np.arange(n), 0))
    idx = block_start[:, None] - k + np.arange(k)[None, :]  # (N, k), the last k rows before the tie block
    return np.clip(idx, 0, n - 1), idx >= user_start[:, None]


def history_fit_scores(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, x_now: torch.Tensor,
                       ridge: float = 5.0, steps: int = 15) -> torch.Tensor:
    """Per row, a ridge logistic regression of ``y (N, k)`` on ``x (N, k, d)`` over the ``mask``-ed history
    (batched Newton steps, intercept unpenalised); returns ``x_now (N, d) . theta`` (the taste part only)."""
    n, k, d = x.shape
    xb = torch.cat([x, torch.ones(n, k, 1, dtype=x.dtype)], dim=-1) * mask[..., None]  # (N, k, d+1)
    theta = torch.zeros(n, d + 1, dtype=x.dtype)
    penalty = torch.full((d + 1,), ridge, dtype=x.dtype)
    penalty[-1] = 1e-3
    for _ in range(steps):
        p = torch.sigmoid(torch.einsum("nkd,nd->nk", xb, theta))
        grad = torch.einsum("nkd,nk->nd", xb, (y - p) * mask) - penalty * theta
        hess = torch.einsum("nkd,nk,nke->nde", xb, p * (1 - p) * mask, xb) + torch.diag(penalty)
        theta = theta + torch.linalg.solve(hess, grad)
    return (x_now * theta[:, :d]).sum(-1)


def add_history_scores(df: pl.DataFrame, k: int) -> pl.DataFrame:
    """``hist{k}_<task>`` for every test event: item part + the taste read from the last ``k`` events."""
    df = df.sort("user_id", "ts", "position")
    latent = torch.from_numpy(df.select(pl.col("^latent_.*$")).to_numpy())
    idx, valid = history_windows(df["user_id"].to_numpy(), df["ts"].to_numpy(), k)
    rows = np.flatnonzero(df["split"].to_numpy() == TEST)
    idx_t, mask = torch.from_numpy(idx[rows]), torch.from_numpy(valid[rows]).double()
    out = {}
    for task in TASKS:
        labels = torch.from_numpy(df[task].to_numpy().astype(np.float64))
        taste = history_fit_scores(latent[idx_t], labels[idx_t], mask, latent[torch.from_numpy(rows)])
        col = np.full(df.height, np.nan)
        col[rows] = taste.numpy() + df[f"item_{task}"].to_numpy()[rows]
        out[f"hist{k}_{task}"] = col
    return df.with_columns(**{name: pl.Series(values) for name, values in out.items()})


def ceiling_table(df: pl.DataFrame, new_user_max_prior: int = 20, scorers: tuple[str, ...] = ("true", "item", "rate")
                  ) -> list[dict]:
    """One row per (cohort, task): test events, users, and the GAUC of each scorer."""
    test = df.filter(pl.col("split") == TEST).with_columns(
        pl.when(pl.col("n_prior") < new_user_max_prior).then(pl.lit("new")).otherwise(pl.lit("regular"))
        .alias("new_user"))
    groups = [("all", test)] + [(f"{c}={v}", test.filter(pl.col(c) == v))
                                for c in ("new_user", "user_group") for v in ("new", "regular")]
    rows = []
    for name, part in groups:
        users = torch.from_numpy(part["user_id"].to_numpy().copy())
        for task in TASKS:
            labels = torch.from_numpy(part[task].to_numpy().astype(np.float64))
            row = {"cohort": name, "task": task, "events": part.height, "users": part["user_id"].n_unique()}
            for scorer in scorers:
                row[scorer] = gauc(torch.from_numpy(part[f"{scorer}_{task}"].to_numpy()), labels, users)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("user", "time"), default="user")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--val-frac", type=float, default=0.1)
    parser.add_argument("--test-frac", type=float, default=0.1)
    parser.add_argument("--new-user-max-prior", type=int, default=20)
    parser.add_argument("--n-events", type=int, default=None, help="override data.source.n_events")
    parser.add_argument("--history", type=int, nargs="*", default=[20, 100],
                        help="history lengths K of the history fit (data.prep.history_len is 20)")
    args = parser.parse_args(argv)
    params = source_params()
    if args.n_events:
        params["n_events"] = args.n_events
    df = scored_log(params, args.split, args.split_seed, args.val_frac, args.test_frac)
    for k in args.history:
        df = add_history_scores(df, k)
    scorers = ("true", "item", "rate", *[f"hist{k}" for k in args.history])
    names = ["true logit", "item part", "train rate", *[f"history {k}" for k in args.history]]
    print(f"split={args.split}: {df.filter(pl.col('split') == TEST).height} test events, test GAUC\n")
    print("| cohort | events | users | task | " + " | ".join(names) + " |")
    print("|---" * (4 + len(names)) + "|")
    for r in ceiling_table(df, args.new_user_max_prior, scorers):
        print(f"| {r['cohort']} | {r['events']} | {r['users']} | {r['task']} | "
              + " | ".join(f"{r[s]:.4f}" for s in scorers) + " |")


if __name__ == "__main__":
    main()
