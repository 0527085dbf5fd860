"""Vocabularies and standardisation moments, fitted on the train split only, in mergeable pieces.

The index constants of every encoded column live here (the models read them too):

    PAD = 0       history padding (``hist_item``); also "no value" in embeddings with a padding row
    OOV = 1       ids unseen in train (or rarer than ``min_count``): a trained row, not a random one
    FIRST = 2     the first index of a known id; a vocabulary of n values has n + 2 rows
    UNSEEN = 0    a string personalization-code value unseen in train (known values start at 1)
    NO_COHORT = -1  a cohort value outside the fitted names (fit_from / serving): in no cohort's metrics

A vocabulary is fitted from per-partition counts (:func:`vocab_counts`, then
:func:`merge_vocab`), so one partition and many give the same vocabulary.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from data_prep.schema import TS, USER

PAD, OOV, FIRST = 0, 1, 2
UNSEEN = 0
NO_COHORT = -1
UNKNOWN_WARN = 0.25  # default data.warn_unknown_share: warn when more events than this have an unknown user / item
KEY = ("_ku", "_kt", "_kr")  # first-seen key of a value: (user, ts, _row) of its first train row


def vocab_counts(train: pl.DataFrame, col: str) -> pl.DataFrame:
    """Per value of ``col`` in ``train`` (sorted by user, ts, ``_row``): its count ``_n`` and first-seen key."""
    return train.group_by(col, maintain_order=True).agg(
        pl.len().alias("_n"), pl.col(USER).first().alias(KEY[0]), pl.col(TS).first().alias(KEY[1]),
        pl.col("_row").first().cast(pl.UInt64).alias(KEY[2]))


def merge_vocab(counts: list[pl.DataFrame], col: str, min_count: int = 1) -> pl.DataFrame:
    """The vocabulary of ``col``: ``(col, "count")``, the values seen at least ``min_count`` times in train
    by first appearance, and their train counts.

    A value's index is ``FIRST`` + its row: rarer values share OOV with unseen ones, so OOV is
    trained and stands for "rare or new".
    """
    merged = pl.concat(counts)
    if len(counts) > 1:  # one partition is already in first-seen order
        merged = (merged.sort(list(KEY)).group_by(col, maintain_order=True)
                  .agg(pl.col("_n").sum(), *[pl.col(k).first() for k in KEY]))
    return merged.filter(pl.col("_n") >= min_count).select(col, pl.col("_n").cast(pl.Int64).alias("count"))


def encode(values: pl.Series, vocab: pl.Series) -> np.ndarray:
    """Vocabulary index ``(N,)`` int64 of each value; values missing from ``vocab`` (or of another type) map to OOV."""
    table = pl.DataFrame({"_v": vocab, "_i": pl.int_range(FIRST, len(vocab) + FIRST, dtype=pl.Int64, eager=True)})
    keys = pl.DataFrame({"_v": values.cast(vocab.dtype, strict=False)})
    return keys.join(table, on="_v", how="left", maintain_order="left")["_i"].fill_null(OOV).to_numpy()


def moments(x: pl.Series) -> tuple[int, float, float]:
    """``(n, mean, M2)`` of the non-null values (Chan et al.'s parallel variance merges them)."""
    x = x.cast(pl.Float64).drop_nulls()
    if len(x) == 0:
        return 0, 0.0, 0.0
    mean = float(x.mean())
    return len(x), mean, float(((x - mean) ** 2).sum())


def merge_moments(parts: list[tuple[int, float, float]]) -> tuple[int, float, float]:
    """The ``(n, mean, M2)`` of the union of parts."""
    n, mean, m2 = 0, 0.0, 0.0
    for nb, mb, m2b in parts:
        if nb == 0:
            continue
        delta, tot = mb - mean, n + nb
        mean, m2, n = mean + delta * nb / tot, m2 + m2b + delta * delta * n * nb / tot, tot
    return n, mean, m2


def standardizer(m: tuple[int, float, float]) -> dict[str, float]:
    """``{mean, std}`` from moments: the sample std (ddof=1); 0 / 1 where undefined or zero."""
    n, mean, m2 = m
    std = math.sqrt(m2 / (n - 1)) if n > 1 else 0.0
    return {"mean": float(mean) if n else 0.0, "std": std if std > 0 else 1.0}


def unknown_shares(user: np.ndarray, item: np.ndarray, split: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """The share of events whose user / item is unknown (:data:`OOV`: unseen in train, or rarer than
    ``min_count``), per split (``split`` codes 0 train, 1 val, 2 test) or, without ``split``, over all
    rows as ``"all"``: ``{"test": {"users": 0.12, "items": 0.40, "events": 5000}, ...}``.

    A model scores unknown ids with one shared embedding, so a split with many of them has logloss and
    AUC far from the known-id ones (KuaiRand's test items); prep and mose-predict report these shares.
    """
    from data_prep.split import SPLITS

    groups = {"all": slice(None)} if split is None else {name: split == code for code, name in enumerate(SPLITS)}
    out = {}
    for name, rows in groups.items():
        u, i = np.asarray(user[rows]), np.asarray(item[rows])
        n = len(u)
        out[name] = {"users": float((u == OOV).mean()) if n else 0.0,
                     "items": float((i == OOV).mean()) if n else 0.0, "events": int(n)}
    return out


def warn_unknown(shares: dict[str, dict[str, float]], threshold: float | None, log, what: str = "",
                 splits: tuple[str, ...] = ("val", "test", "all")) -> list[str]:
    """Log the :func:`unknown_shares` of ``splits`` (info), and warn for each share above ``threshold``
    (``None`` never warns); returns the warning lines."""
    warned = []
    for name in splits:
        s = shares.get(name)
        if not s or not s["events"]:
            continue
        where = f"{what}{name if name != 'all' else ''}".strip() or "events"
        log.info("%s: unknown users %.1f%%, unknown items %.1f%% of %d events", where, 100 * s["users"],
                 100 * s["items"], s["events"])
        for kind in ("users", "items"):
            if threshold is not None and s[kind] > threshold:
                line = (f"{where}: {100 * s[kind]:.1f}% of the events have an unknown {kind[:-1]} (unseen in train "
                        f"or rarer than data.prep.min_count; above the warning threshold {100 * threshold:.0f}%): "
                        f"they share one learned embedding, so their scores differ little and metrics there "
                        f"(logloss, AUC) say more about the unknown-id embedding than the model")
                log.warning(line)
                warned.append(line)
    return warned
