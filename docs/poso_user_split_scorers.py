"""How far above item popularity can any scorer get on a prepared dataset's test users (docs/poso.md)?

    python docs/poso_user_split_scorers.py outputs/data/kuairand-<key> [--tasks is_click long_view]

Hand-built scorers over exactly the arrays the models read (``item``, ``num``, ``hist_item``,
``hist_label``, ``labels``, ``split``, ``user_key`` of a ``mose-prep`` folder), each family's one
parameter chosen on the val users' GAUC, then scored on the test users:

- ``rate a``: each item's train positive rate with ``a`` pseudo events at the train mean (the OOV row
  pools the rare items, as in the model); ``a = 20`` is ``model=popularity``, the reference row;
- ``rate + b * num0``: the best rate plus ``b`` times the first numeric feature (KuaiRand:
  standardised ``duration``);
- ``rate + b * cf``: the best rate plus ``b`` times an item-based collaborative-filtering score read
  from the event's own history tokens: the mean, over the history items the user was positive on
  (that task's history label), of their co-positive cosine with the candidate item among train
  users (``X^T X`` of the train users' positives, diagonal zeroed, ``1 / sqrt(count + 1)`` on each
  side): what a model could learn about an unseen user's taste from the history it is given.

Every GAUC is the suite's (``mose.metrics.gauc``); ``best - popularity`` is the paired difference
over the test users with a 95% bootstrap interval (``mose.report.paired_bootstrap``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from data_prep.split import TEST, TRAIN, VAL
from data_prep.vocab import OOV
from mose import metrics
from mose.metrics import grouped_auc
from mose.models.popularity import Popularity
from mose.nn.embeddings import InputSpec
from mose.report import paired_bootstrap

POPULARITY_SMOOTHING = 20.0
SMOOTHINGS = (0.5, 2.0, 5.0, POPULARITY_SMOOTHING)
WEIGHTS = (-0.3, -0.1, -0.03, 0.0, 0.03, 0.1, 0.3, 1.0, 2.0, 5.0, 10.0)


def load(folder: Path) -> dict[str, np.ndarray]:
    """The prepared arrays the scorers read, and the manifest."""
    names = ("item", "num", "hist_item", "hist_label", "labels", "split", "user_key")
    arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in names}
    return arrays | {"manifest": json.loads((folder / "manifest.json").read_text())}


def item_rate(item: np.ndarray, y: np.ndarray, n_items: int, a: float) -> np.ndarray:
    """``(I,)`` smoothed positive rate of each item from train events ``item (M,), y (M,)``: what
    ``model=popularity`` fits (:class:`mose.models.popularity.Popularity`; the OOV row pools the rare items)."""
    spec = InputSpec(n_users=1, n_items=n_items, cat_vocab=(), n_numeric=0, history_len=1, n_history_labels=1,
                     n_prior_buckets=1)
    model = Popularity(spec, ["task"], smoothing=a)
    model.fit_counts([(torch.from_numpy(item), torch.from_numpy(y)[:, None])], torch.tensor([True]))
    return model.rates()[:, 0].numpy()


def co_positive(user: np.ndarray, item: np.ndarray, y: np.ndarray, n_items: int) -> np.ndarray:
    """``(I, I)`` cosine of items' positive-user sets among train events (diagonal, PAD and OOV zeroed)."""
    keep = (y > 0) & (item > OOV)
    _, u = np.unique(user[keep], return_inverse=True)
    x = np.zeros((u.max() + 1, n_items), dtype=np.float32)
    x[u, item[keep]] = 1.0  # (U, I), each user-item pair once
    count = x.sum(0)
    s = x.T @ x / np.sqrt(np.outer(count + 1.0, count + 1.0))
    np.fill_diagonal(s, 0.0)
    return s


def cf_score(s: np.ndarray, item: np.ndarray, hist_item: np.ndarray, hist_pos: np.ndarray) -> np.ndarray:
    """``(N,)`` mean of ``s[item, h]`` over the history tokens ``h`` (N, H) marked positive (N, H); 0 without any."""
    sim = s[item[:, None], hist_item] * hist_pos  # (N, H)
    return sim.sum(1) / np.maximum(hist_pos.sum(1), 1)


def per_user_auc(score: np.ndarray, y: np.ndarray, user: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-user AUC and event counts of the users with both classes (ascending user order)."""
    auc, n, valid = grouped_auc(torch.from_numpy(score), torch.from_numpy(y), torch.from_numpy(user))
    return auc[valid].numpy(), n[valid].double().numpy()


def gauc(score: np.ndarray, y: np.ndarray, user: np.ndarray) -> float:
    return metrics.gauc(torch.from_numpy(score), torch.from_numpy(y), torch.from_numpy(user))


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def task_rows(d: dict, task: str) -> list[str]:
    """The markdown rows of one task: each scorer's val and test GAUC, and best - popularity on test."""
    m = d["manifest"]
    t = list(m["spec"]["tasks"]).index(task)
    h = m["history_labels"].index(task)
    split, item, user = np.asarray(d["split"]), np.asarray(d["item"]), np.asarray(d["user_key"])
    y = np.asarray(d["labels"][:, t], dtype=np.float64)
    n_items = m["vocab_sizes"]["item_id"]
    train = split == TRAIN
    s = co_positive(user[train], item[train], y[train], n_items)
    parts = {name: split == code for name, code in (("val", VAL), ("test", TEST))}
    feats = {name: {"num0": np.asarray(d["num"][rows, 0], dtype=np.float64),
                    "cf": cf_score(s, item[rows], np.asarray(d["hist_item"][rows]),
                                   np.asarray(d["hist_label"][rows, :, h]) > 0)}
             for name, rows in parts.items()}

    def score(name: str, a: float, extra: str | None = None, b: float = 0.0) -> np.ndarray:
        base = logit(item_rate(item[train], y[train], n_items, a)[item[parts[name]]])
        return base + b * feats[name][extra] if extra else base

    def val(*args) -> float:
        return gauc(score("val", *args), y[parts["val"]], user[parts["val"]])

    best_a = max(SMOOTHINGS, key=lambda a: val(a))
    candidates = {f"popularity (rate a={POPULARITY_SMOOTHING:g})": (POPULARITY_SMOOTHING,),
                  f"rate a={best_a:g} (best a on val)": (best_a,)}
    for extra in ("num0", "cf"):
        b = max(WEIGHTS, key=lambda w: val(best_a, extra, w))
        candidates[f"rate a={best_a:g} + {b:g} * {extra}"] = (best_a, extra, b)
    y_test, u_test = y[parts["test"]], user[parts["test"]]
    ref_auc, ref_n = per_user_auc(score("test", POPULARITY_SMOOTHING), y_test, u_test)
    rows = []
    for label, args in candidates.items():
        auc, n = per_user_auc(score("test", *args), y_test, u_test)
        mean, lo, hi = paired_bootstrap([auc - ref_auc], [ref_n])
        rows.append(f"| {task} | {label} | {val(*args):.4f} | {(auc * n).sum() / n.sum():.4f} | "
                    f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}] |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, help="a mose-prep output folder (manifest.json and arrays)")
    parser.add_argument("--tasks", nargs="+", default=None, help="binary tasks (default: all with a history label)")
    args = parser.parse_args(argv)
    d = load(args.data_dir)
    tasks = args.tasks or d["manifest"]["history_labels"]
    users = len(np.unique(np.asarray(d["user_key"])[np.asarray(d["split"]) == TEST]))
    print(f"{args.data_dir}: {users} test users\n")
    print("| task | scorer (parameter chosen on val) | val GAUC | test GAUC | test - popularity [95% CI over users] |")
    print("|---|---|---|---|---|")
    for task in tasks:
        print("\n".join(task_rows(d, task)), flush=True)


if __name__ == "__main__":
    main()
